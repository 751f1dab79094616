"""Removing a lab: everything it made, found by its names."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .config import DEFAULT_LAB, STATE_ROOT
from .labs import Lab
from .net import remove_net
from .procs import kill_host, lab_cgroups, procs, remove_cgroup
from .registry import registry_index, registry_load, registry_release
from .shell import log, mounted, remove_tree


def nspawn_locks(lab: Lab) -> list[Path]:
    """systemd-nspawn's lock files of the lab's host roots (left behind when a host is killed)."""
    locks = []
    for name in lab.hosts:
        root = lab.root(name)
        if mounted(root) or lab.hosts[name].get("storage") == "copy":
            st = root.stat()
            locks.append(Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}"))
    return locks


def remove_nspawn_leftovers(locks: list[Path], names: list[str]) -> None:
    for lock in locks:
        lock.unlink(missing_ok=True)
    running = {a for _, argv, _ in procs() for a in argv if a.startswith("--machine=")}
    for name in names:  # named after the host, which another lab may run too
        if f"--machine={name}" not in running:
            with contextlib.suppress(OSError):
                Path(f"/run/systemd/nspawn/propagate/{name}").rmdir()


def teardown(lab: Lab, keep_registry: bool = False) -> None:
    """Everything the lab made, found by its names, so that a crashed run's leftovers go too."""
    index = lab.state.get("index", registry_index(lab.dir))
    owners = [k for k, v in registry_load()["labs"].items() if int(v["index"]) == index]
    if owners and str(lab.dir) not in owners:
        # That index now belongs to another lab (the registry was lost in a reboot): not ours.
        index = None
    hosts_dir = lab.dir / "hosts"
    locks = nspawn_locks(lab)
    for cg in lab_cgroups(index) if index is not None else []:
        with contextlib.suppress(OSError):
            (cg / "cgroup.kill").write_text("1\n")  # cgroup v2: every process of the host at once
    kill_host(hosts_dir, under=True)
    remove_nspawn_leftovers(locks, list(lab.hosts))
    if index is not None:
        deadline = time.monotonic() + 10  # the last processes of a host leave its cgroup late
        while lab_cgroups(index) and time.monotonic() < deadline:
            for cg in lab_cgroups(index):
                remove_cgroup(cg)
            time.sleep(0.05)
        if lab_cgroups(index):
            log(f"cgroups left behind: {' '.join(map(str, lab_cgroups(index)))}")
        remove_net(index)
    remove_tree(lab.dir)
    if lab.name == DEFAULT_LAB:
        (STATE_ROOT / "ssh_config").unlink(missing_ok=True)
    if not keep_registry:
        registry_release(lab.dir)
