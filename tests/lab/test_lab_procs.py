"""Which processes are a host's: found by systemd-nspawn's --directory in a process table."""

from __future__ import annotations

from pathlib import Path

from labkit.procs import supervisors_and_nspawns

ROOT = Path("/repo/.lab/l/hosts/node1/root")
TABLE = [
    (1, ["/sbin/init"], 0),
    (
        10,
        ["sh", "-c", "loop", "lab-supervisor:l:node1", "systemd-nspawn", f"--directory={ROOT}"],
        1,
    ),
    (11, ["systemd-nspawn", "--boot", f"--directory={ROOT}"], 10),
    (12, ["/usr/lib/systemd/systemd"], 11),
    # Another host whose root's path starts with node1's: not node1's, but under hosts/.
    (20, ["sh", "-c", "loop", "lab-supervisor:l:node10", f"--directory={ROOT.parent}0/root"], 1),
    (21, ["/usr/bin/systemd-nspawn", f"--directory={ROOT.parent.parent}/node2/root"], 20),
    (30, ["vi", f"--directory={ROOT}"], 1),
]


def test_a_hosts_supervisor_and_nspawn() -> None:
    assert supervisors_and_nspawns(TABLE, ROOT) == ([10], [11])


def test_every_host_under_a_directory() -> None:
    hosts = Path("/repo/.lab/l/hosts")
    assert supervisors_and_nspawns(TABLE, hosts, under=True) == ([10, 20], [11, 21])
    assert supervisors_and_nspawns(TABLE, hosts) == ([], [])
