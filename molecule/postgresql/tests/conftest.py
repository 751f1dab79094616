"""Shared fixtures of the postgresql scenario's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
LAB = "mol-" + os.environ.get("MOLECULE_SCENARIO_NAME", "postgresql")


def lab_reboot(name: str) -> None:
    """Reboot a lab host the way a machine reboots (systemd's reboot.target); wait for SSH."""
    subprocess.run(
        [sys.executable, str(PROJECT / "lab" / "lab.py"), "reboot", name, "--lab", LAB],
        check=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def hostvars(host: Any) -> dict[str, Any]:
    return dict(host.ansible.get_variables())


@pytest.fixture(scope="module")
def peer(host: Any) -> Any:
    """Another host of the scenario, by inventory name."""

    def get(name: str) -> Any:
        return host.get_host(f"ansible://{name}", ansible_inventory=host.backend.ansible_inventory)

    return get


def address_of(host: Any) -> str:
    facts = host.ansible("setup", "gather_subset=!all,!min,network", check=False)["ansible_facts"]
    return str(facts["ansible_default_ipv4"]["address"])


@pytest.fixture(scope="module")
def cluster_address(host: Any) -> str:
    return address_of(host)
