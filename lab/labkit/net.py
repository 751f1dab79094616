"""The lab's network: bridge, NAT and filter rules, kernel limits, each host's namespace."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from pathlib import Path

from .config import NET_PREFIX, PROXY_ADDR, PROXY_PORT
from .labs import Lab
from .shell import run


def iptables_rules(lab: Lab) -> list[tuple[str, list[str]]]:
    """(table, rule) of the lab, tagged with its name. Filter rules are inserted at the top of
    their chain in this order, so the last one listed is evaluated first."""
    rules = [
        ("nat", f"POSTROUTING -s {lab.subnet} ! -o {lab.bridge} -j MASQUERADE"),
        ("filter", f"FORWARD -i {lab.bridge} -j ACCEPT"),
        ("filter", f"FORWARD -o {lab.bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ("filter", f"INPUT -i {lab.bridge} -d {PROXY_ADDR} -p tcp --dport {PROXY_PORT} -j ACCEPT"),
        # Labs do not reach each other: a scenario only ever talks to its own hosts.
        ("filter", f"FORWARD -i {lab.bridge} ! -o {lab.bridge} -d {NET_PREFIX}.0.0/16 -j DROP"),
    ]
    return [
        (table, [*rule.split(), "-m", "comment", "--comment", lab.bridge]) for table, rule in rules
    ]


# Every host's systemd (root, no user namespace) draws on root's inotify quota; the kernel's default
# of 128 instances runs out at about a dozen hosts, and units then fail at random ("Too many open
# files"). Raised, never lowered, as kind and other container tools do.
SYSCTLS = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 524288,
    # Per uid, and a service user (redis, postgres) is the same uid in every host.
    "kernel/keys/maxkeys": 20000,
    "kernel/keys/maxbytes": 1000000,
}


def ensure_sysctls() -> None:
    for key, want in SYSCTLS.items():
        path = Path("/proc/sys") / key
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text()) < want:
                path.write_text(f"{want}\n")


def ensure_bridge(lab: Lab) -> None:
    if not Path(f"/sys/class/net/{lab.bridge}").exists():
        run("ip", "link", "add", lab.bridge, "type", "bridge")
    run("ip", "addr", "replace", f"{lab.gateway}/24", "dev", lab.bridge)
    run("ip", "link", "set", lab.bridge, "up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    ensure_sysctls()
    for table, rule in iptables_rules(lab):
        if (
            subprocess.run(
                ["iptables", "-w", "-t", table, "-C", *rule], capture_output=True, check=False
            ).returncode
            != 0
        ):
            chain, rest = rule[0], rule[1:]
            # Inserted first, so that a DROP rule of the controller's firewall does not shadow them.
            op = ["-A", chain] if table == "nat" else ["-I", chain, "1"]
            run("iptables", "-w", "-t", table, *op, *rest)


def ensure_host_net(lab: Lab, name: str) -> None:
    ns, veth = lab.netns(name), lab.veth(name)
    nsfile = Path(f"/run/netns/{ns}")
    if nsfile.exists():
        ok = subprocess.run(
            ["ip", "-n", ns, "-4", "addr", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
            check=False,
        )
        if f"{lab.address(name)}/24" in ok.stdout and Path(f"/sys/class/net/{veth}").exists():
            run("ip", "link", "set", veth, "up")  # `up` also ends a `cut`
            return
        run("ip", "netns", "del", ns)  # half-made by a crashed run: start over
    if Path(f"/sys/class/net/{veth}").exists():
        run("ip", "link", "del", veth)
    run("ip", "netns", "add", ns)
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    run("ip", "link", "set", veth, "master", lab.bridge, "up")
    run("ip", "-n", ns, "addr", "add", f"{lab.address(name)}/24", "dev", "eth0")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", ns, "link", "set", "eth0", "up")
    run("ip", "-n", ns, "route", "add", "default", "via", lab.gateway)


def remove_net(index: int) -> None:
    """The network namespaces, bridge, veths and iptables rules of lab INDEX, found by name."""
    prefix = f"clab{index}"
    for line in run("ip", "netns", "list", capture=True).splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(prefix + "-"):
            run("ip", "netns", "del", ns, check=False)
    for dev in Path("/sys/class/net").iterdir():
        if lab_link(dev.name, prefix):
            run("ip", "link", "del", dev.name, check=False, capture=True)
    for table in ("nat", "filter"):
        for rule in tagged_rules(run("iptables", "-w", "-t", table, "-S", capture=True), prefix):
            run("iptables", "-w", "-t", table, "-D", *rule)


def lab_link(dev: str, prefix: str) -> bool:
    """The lab's bridge (`clabN`) or one of its host-side veths (`clabNhJ`)."""
    return dev == prefix or re.fullmatch(rf"{prefix}h\d+", dev) is not None


def tagged_rules(listing: str, tag: str) -> list[list[str]]:
    """The rules of `iptables -S` output commented TAG, as arguments of `-D` (chain first)."""
    rules = []
    for rule in listing.splitlines():
        argv = shlex.split(rule)
        if argv[:1] == ["-A"] and "--comment" in argv and argv[argv.index("--comment") + 1] == tag:
            rules.append(argv[1:])
    return rules
