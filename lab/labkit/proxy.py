"""The apt cache: the lab's own apt-cacher-ng, on an address of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .config import CACHE, PROXY_ADDR, PROXY_DEV, PROXY_PORT, RECIPE, RUN
from .shell import LabError, locked, log, run, write


def proxy_wanted() -> bool:
    return (
        os.environ.get("LAB_APT_PROXY", "on") != "off" and Path("/usr/sbin/apt-cacher-ng").exists()
    )


def port_open(addr: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return True
    except OSError:
        return False


def proxy_pid() -> int | None:
    try:
        pid = int((RUN / "apt-cacher-ng.pid").read_text())
        if "apt-cacher-ng" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass
    return None


def proxy_start() -> bool:
    """Start the lab's own apt-cacher-ng (unprivileged) unless it runs.

    Hosts then download each package once per machine, however many labs and scenarios install it.
    """
    if not proxy_wanted():
        log("apt-cacher-ng is not installed (or LAB_APT_PROXY=off): hosts use the mirror directly")
        return False
    with locked(RUN / "proxy.lock"):
        if not Path(f"/sys/class/net/{PROXY_DEV}").exists():
            # A port-less bridge holds the address as a dummy would (some kernels lack dummy).
            run("ip", "link", "add", PROXY_DEV, "type", "bridge")
        run("ip", "addr", "replace", f"{PROXY_ADDR}/32", "dev", PROXY_DEV)
        run("ip", "link", "set", PROXY_DEV, "up")
        if proxy_pid() and port_open(PROXY_ADDR, PROXY_PORT):
            return True
        cache, logs, sock = CACHE / "apt-cacher-ng", CACHE / "apt-cacher-ng-log", RUN / "acng"
        for d in (cache, logs, sock):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "apt-cacher-ng", "apt-cacher-ng")
        # Our own configuration: Debian's sends requests to ftp.debian.org, ours to RECIPE's mirror.
        conf = CACHE / "apt-cacher-ng-conf"
        write(
            conf / "acng.conf",
            f"CacheDir: {cache}\nLogDir: {logs}\nSupportDir: /usr/lib/apt-cacher-ng\n"
            f"BindAddress: {PROXY_ADDR}\nPort: {PROXY_PORT}\n"
            f"SocketPath: {sock}/socket\nPidFile: {sock}/pid\n"
            f"Remap-debrep: file:deb_mirror*.gz /debian ; {RECIPE['mirror']}/\n"
            "Remap-secdeb: security.debian.org deb.debian.org/debian-security ; "
            f"{RECIPE['security_mirror']}/\n"
            "ConnectProto: v4\nExThreshold: 30\n"  # no ReportPage: no admin page for the hosts
            # Index files fetched within 2 minutes are served without asking the mirror again:
            # hosts of a lab ask at the same moment, and concurrent refreshes of one InRelease
            # race in apt-cacher-ng ("Failure to move file out of the way").
            "FreshIndexMaxAge: 120\n",
        )
        cmd = ["setpriv", "--reuid=apt-cacher-ng", "--regid=apt-cacher-ng", "--init-groups", "--"]
        cmd += ["/usr/sbin/apt-cacher-ng", "-c", str(conf), "ForeGround=1"]
        with (logs / "lab-console.log").open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        write(RUN / "apt-cacher-ng.pid", f"{proc.pid}\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if port_open(PROXY_ADDR, PROXY_PORT):
                return True
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise LabError(
            f"apt-cacher-ng did not start (see {logs}/lab-console.log); LAB_APT_PROXY=off skips it"
        )


def proxy_stop() -> None:
    pid = proxy_pid()
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    (RUN / "apt-cacher-ng.pid").unlink(missing_ok=True)
    if Path(f"/sys/class/net/{PROXY_DEV}").exists():
        run("ip", "link", "del", PROXY_DEV, check=False)
