"""The local lab: Debian 12 hosts with real systemd (systemd-nspawn), one network namespace each.

    lab.py up [--lab NAME] [--hosts h1,h2]   boot the hosts (default: every host of inventories/lab)
    lab.py down [--lab NAME | --all]         remove everything the lab made, and nothing else
    lab.py status [--lab NAME]               hosts, addresses, states
    lab.py ssh HOST [CMD...]                 SSH to a host (root, the lab's key)
    lab.py reboot|stop|start|cut|restore HOST

Each lab gets a registry index N (machine-wide, so labs of several checkouts coexist) that names
everything it creates on the controller: bridge `clabN`, subnet 10.231.N.0/24, network namespaces
`clabN-HOST`, host-side veths `clabNhJ`, iptables rules commented `clabN`. Its files live in
`.lab/NAME/`. See docs/LAB.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from .commands import (
    cmd_cut,
    cmd_down,
    cmd_down_all,
    cmd_purge,
    cmd_reboot,
    cmd_start,
    cmd_status,
    cmd_stop,
    cmd_up,
)
from .config import DEFAULT_LAB, RUN
from .image import ensure_image
from .labs import Lab, all_labs, inventory_hosts
from .proxy import proxy_start, proxy_stop
from .registry import registry_load
from .shell import LabError, locked, log, preflight
from .ssh import ssh_argv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lab.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--lab",
        default=os.environ.get("LAB_NAME", DEFAULT_LAB),
        help="lab name (default: %(default)s)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--lab", default=argparse.SUPPRESS, help="lab name (default: $LAB_NAME or lab)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name: str, helptext: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=helptext)

    up = command("up", "boot the lab's hosts (twice is harmless)")
    up.add_argument(
        "--hosts", help="comma-separated host names (default: every host of inventories/lab)"
    )
    up.add_argument("--no-wait", action="store_true", help="do not wait for SSH and systemd")
    up.add_argument("--json", action="store_true", help="print the hosts (hosts.json) on stdout")
    down = command("down", "remove everything the lab made")
    down.add_argument("--all", action="store_true", help="every lab of this checkout")
    st = command("status", "labs, hosts, addresses and states")
    st.add_argument("--json", action="store_true")
    command("image", "build the base image (if it is not cached) and print its path")
    command("purge", "down --all, then remove the image and apt caches")
    s = command("ssh", "SSH to a host")
    s.add_argument("host")
    s.add_argument("command", nargs=argparse.REMAINDER)
    for name, helptext in (
        ("reboot", "reboot a host (it comes back by itself)"),
        ("stop", "power a host off (--force: pull the plug)"),
        ("start", "boot a stopped host"),
        ("cut", "cut a host off the network"),
        ("restore", "reconnect a cut host"),
    ):
        c = command(name, helptext)
        c.add_argument("host")
        if name in ("reboot", "start"):
            c.add_argument("--no-wait", action="store_true")
        if name == "stop":
            c.add_argument("--force", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.cmd == "status":
            explicit = (
                any(x == "--lab" or x.startswith("--lab=") for x in (argv or sys.argv))
                or "LAB_NAME" in os.environ
            )
            cmd_status([Lab(a.lab)] if explicit else all_labs(), a.json)
            return 0
        lab = Lab(a.lab)
        if a.cmd == "ssh":
            lab.host(a.host)
            os.execvp("ssh", ssh_argv(lab, a.host, *a.command))  # noqa: S606 (argv, no shell)
        preflight(need_image=a.cmd == "image")
        if a.cmd == "image":
            RUN.mkdir(parents=True, exist_ok=True)
            print(ensure_image(proxy_start()))
            with locked(RUN / "lock"):
                if not registry_load()["labs"]:
                    proxy_stop()  # started for this build only
            return 0
        if a.cmd == "purge":
            cmd_purge()
            return 0
        if a.cmd == "down" and a.all:
            cmd_down_all()
            return 0
        with lab.lock():
            lab = Lab(a.lab)  # re-read under the lock
            if a.cmd == "up":
                hosts = [h for h in (a.hosts or "").split(",") if h] or inventory_hosts()
                cmd_up(lab, hosts, wait=not a.no_wait)
                if a.json:
                    print((lab.dir / "hosts.json").read_text(), end="")
            elif a.cmd == "down":
                cmd_down(lab)
            elif a.cmd == "reboot":
                lab.host(a.host)
                cmd_reboot(lab, a.host, wait=not a.no_wait)
            elif a.cmd == "stop":
                lab.host(a.host)
                cmd_stop(lab, a.host, a.force)
            elif a.cmd == "start":
                cmd_start(lab, a.host, wait=not a.no_wait)
            elif a.cmd in ("cut", "restore"):
                cmd_cut(lab, a.host, restore=a.cmd == "restore")
    except LabError as exc:
        log(f"error: {exc}")
        return 1
    return 0
