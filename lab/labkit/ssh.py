"""SSH to the hosts: waiting for them, the argv, systemd's verdict, apt lists, ssh_config."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .config import CACHE, DEFAULT_LAB, SSH_TIMEOUT, STATE_ROOT
from .labs import Lab
from .shell import LabError, log, write


def wait_ssh(lab: Lab, names: list[str], timeout: float = SSH_TIMEOUT) -> dict[str, float]:
    """Seconds until each host's sshd answers with its banner."""
    started = time.monotonic()
    ready: dict[str, float] = {}
    while len(ready) < len(names):
        for name in names:
            if name in ready:
                continue
            try:
                with socket.create_connection((lab.address(name), 22), timeout=0.5) as sock:
                    sock.settimeout(2)
                    if sock.recv(64).startswith(b"SSH-"):
                        ready[name] = time.monotonic() - started
            except OSError:
                pass
        if time.monotonic() - started > timeout:
            late = [n for n in names if n not in ready]
            raise LabError(
                f"no SSH from {', '.join(late)} after {timeout:.0f} s "
                f"(see {lab.dir}/hosts/HOST/console.log)"
            )
        if len(ready) < len(names):
            time.sleep(0.1)
    return ready


def ssh_argv(lab: Lab, name: str, *cmd: str) -> list[str]:
    return [
        "ssh",
        "-F",
        str(lab.ssh_config),
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        name,
        *cmd,
    ]


def boot_check(lab: Lab, names: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds to SSH and systemd's verdict per host; a host with no SSH in time is 'silent'."""
    try:
        ready = wait_ssh(lab, names)
    except LabError as exc:
        log(str(exc))
        ready = {}
        for name in names:
            try:
                ready.update(wait_ssh(lab, [name], timeout=1.0))
            except LabError:
                ready[name] = float("nan")
    answering = [n for n in names if ready[n] == ready[n]]  # NaN: no SSH
    states = {n: "silent (no SSH)" for n in names if n not in answering}
    states.update(wait_running(lab, answering) if answering else {})
    return ready, states


def wait_running(lab: Lab, names: list[str]) -> dict[str, str]:
    """systemd's own verdict once boot is over: running, or degraded (with the failed units)."""

    def one(name: str) -> str:
        cmd = ssh_argv(lab, name, "timeout 60 systemctl is-system-running --wait")
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        if out != "running":
            failed = subprocess.run(
                ssh_argv(lab, name, "systemctl --failed --no-legend --plain"),
                capture_output=True,
                text=True,
                check=False,
            )
            out += f" ({failed.stdout.strip() or 'no failed units listed'})"
        return out

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def warm_apt(lab: Lab, names: list[str], attempts: int = 3, timeout: int = 60) -> None:
    """Fresh package lists on each host, one host after the other, each try bounded.

    apt-get update through the cache hung for ever now and then (its http method holding a
    connection the cache had closed, seen on one host of four, with or without pipelining); a
    converge waited on it until CI's limit. Here a hang costs at most `timeout` and a retry, and
    the roles' apt tasks (cache_valid_time: 3600) find the lists fresh and do not update again.
    """
    for name in names:
        for attempt in range(1, attempts + 1):
            argv = ssh_argv(
                lab, name, "timeout", "-k", "5", str(timeout), "apt-get", "-qq", "update"
            )
            if subprocess.run(argv, capture_output=True, check=False).returncode == 0:
                break
            log(f"{name}: apt-get update failed or hung (try {attempt} of {attempts})")
        else:
            raise LabError(
                f"{name}: apt-get update failed {attempts} times (the apt cache? {CACHE})"
            )


def write_ssh_files(lab: Lab) -> None:
    known = known_hosts_lines(lab)
    config = ssh_config_text(lab)
    if known:
        write(lab.known_hosts, "\n".join(known) + "\n")
    write(lab.ssh_config, config)
    write(lab.dir / "hosts.json", json.dumps(hosts_json(lab), indent=2) + "\n")
    if lab.name == DEFAULT_LAB:
        write(STATE_ROOT / "ssh_config", config)


def known_hosts_lines(lab: Lab) -> list[str]:
    known: list[str] = []
    for name in lab.hosts:
        addr = lab.address(name)
        # The host's keys: in its root, or in its overlay's upper layer while it is not mounted.
        keydirs = [lab.root(name) / "etc/ssh", lab.hdir(name) / "upper/etc/ssh"]
        pubs = [sorted(d.glob("ssh_host_*_key.pub")) for d in keydirs]
        for pub in next((found for found in pubs if found), []):
            keytype, keydata = pub.read_text().split()[:2]
            known.append(f"{name},{addr} {keytype} {keydata}")
    return known


def ssh_config_text(lab: Lab) -> str:
    config = [f"# Written by lab/lab.py for lab {lab.name}: ssh -F {lab.ssh_config} HOST\n"]
    for name in lab.hosts:
        config.append(
            f"Host {name}\n  HostName {lab.address(name)}\n  User root\n  Port 22\n"
            f"  IdentityFile {lab.key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {lab.known_hosts}\n  StrictHostKeyChecking yes\n"
            "  LogLevel ERROR\n"
            # A host that stopped answering (stopped, cut off) ends the session within a minute.
            "  ServerAliveInterval 15\n  ServerAliveCountMax 4\n"
        )
    return "\n".join(config)


def hosts_json(lab: Lab) -> dict[str, Any]:
    """hosts.json: the lab's machine-readable state (a stable format, other tools read it)."""
    return {
        "lab": lab.name,
        "subnet": lab.subnet,
        "gateway": lab.gateway,
        "ssh_config": str(lab.ssh_config),
        "hosts": {
            name: {
                "address": lab.address(name),
                "user": "root",
                "port": 22,
                "identity_file": str(lab.key),
                "known_hosts": str(lab.known_hosts),
            }
            for name in lab.hosts
        },
    }
