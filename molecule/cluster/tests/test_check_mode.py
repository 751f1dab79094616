"""`ansible-playbook site.yml --check --diff` on the converged cluster: no change, no error.

Run once from the controller against the scenario's inventory (the lab's group_vars are linked
into it), as an operator would before a real run. A task that reports a change in check mode on a
converged host is either not idempotent or lies about what it would do.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from conftest import playbook_env

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


# Started by conftest.py when the session begins (it runs ~2.5 min): the read-only modules
# (READ_ONLY_FIRST in conftest.py) run meanwhile, nothing that restarts or stops a service.
_RUN: dict[str, Any] = {}


def start_in_background() -> None:
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    inventory = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
    cmd = ["ansible-playbook", "-i", str(inventory), str(project / "site.yml"), "--check", "--diff"]
    # Output to files, not pipes: nobody reads it until the test; a full pipe would stall it.
    out = tempfile.TemporaryFile("w+")  # noqa: SIM115 - read and closed by the test
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115
    _RUN.update(
        proc=subprocess.Popen(cmd, env=playbook_env(), stdout=out, stderr=err), out=out, err=err
    )


def test_site_check_mode_changes_nothing() -> None:
    inventory = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
    env = playbook_env()
    if "proc" not in _RUN:  # this module run alone
        start_in_background()
    proc, out, err = _RUN.pop("proc"), _RUN.pop("out"), _RUN.pop("err")
    proc.wait(timeout=900)
    out.seek(0)
    err.seek(0)
    run = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
    output = run.stdout + run.stderr
    recap = {m["host"]: m for m in RECAP.finditer(run.stdout)}
    hosts = subprocess.run(
        ["ansible", "all", "-i", str(inventory), "--list-hosts"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()[2:]  # "hosts (4):" then one name per line
    assert hosts, "the scenario's inventory lists no host"
    assert set(recap) == set(hosts), (
        f"recap hosts {sorted(recap)} != inventory {hosts}\n{output[-4000:]}"
    )
    # What changed or failed, each under its task, to read in the failure message.
    changes, task = [], ""
    for line in run.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith(("changed:", "fatal:", "failed:")):
            changes += [task, line]
    changes_text = "\n".join(changes)
    for host, m in recap.items():
        assert (m["changed"], m["failed"], m["unreachable"]) == ("0", "0", "0"), (
            f"{host}: changed={m['changed']} failed={m['failed']} unreachable={m['unreachable']}\n"
            f"{changes_text}\n{output[-6000:]}"
        )
    assert run.returncode == 0, output[-4000:]
