"""The commands: up, down, status, reboot, stop, start, cut/restore, purge."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .config import CACHE, RUN
from .hosts import host_identity, mount_root, write_hosts_files
from .image import ensure_image
from .labs import Lab, all_labs, check_host_name
from .net import ensure_bridge, ensure_host_net
from .procs import host_init, host_procs, kill_host, start_supervisor
from .proxy import proxy_start, proxy_stop
from .registry import allocate_index, registry_index, registry_load
from .shell import LabError, locked, log, preflight, remove_tree, run
from .ssh import boot_check, wait_ssh, warm_apt, write_ssh_files
from .teardown import teardown


def cmd_up(lab: Lab, hosts: list[str], wait: bool = True) -> None:
    preflight()
    for h in hosts:
        check_host_name(h)
    t0 = time.monotonic()
    RUN.mkdir(parents=True, exist_ok=True)
    lab.dir.mkdir(parents=True, exist_ok=True)
    # Registered first: the apt cache is stopped when the last registered lab goes down.
    index = allocate_index(lab.dir)
    use_proxy = proxy_start()
    image = ensure_image(use_proxy)
    t_image = time.monotonic()
    if lab.state.get("index") not in (None, index):
        log(f"{lab.name}: leftovers of an earlier lab (index {lab.state['index']}): removing them")
        teardown(lab, keep_registry=True)
        lab.state = {}
    lab.state.update({"name": lab.name, "index": index, "image": str(image)})
    for h in hosts:
        lab.add_host(h)
    lab.save()
    if not lab.key.exists():
        comment = f"celery-bundle-lab-{lab.name}"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(lab.key))
    ensure_bridge(lab)

    def prepare(h: str) -> None:
        mount_root(lab, h, image)
        host_identity(lab, h)
        ensure_host_net(lab, h)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(prepare, hosts))
    lab.save()
    write_hosts_files(lab)
    write_ssh_files(lab)
    t_boot = time.monotonic()
    for h in hosts:
        start_supervisor(lab, h)
    if not wait:
        return
    ready, states = boot_check(lab, hosts)
    t_ssh = time.monotonic()
    bad = {h: s for h, s in states.items() if s != "running"}
    if bad:
        # Under heavy load a unit of the boot itself (journal flush, sysusers) can time out: that
        # is the lab's load, not what a scenario tests. One clean reboot each, then the verdict.
        log(f"hosts not running cleanly, rebooting them once: {bad}")
        for h in bad:
            power_cut(lab, h)
            boot_host(lab, h)
        again_ready, again_states = boot_check(lab, list(bad))
        ready.update(again_ready)
        states.update(again_states)
    for h in hosts:
        log(f"{h}: {lab.address(h)}, SSH after {ready[h]:.1f} s, systemd {states[h]}")
    bad = {h: s for h, s in states.items() if s != "running"}
    t_running = time.monotonic()
    warm_apt(lab, [h for h in hosts if h not in bad])
    log(
        f"lab {lab.name} up in {time.monotonic() - t0:.1f} s (image {t_image - t0:.1f} s, "
        f"prepare {t_boot - t_image:.1f} s, boot to SSH {t_ssh - t_boot:.1f} s, "
        f"to running {t_running - t_ssh:.1f} s, apt lists {time.monotonic() - t_running:.1f} s); "
        f"ssh -F {lab.ssh_config} HOST"
    )
    if bad:
        raise LabError(f"hosts not running cleanly: {bad}")


# --- shared by up (its one power cycle of a host that booted badly), stop and start ---------------


def power_cut(lab: Lab, name: str) -> None:
    """`stop --force`: SIGKILL to the host's PID 1 kills every process of the host at once."""
    if not host_init(lab, name):
        log(f"{name} is already stopped")
        return
    kill_host(lab.root(name))
    log(f"{name} killed (power cut)")


def boot_host(lab: Lab, name: str) -> bool:
    """Boot a stopped host again (same disk, same address); False if it is running already."""
    if host_init(lab, name):
        log(f"{name} is already running")
        return False
    proxy_start()
    ensure_bridge(lab)
    mount_root(lab, name, Path(lab.state["image"]))
    ensure_host_net(lab, name)
    write_hosts_files(lab)
    start_supervisor(lab, name)
    return True


def cmd_down(lab: Lab) -> None:
    preflight()
    t0 = time.monotonic()
    if not lab.dir.exists() and registry_index(lab.dir) is None:
        log(f"lab {lab.name}: nothing to remove")
        return
    teardown(lab)
    log(f"lab {lab.name} removed in {time.monotonic() - t0:.1f} s")


def cmd_down_all() -> None:
    """`down --all`: every lab of this checkout, each under its lock."""
    for each in all_labs():
        with each.lock():
            cmd_down(Lab(each.name))  # re-read under the lock


def host_state(lab: Lab, name: str) -> str:
    if not host_init(lab, name):
        return "stopped"
    link = Path(f"/sys/class/net/{lab.veth(name)}/operstate")
    if link.exists() and link.read_text().strip() == "down":
        return "cut"
    return "running"


def cmd_status(labs: list[Lab], as_json: bool) -> None:
    out: dict[str, Any] = {}
    for lab in labs:
        if "index" not in lab.state:
            continue
        out[lab.name] = {
            "bridge": lab.bridge,
            "subnet": lab.subnet,
            "ssh_config": str(lab.ssh_config),
            "hosts": {
                h: {"address": lab.address(h), "state": host_state(lab, h)} for h in lab.hosts
            },
        }
    if as_json:
        print(json.dumps(out, indent=2))
        return
    if not out:
        print("no lab is up")
    for name, info in out.items():
        print(
            f"lab {name}: bridge {info['bridge']}, subnet {info['subnet']}, "
            f"ssh -F {info['ssh_config']} HOST"
        )
        for h, hi in info["hosts"].items():
            print(f"  {h:<16} {hi['address']:<15} {hi['state']}")


def cmd_reboot(lab: Lab, name: str, wait: bool) -> None:
    old = host_init(lab, name)
    if not old:
        raise LabError(f"{name} is not running")
    t0 = time.monotonic()
    os.kill(
        old, signal.SIGRTMIN + 5
    )  # systemd: start reboot.target, a clean reboot (works while cut off, too)
    if not wait:
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = host_init(lab, name)
        if new and new != old:
            break
        time.sleep(0.1)
    else:
        raise LabError(f"{name} did not come back from its reboot")
    ready = wait_ssh(lab, [name])
    log(
        f"{name} rebooted: SSH again after {time.monotonic() - t0:.1f} s "
        f"(boot to SSH {ready[name]:.1f} s)"
    )


def cmd_stop(lab: Lab, name: str, force: bool) -> None:
    if force:
        power_cut(lab, name)
        return
    root = lab.root(name)
    init = host_init(lab, name)
    if not init:
        log(f"{name} is already stopped")
        return
    os.kill(
        init, signal.SIGRTMIN + 4
    )  # systemd: start poweroff.target; systemd-nspawn then exits 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        sups, nspawns, inits = host_procs(root)
        if not (sups or nspawns or inits):
            log(f"{name} powered off")
            return
        time.sleep(0.2)
    log(f"{name} did not power off in 90 s: killing it")
    kill_host(root)


def cmd_start(lab: Lab, name: str, wait: bool) -> None:
    lab.host(name)
    if boot_host(lab, name) and wait:
        ready = wait_ssh(lab, [name])
        log(f"{name} started: SSH after {ready[name]:.1f} s")


def cmd_cut(lab: Lab, name: str, restore: bool) -> None:
    lab.host(name)
    # The host-side end of its cable: down, the host and its peers lose each other (packets vanish,
    # as in a real partition) while the host keeps its address and its processes.
    run("ip", "link", "set", lab.veth(name), "up" if restore else "down")
    log(f"{name} {'restored to' if restore else 'cut off from'} the network")


def cmd_purge() -> None:
    """Every lab of this checkout, then the machine-wide caches (image, apt) if no lab is left."""
    cmd_down_all()
    others = registry_load()["labs"]
    if others:
        raise LabError(f"labs of other checkouts are up ({', '.join(others)}): keeping {CACHE}")
    with locked(RUN / "lock"):
        proxy_stop()
    remove_tree(CACHE)
    remove_tree(RUN)
    log(f"removed {CACHE} and {RUN}")
