"""Shared helpers of the cluster scenario's tests."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import pytest
import testinfra

from app import queues as app_queues

# The app's queue contract, from the checkout (installed in the controller's virtualenv).
QUEUES = list(app_queues.QUEUES)

# Runs a command the way the services run: as celery, settings read by systemd from app.env.
AS_CELERY = (
    "systemd-run --quiet --wait --pipe --collect --service-type=exec "
    "--property=User=celery --property=Group=celery "
    "--property=EnvironmentFile=/etc/celery/app.env --property=WorkingDirectory=/var/lib/celery "
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
