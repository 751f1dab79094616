#!/usr/bin/env python3
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
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STATE_ROOT = Path(os.environ.get("LAB_STATE_DIR", REPO / ".lab"))
INVENTORY = REPO / "inventories" / "lab" / "hosts.yml"
DEFAULT_LAB = "lab"

# Machine-wide, shared by every checkout: the image cache survives clones,
# the registry (which lab owns which subnet) does not survive a reboot.
CACHE = Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/celery-bundle-lab"))
RUN = Path("/run/celery-bundle-lab")
REGISTRY = RUN / "registry.json"

# The base image recipe: changing anything here builds a new image (the cache key is its hash).
RECIPE: dict[str, Any] = {
    "version": 1,  # bump when customize_image() changes
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "security_mirror": "http://deb.debian.org/debian-security",
    "variant": "minbase",
    "include": [
        "systemd",
        "systemd-sysv",
        "dbus",
        "openssh-server",
        "python3",
        "iproute2",
        "sudo",
        "ca-certificates",
    ],
}

# Lab N uses 10.231.N.0/24; 10.231.255.0/24 is reserved for the controller's services.
NET_PREFIX = "10.231"
MAX_LABS = 250
HOST_OFFSET = 10  # host J of a lab is 10.231.N.(10+J)
PROXY_DEV = "clabproxy"
# The apt cache listens on an interface of its own: reachable from labs, not from eth0's network.
PROXY_ADDR = f"{NET_PREFIX}.255.1"
PROXY_PORT = 3143  # not 3142, so a system-wide apt-cacher-ng may run alongside
SSH_TIMEOUT = 60.0
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
LAB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")

TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "iptables": "iptables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


class LabError(Exception):
    """A failure with a message for the user."""


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(
    *cmd: str, check: bool = True, capture: bool = False, env: dict[str, str] | None = None
) -> str:
    # Uncaptured output goes to stderr: stdout carries only results (`up --json`), and a command
    # such as debootstrap, run on the first `up` of a machine, would corrupt them.
    proc = subprocess.run(
        cmd,
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if capture else None,
        env=env,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip() if capture else ""
        raise LabError(
            f"command failed ({proc.returncode}): {shlex.join(cmd)}"
            + (f": {detail}" if detail else "")
        )
    return proc.stdout if capture else ""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def preflight(need_image: bool = False) -> None:
    if os.geteuid() != 0:
        raise LabError(
            "run as root: the lab creates network namespaces and boots systemd-nspawn hosts"
        )
    tools = dict(TOOLS) if need_image else {k: v for k, v in TOOLS.items() if k != "debootstrap"}
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(
            f"missing Debian packages: {' '.join(missing)} "
            f"(run `make deps` or `apt-get install {' '.join(missing)}`)"
        )


# --- registry: which lab owns which index ---------------------------------------------------------


def registry_load() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(REGISTRY.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault("labs", {})
    return data


def registry_save(data: dict[str, Any]) -> None:
    write(REGISTRY, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


def foreign_routes() -> list[ipaddress.IPv4Network]:
    """Networks routed on the controller by something other than a lab bridge."""
    nets = []
    for line in run("ip", "-4", "route", "show", "table", "all", capture=True).splitlines():
        parts = line.split()
        if (
            not parts
            or parts[0] in ("default", "broadcast", "local", "unreachable")
            or "clab" in line
        ):
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(parts[0], strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def allocate_index(state_dir: Path) -> int:
    with locked(RUN / "lock"):
        reg = registry_load()
        key = str(state_dir)
        if key in reg["labs"]:
            return int(reg["labs"][key]["index"])
        used = {int(v["index"]) for v in reg["labs"].values()}
        foreign = foreign_routes()
        # Round robin, not the lowest free index: a lab that was just removed does not hand its
        # addresses to the next one while SSH connection masters to them may still linger.
        start = int(reg.get("next", 0))
        for n in ((start + i) % MAX_LABS for i in range(MAX_LABS)):
            subnet = ipaddress.ip_network(f"{NET_PREFIX}.{n}.0/24")
            if (
                n in used
                or any(subnet.overlaps(f) for f in foreign)
                or Path(f"/sys/class/net/clab{n}").exists()
            ):
                continue
            reg["next"] = (n + 1) % MAX_LABS
            reg["labs"][key] = {
                "index": n,
                "name": state_dir.name,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            registry_save(reg)
            return n
        raise LabError(f"no free lab subnet in {NET_PREFIX}.0.0/16 ({len(used)} labs registered)")


def registry_release(state_dir: Path) -> None:
    with locked(RUN / "lock"):
        reg = registry_load()
        reg["labs"].pop(str(state_dir), None)
        registry_save(reg)
        if not reg["labs"]:
            proxy_stop()


def registry_index(state_dir: Path) -> int | None:
    entry = registry_load()["labs"].get(str(state_dir))
    return int(entry["index"]) if entry else None


# --- the lab's description ------------------------------------------------------------------------


class Lab:
    def __init__(self, name: str) -> None:
        if not LAB_RE.match(name):
            raise LabError(f"bad lab name {name!r}: letters, digits, '_', '.', '-' (at most 41)")
        self.name = name
        self.dir = STATE_ROOT / name
        self.state_file = self.dir / "state.json"
        self.state: dict[str, Any] = {}
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text())

    @property
    def index(self) -> int:
        return int(self.state["index"])

    @property
    def bridge(self) -> str:
        return f"clab{self.index}"

    @property
    def subnet(self) -> str:
        return f"{NET_PREFIX}.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"{NET_PREFIX}.{self.index}.1"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def hosts(self) -> dict[str, dict[str, Any]]:
        hosts: dict[str, dict[str, Any]] = self.state.setdefault("hosts", {})
        return hosts

    def host(self, name: str) -> dict[str, Any]:
        if name not in self.hosts:
            known = ", ".join(self.hosts) or "none"
            raise LabError(f"no host {name!r} in lab {self.name!r} (hosts: {known})")
        return self.hosts[name]

    def hdir(self, name: str) -> Path:
        return self.dir / "hosts" / name

    def root(self, name: str) -> Path:
        return self.hdir(name) / "root"

    def netns(self, name: str) -> str:
        return f"clab{self.index}-{name}"

    def veth(self, name: str) -> str:
        return f"clab{self.index}h{self.hosts[name]['index']}"

    def address(self, name: str) -> str:
        return f"{NET_PREFIX}.{self.index}.{HOST_OFFSET + int(self.hosts[name]['index'])}"

    def save(self) -> None:
        write(self.state_file, json.dumps(self.state, indent=2) + "\n")

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return locked(STATE_ROOT / f".{self.name}.lock")


def inventory_hosts() -> list[str]:
    try:
        import yaml
    except ImportError as exc:
        raise LabError("PyYAML is missing: run the tool with .venv/bin/python (make venv)") from exc
    data = yaml.safe_load(INVENTORY.read_text())
    names: list[str] = []

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for host in node.get("hosts") or {}:
            if host not in names:
                names.append(host)
        for child in (node.get("children") or {}).values():
            walk(child)

    for group in data.values():
        walk(group)
    if not names:
        raise LabError(f"no hosts in {INVENTORY}")
    return names


# --- the base image -------------------------------------------------------------------------------


def image_dir() -> Path:
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / "images" / f"debian-{RECIPE['suite']}-{digest}"


def customize_image(rootfs: Path) -> None:
    """What every host shares; per-host identity (names, keys, machine-id) is written at `up`."""
    suite, mirror, security = RECIPE["suite"], RECIPE["mirror"], RECIPE["security_mirror"]
    # A real Debian host follows updates and security, not only the release.
    write(
        rootfs / "etc/apt/sources.list",
        f"deb {mirror} {suite} main\n"
        f"deb {mirror} {suite}-updates main\n"
        f"deb {security} {suite}-security main\n",
    )
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    write(rootfs / "etc/machine-id", "", 0o444)
    write(rootfs / "etc/hostname", "localhost\n")
    (rootfs / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for lists in (rootfs / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()


def ensure_image(use_proxy: bool) -> Path:
    final = image_dir()
    if (final / "complete").exists():
        return final / "rootfs"
    with locked(CACHE / "images" / ".lock"):
        if (final / "complete").exists():
            return final / "rootfs"
        preflight(need_image=True)
        for stale in final.parent.glob(f"{final.name}.*"):  # a build that was killed
            remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
        env = dict(os.environ)
        if use_proxy:
            env["http_proxy"] = f"http://{PROXY_ADDR}:{PROXY_PORT}/"
        log(f"building the base image {final.name} with debootstrap (once per machine, ~1 min)")
        started = time.monotonic()
        try:
            run(
                "debootstrap",
                f"--variant={RECIPE['variant']}",
                f"--include={','.join(RECIPE['include'])}",
                RECIPE["suite"],
                str(tmp / "rootfs"),
                RECIPE["mirror"],
                env=env,
            )
            customize_image(tmp / "rootfs")
            write(tmp / "recipe.json", json.dumps(RECIPE, indent=2, sort_keys=True) + "\n")
            write(tmp / "complete", f"{time.monotonic() - started:.1f}\n")
            remove_tree(final)
            tmp.rename(final)
        finally:
            remove_tree(tmp)
        log(f"base image built in {time.monotonic() - started:.1f} s: {final}")
    return final / "rootfs"


# --- the apt cache (apt-cacher-ng) ----------------------------------------------------------------


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


# --- network --------------------------------------------------------------------------------------


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


# --- processes ------------------------------------------------------------------------------------


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
    marker = f"--directory={root}"
    sups, nspawns = [], []
    table = list(procs())
    for pid, argv, _ in table:
        if not (marker in argv or (under and any(a.startswith(marker + "/") for a in argv))):
            continue
        if argv and argv[0] == "sh" and "lab-supervisor" in " ".join(argv):
            sups.append(pid)
        elif argv and argv[0].endswith("systemd-nspawn"):
            nspawns.append(pid)
    inits = [pid for pid, _, ppid in table if ppid in nspawns and pid_alive(pid)]
    return sups, nspawns, inits


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
    nspawn = [
        "systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--boot",
        f"--directory={root}", f"--machine={name}",
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
    env = dict(os.environ, LAB_CGROUPS=" ".join(str(cg / "cgroup.procs") for cg in cgroups))
    console = lab.hdir(name) / "console.log"
    with console.open("ab") as out:
        subprocess.Popen(
            ["sh", "-c", loop, f"lab-supervisor:{lab.name}:{name}", *nspawn],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            env=env,
        )


def host_init(lab: Lab, name: str) -> int | None:
    inits = host_procs(lab.root(name))[2]
    return inits[0] if inits else None


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


# --- hosts ----------------------------------------------------------------------------------------


def mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    points = [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines()]
    return sorted((m for m in points if m.startswith(prefix)), reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that never descends into a mount (a host's root, or debootstrap's /proc and /sys)."""
    for mnt in mounts_under(path):
        if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode != 0:
            run("umount", "--lazy", mnt)
    if mounts_under(path):
        raise LabError(f"mounts remain under {path}: not deleting it")
    if path.exists():
        shutil.rmtree(path)


def mounted(path: Path) -> bool:
    target = str(path)
    return any(
        line.split()[1] == target for line in Path("/proc/self/mounts").read_text().splitlines()
    )


def mount_root(lab: Lab, name: str, image: Path) -> None:
    hdir, root = lab.hdir(name), lab.root(name)
    if mounted(root):
        return
    for d in ("upper", "work", "root"):
        (hdir / d).mkdir(parents=True, exist_ok=True)
    mode = lab.hosts[name].setdefault("storage", os.environ.get("LAB_STORAGE", "overlay"))
    if mode == "overlay":
        opts = f"lowerdir={image},upperdir={hdir / 'upper'},workdir={hdir / 'work'}"
        if (
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], check=False
            ).returncode
            == 0
        ):
            return
        if any((hdir / "upper").iterdir()):
            raise LabError(f"cannot mount the overlay root of {name} (was overlay before)")
        log(f"{name}: overlayfs unavailable here, copying the image instead")
        lab.hosts[name]["storage"] = "copy"
    if not (hdir / "copied").exists():
        run("cp", "-a", "--reflink=auto", f"{image}/.", str(root))
        (hdir / "copied").touch()


def host_identity(lab: Lab, name: str) -> None:
    """First boot only: the host's own name, machine-id, SSH host keys and the lab's key."""
    root, hdir = lab.root(name), lab.hdir(name)
    if (hdir / "identity").exists():
        return
    write(root / "etc/hostname", f"{name}\n")
    write(root / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Ed25519 and ECDSA host keys only: an RSA key takes seconds to generate on a loaded machine.
    for keytype in ("ed25519", "ecdsa"):
        keyfile = str(root / f"etc/ssh/ssh_host_{keytype}_key")
        run("ssh-keygen", "-q", "-t", keytype, "-N", "", "-C", f"root@{name}", "-f", keyfile)
    write(
        root / "etc/ssh/sshd_config.d/lab-host-keys.conf",
        "# The lab's hosts have no RSA host key (lab/lab.py).\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n",
    )
    pub = lab.key.with_suffix(".pub").read_text()
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    write(root / "root/.ssh/authorized_keys", pub, 0o600)
    if proxy_wanted():
        write(
            root / "etc/apt/apt.conf.d/01lab-proxy",
            "// The lab's apt cache on the controller (lab/lab.py): one download per machine.\n"
            f'Acquire::http::Proxy "http://{PROXY_ADDR}:{PROXY_PORT}/";\n'
            "// A stalled transfer (the cache under heavy load) fails fast and is retried, rather\n"
            "// than hanging apt for many minutes.\n"
            'Acquire::http::Timeout "30";\nAcquire::Retries "5";\n'
            "// No pipelining: when the cache drops a connection with requests in flight (it does\n"
            "// on a race refreshing an InRelease), apt's http method and apt-get could both\n"
            "// wait on each other for ever, unseen by the timeout (a cold converge hung so).\n"
            'Acquire::http::Pipeline-Depth "0";\n',
        )
    (hdir / "identity").touch()


def write_hosts_files(lab: Lab) -> None:
    """/etc/hosts of every host: every host of the lab by name (itself at its lab address)."""
    for name in lab.hosts:
        lines = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "ff02::1\tip6-allnodes",
            "ff02::2\tip6-allrouters",
            "",
        ]
        lines += [f"{lab.address(h)}\t{h}" for h in lab.hosts]
        if mounted(lab.root(name)) or lab.hosts[name].get("storage") == "copy":
            write(lab.root(name) / "etc/hosts", "\n".join(lines) + "\n")


def write_ssh_files(lab: Lab) -> None:
    known: list[str] = []
    config = [f"# Written by lab/lab.py for lab {lab.name}: ssh -F {lab.ssh_config} HOST\n"]
    hosts_json: dict[str, Any] = {
        "lab": lab.name,
        "subnet": lab.subnet,
        "gateway": lab.gateway,
        "ssh_config": str(lab.ssh_config),
        "hosts": {},
    }
    for name in lab.hosts:
        addr = lab.address(name)
        # The host's keys: in its root, or in its overlay's upper layer while it is not mounted.
        keydirs = [lab.root(name) / "etc/ssh", lab.hdir(name) / "upper/etc/ssh"]
        pubs = [sorted(d.glob("ssh_host_*_key.pub")) for d in keydirs]
        for pub in next((found for found in pubs if found), []):
            keytype, keydata = pub.read_text().split()[:2]
            known.append(f"{name},{addr} {keytype} {keydata}")
        config.append(
            f"Host {name}\n  HostName {addr}\n  User root\n  Port 22\n"
            f"  IdentityFile {lab.key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {lab.known_hosts}\n  StrictHostKeyChecking yes\n"
            "  LogLevel ERROR\n"
            # A host that stopped answering (stopped, cut off) ends the session within a minute.
            "  ServerAliveInterval 15\n  ServerAliveCountMax 4\n"
        )
        hosts_json["hosts"][name] = {
            "address": addr,
            "user": "root",
            "port": 22,
            "identity_file": str(lab.key),
            "known_hosts": str(lab.known_hosts),
        }
    if known:
        write(lab.known_hosts, "\n".join(known) + "\n")
    write(lab.ssh_config, "\n".join(config))
    write(lab.dir / "hosts.json", json.dumps(hosts_json, indent=2) + "\n")
    if lab.name == DEFAULT_LAB:
        write(STATE_ROOT / "ssh_config", "\n".join(config))


# --- commands -------------------------------------------------------------------------------------


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


def cmd_up(lab: Lab, hosts: list[str], wait: bool = True) -> None:
    preflight()
    for h in hosts:
        if not NAME_RE.match(h):
            raise LabError(f"bad host name {h!r}: lowercase letters, digits and '-', at most 31")
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
        if h not in lab.hosts:
            used = {int(v["index"]) for v in lab.hosts.values()}
            lab.hosts[h] = {"index": min(set(range(1, 240)) - used)}
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
            cmd_stop(lab, h, force=True)
            cmd_start(lab, h, wait=False)
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
        prefix = f"clab{index}"
        for line in run("ip", "netns", "list", capture=True).splitlines():
            ns = line.split()[0] if line.strip() else ""
            if ns.startswith(prefix + "-"):
                run("ip", "netns", "del", ns, check=False)
        for dev in Path("/sys/class/net").iterdir():
            if dev.name == prefix or re.fullmatch(rf"{prefix}h\d+", dev.name):
                run("ip", "link", "del", dev.name, check=False, capture=True)
        for table in ("nat", "filter"):
            for rule in run("iptables", "-w", "-t", table, "-S", capture=True).splitlines():
                argv = shlex.split(rule)
                if (
                    argv[:1] == ["-A"]
                    and "--comment" in argv
                    and argv[argv.index("--comment") + 1] == prefix
                ):
                    run("iptables", "-w", "-t", table, "-D", *argv[1:])
    remove_tree(lab.dir)
    if lab.name == DEFAULT_LAB:
        (STATE_ROOT / "ssh_config").unlink(missing_ok=True)
    if not keep_registry:
        registry_release(lab.dir)


def cmd_down(lab: Lab) -> None:
    preflight()
    t0 = time.monotonic()
    if not lab.dir.exists() and registry_index(lab.dir) is None:
        log(f"lab {lab.name}: nothing to remove")
        return
    teardown(lab)
    log(f"lab {lab.name} removed in {time.monotonic() - t0:.1f} s")


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
    root = lab.root(name)
    init = host_init(lab, name)
    if not init:
        log(f"{name} is already stopped")
        return
    if force:
        kill_host(root)
        log(f"{name} killed (power cut)")
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
    if host_init(lab, name):
        log(f"{name} is already running")
        return
    proxy_start()
    ensure_bridge(lab)
    mount_root(lab, name, Path(lab.state["image"]))
    ensure_host_net(lab, name)
    write_hosts_files(lab)
    start_supervisor(lab, name)
    if wait:
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
    for each in all_labs():
        with each.lock():
            cmd_down(Lab(each.name))
    others = registry_load()["labs"]
    if others:
        raise LabError(f"labs of other checkouts are up ({', '.join(others)}): keeping {CACHE}")
    with locked(RUN / "lock"):
        proxy_stop()
    remove_tree(CACHE)
    remove_tree(RUN)
    log(f"removed {CACHE} and {RUN}")


def all_labs() -> list[Lab]:
    if not STATE_ROOT.exists():
        return []
    return [Lab(d.name) for d in sorted(STATE_ROOT.iterdir()) if (d / "state.json").exists()]


def main(argv: list[str] | None = None) -> int:
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
    a = p.parse_args(argv)
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
            for each in all_labs():
                with each.lock():
                    cmd_down(Lab(each.name))
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


if __name__ == "__main__":
    sys.exit(main())
