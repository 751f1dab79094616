"""Processes and cgroups: finding a host's processes, killing them, starting its supervisor."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .labs import Lab
from .shell import LabError


def procs() -> Iterator[tuple[int, list[str], int]]:
    """(pid, argv, ppid) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        yield int(entry.name), [a.decode(errors="replace") for a in argv if a], ppid


def host_procs(root: Path, under: bool = False) -> tuple[list[int], list[int], list[int]]:
    """Supervisor loops, systemd-nspawn processes and container inits (PID 1 inside) of ROOT.

    With `under`, of every host root below the directory ROOT (found even if it was deleted).
    """
    table = list(procs())
    sups, nspawns = supervisors_and_nspawns(table, root, under)
    inits = [pid for pid, _, ppid in table if ppid in nspawns and pid_alive(pid)]
    return sups, nspawns, inits


def supervisors_and_nspawns(
    table: list[tuple[int, list[str], int]], root: Path, under: bool = False
) -> tuple[list[int], list[int]]:
    """The supervisor loops and systemd-nspawn processes of ROOT in TABLE (see host_procs)."""
    marker = f"--directory={root}"
    sups, nspawns = [], []
    for pid, argv, _ in table:
        if not (marker in argv or (under and any(a.startswith(marker + "/") for a in argv))):
            continue
        if argv and argv[0] == "sh" and "lab-supervisor" in " ".join(argv):
            sups.append(pid)
        elif argv and argv[0].endswith("systemd-nspawn"):
            nspawns.append(pid)
    return sups, nspawns


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_host(root: Path, timeout: float = 15.0, under: bool = False) -> None:
    """Pull the plug: no restart, every process of the host gone."""
    sups, _, inits = host_procs(root, under)
    for pid in sups + inits:  # killing a PID namespace's init kills the whole namespace
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sups, nspawns, inits = host_procs(root, under)
        if not (sups or nspawns or inits):
            return
        if time.monotonic() > deadline - timeout / 2:
            for pid in sups + nspawns + inits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise LabError(f"processes of {root} did not exit")


def cgroup_bases() -> list[Path]:
    """The hierarchies a host's systemd tracks its units in: cgroup v2, or v1's name=systemd and
    the hybrid layout's unified tree."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return [root]
    return [b for b in (root / "systemd", root / "unified") if (b / "cgroup.procs").exists()]


def lab_cgroups(index: int) -> list[Path]:
    return sorted(
        d for b in cgroup_bases() for d in (b / "celery-bundle-lab").glob(f"clab{index}-*")
    )


def remove_cgroup(path: Path) -> None:
    """rmdir bottom-up (a cgroup's files cannot be deleted, its empty directories can)."""
    for d in [*sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True), path]:
        with contextlib.suppress(OSError):
            d.rmdir()


def start_supervisor(lab: Lab, name: str) -> None:
    root = lab.root(name)
    sups, nspawns, _ = host_procs(root)
    if sups or nspawns:
        return
    # A cgroup of its own per host: systemd-nspawn puts the host's units below its own cgroup, and
    # hosts sharing one would share every unit's cgroup (a stop waits for another host's processes).
    cgroups = [b / "celery-bundle-lab" / lab.netns(name) for b in cgroup_bases()]
    for cg in cgroups:
        cg.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LAB_CGROUPS=" ".join(str(cg / "cgroup.procs") for cg in cgroups))
    console = lab.hdir(name) / "console.log"
    with console.open("ab") as out:
        subprocess.Popen(
            supervisor_argv(lab, name),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            env=env,
        )


def supervisor_argv(lab: Lab, name: str) -> list[str]:
    """`sh -c LOOP lab-supervisor:LAB:HOST systemd-nspawn ...`: the host's process, named for ps."""
    nspawn = [
        "systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--boot",
        f"--directory={lab.root(name)}", f"--machine={name}",
        f"--network-namespace-path=/run/netns/{lab.netns(name)}",
        "--resolv-conf=copy-host", "--link-journal=no", "--console=passive",
        # For the host firewall (nftables, roles/firewall): the network namespace is the host's own.
        "--capability=CAP_NET_ADMIN",
    ]  # fmt: skip
    # systemd-nspawn exits 133 when the host reboots: start it again (as systemd-nspawn@ would).
    loop = (
        'for f in $LAB_CGROUPS; do echo $$ > "$f" || exit 1; done; '
        'while :; do "$@"; rc=$?; [ "$rc" -eq 133 ] || exit "$rc"; echo "lab: $0: rebooting"; done'
    )
    return ["sh", "-c", loop, f"lab-supervisor:{lab.name}:{name}", *nspawn]


def host_init(lab: Lab, name: str) -> int | None:
    inits = host_procs(lab.root(name))[2]
    return inits[0] if inits else None
