"""Shared helpers of the cluster scenario's tests."""

from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import testinfra

from app import queues as app_queues

# The app's queue contract, from the checkout (installed in the controller's virtualenv).
QUEUES = list(app_queues.QUEUES)

# Runs a command the way taskctl runs: as celery, settings read by systemd from app.env and the
# Redis login from taskctl.env (root 0600).
AS_CELERY = (
    "systemd-run --quiet --wait --pipe --collect --service-type=exec "
    "--property=User=celery --property=Group=celery "
    "--property=EnvironmentFile=/etc/celery/app.env "
    "--property=EnvironmentFile=/etc/celery/taskctl.env "
    "--property=WorkingDirectory=/var/lib/celery "
)


# Every running instance's `inspect stats` (pool size, broker, ...) by node name, as JSON.
INSPECT_STATS = (
    "import json; from app.celery_app import celery_app; "
    "print(json.dumps(celery_app.control.inspect(timeout=10).stats() or {}))"
)


def app_python(host: Any, code: str, timeout: int = 180) -> Any:
    """Run Python code in the app's virtualenv on `host`; its stdout parsed as JSON."""
    cmd = f"timeout {timeout} {AS_CELERY} /opt/celery/current/bin/python -c {shlex.quote(code)}"
    out = host.run(cmd)
    assert out.rc == 0, f"app python failed (rc {out.rc}): {out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hostvars(host: Any) -> dict[str, Any]:
    return dict(host.ansible.get_variables())


def other_host(name: str) -> Any:
    """A testinfra host of the scenario's inventory by name (e.g. a worker, from ops1's test)."""
    return testinfra.get_host(
        f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


def address_of(host: Any) -> str:
    """A lab host's cluster address: its first, the one Ansible reaches and services bind to."""
    return str(host.check_output("hostname -I").split()[0])


def playbook_env() -> dict[str, str]:
    """The environment of an ansible-playbook a test runs against the lab: the project's roles,
    shared filters and modules (as .config/molecule/config.yml gives Molecule's own runs), no
    colours."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    return {
        **os.environ,
        "ANSIBLE_ROLES_PATH": f"{project}/roles",
        "ANSIBLE_FILTER_PLUGINS": f"{project}/plugins/filter",
        "ANSIBLE_LIBRARY": f"{project}/plugins/modules",
        "ANSIBLE_ACTION_PLUGINS": f"{project}/plugins/action",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }


def run_playbook(playbook: str, *args: str, timeout: int = 900) -> Any:
    """`ansible-playbook` on a playbook of the project (a path inside it) against the scenario's
    inventory, as an operator would, with the project's environment; not checked: the caller
    reads returncode, stdout and stderr."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            *args,
            f"{project}/{playbook}",
        ],
        cwd=project,
        env=playbook_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@functools.cache
def address(name: str) -> str:
    """The cluster address of the inventory's host `name` (fixed for the lab's life: asked once,
    where a test's loop would otherwise make an SSH round trip per line it reads)."""
    return address_of(other_host(name))


@pytest.fixture(scope="session", autouse=True)
def figures_summary(request: Any) -> Any:
    """Every RELIABILITY line of the session, together at its end, also when output is captured."""
    yield
    from reliability import FIGURES  # reliability imports this module

    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and FIGURES:
        with capture.global_and_fixture_disabled():
            reporter.write_sep("-", "reliability figures")
            for line in FIGURES:
                reporter.write_line(line)


# Attached to a failed test and written to .lab/test-logs/diagnosis.txt (printed last by `make
# test`): what systemd saw on the app hosts meanwhile. A fault test that fails once in CI leaves
# no lab behind; this tells a wedged or restarted instance from a lost message.
DIAG_UNITS = (
    "for u in $(systemctl list-units --plain --no-legend 'celery-worker@*' celery-beat.service "
    "flower.service celery-exporter.service celery-api.service | awk '{print $1}'); do "
    'echo "$u $(systemctl show -p ActiveState,NRestarts,ExecMainStartTimestamp $u '
    "| paste -sd' ')\"; done"
)
DIAG_JOURNAL = (
    "journalctl --no-pager -o short-monotonic --since -15min -u 'celery-worker@*' "
    "| grep -E 'watchdog|Killing|Main process exited|Failed with|Unrecoverable|requeue|"
    "restored|Started|Stopping|ERROR|CRITICAL' | tail -n 6"
)
# The app's own errors (its logs go to /var/log/celery, not the journal).
DIAG_APP_ERRORS = (
    'grep -hE \'"level": "(error|critical)"\' /var/log/celery/*.log 2>/dev/null '
    "| tail -n 4 | cut -c1-300"
)


def cluster_diagnosis() -> list[str]:
    lines = []
    for name in ("worker1", "worker2", "ops1"):
        try:
            h = other_host(name)
            units = h.run(DIAG_UNITS).stdout.strip()
            lines += [f"DIAG {name} {u}" for u in units.splitlines() if u.strip()]
            lines += [f"DIAG {name} | {j}" for j in h.run(DIAG_JOURNAL).stdout.splitlines()]
            lines += [f"DIAG {name} ! {j}" for j in h.run(DIAG_APP_ERRORS).stdout.splitlines()]
        except Exception as exc:  # a host powered off by the test itself
            lines.append(f"DIAG {name} unreachable: {exc!r:.120}")
    return lines


# Modules that only read the cluster (no restart, stop, fault or deploy): they run first, while
# `site.yml --check` (test_check_mode.py, ~2.5 min) runs in the background; then its verdict,
# then every other module in name order. (Not test_monitoring_browser.py: it stops worker2's
# node exporter and `batch`, which check mode would report as a change.)
READ_ONLY_FIRST = (
    "test_hosts.py",
    "test_lockdown.py",
    "test_flower_browser.py",
    "test_check_mode.py",
)


def test_logs() -> Path:
    """Where `make test` keeps its lane logs (Makefile's TEST_LOGS); absent outside `make test`."""
    return Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / ".lab" / "test-logs"


def pytest_sessionstart(session: Any) -> None:
    # The cluster is converged: `make test`'s other lane, waiting for this file, starts its heavy
    # part now, beside these tests' waits rather than beside the converge (Makefile).
    if test_logs().is_dir():
        (test_logs() / "cluster.verifying").touch()


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    def rank(item: Any) -> int:
        name = Path(str(item.fspath)).name
        return READ_ONLY_FIRST.index(name) if name in READ_ONLY_FIRST else len(READ_ONLY_FIRST)

    items.sort(key=rank)  # stable: name order within a module and among the rest
    check_mode = [i for i in items if Path(str(i.fspath)).name == "test_check_mode.py"]
    if check_mode and len(items) > len(check_mode):
        check_mode[0].module.start_in_background()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        lines = cluster_diagnosis()
        report.sections.append(("cluster state at the failure", "\n".join(lines)))
        # Also to a file beside the lane logs, which `make test` prints last when a lane failed.
        error = str(call.excinfo.value).splitlines()[:3] if call.excinfo else []
        if test_logs().is_dir():
            with (test_logs() / "diagnosis.txt").open("a") as f:
                f.write("\n".join([f"FAILED {item.nodeid}", *error, *lines, ""]) + "\n")
