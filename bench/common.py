"""Shared by the bench/ commands: the bench labs, Ansible runs, SSH to lab hosts, statistics.

Every command runs on the controller as root from the repository, with .venv's tools.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV_BIN = REPO / ".venv" / "bin"
# Lab name -> (inventory, hosts to boot); the inventories link inventories/lab/group_vars.
FLEETS = {
    "bench": (BENCH / "inventory" / "bench.yml", ["data1", "worker1", "worker2", "ops1"]),
    "bench6": (
        BENCH / "inventory" / "bench6.yml",
        ["data1", *(f"worker{i}" for i in range(1, 7)), "ops1"],
    ),
}
# `benchc`: the 4-host topology again, for converge runs while `bench` stays deployed.
FLEETS["benchc"] = FLEETS["bench"]
# `anchor`: a fresh data host for the bundle's data play beside a fresh host for the community
# roles (bench/converge.py --anchor; anc1's inventory is bench/inventory/anchor/anc.yml).
FLEETS["anchor"] = (BENCH / "inventory" / "anchor.yml", ["data1", "anc1"])
# `lab`: the lab of `make lab` (the same 4 hosts), for a benchmark of what `make lab` deployed.
FLEETS["lab"] = (REPO / "inventories" / "lab", FLEETS["bench"][1])
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def load() -> str:
    """The 1-minute load average, recorded next to every figure."""
    return Path("/proc/loadavg").read_text().split()[0]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}:{e.get('PATH', '')}"
    e["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    e.setdefault("ANSIBLE_FORCE_COLOR", "0")
    return e


def run(
    *cmd: str,
    timeout: float = 1800,
    check: bool = True,
    quiet: bool = False,
    stdin: str = "",
    extra_env: dict[str, str] | None = None,
) -> str:
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env={**env(), **(extra_env or {})},
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
        input=stdin,
    )
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise SystemExit(f"bench: failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")
    if not quiet and proc.stderr.strip():
        log(proc.stderr.strip().splitlines()[-1])
    return proc.stdout


def lab(*args: str, name: str) -> str:
    return run(str(VENV_BIN / "python"), "lab/lab.py", *args, "--lab", name, timeout=600)


def lab_up(name: str) -> float:
    t0 = time.monotonic()
    lab("up", "--hosts", ",".join(FLEETS[name][1]), name=name)
    return time.monotonic() - t0


def lab_down(name: str) -> None:
    lab("down", name=name)


def _cpu_lines() -> dict[str, tuple[int, int]]:
    """(busy, total) CPU time in jiffies of every `cpu` line of /proc/stat: "cpu" (all CPUs),
    "cpu0", "cpu1"..."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu"):
            fields = [int(v) for v in values]
            out[name] = (sum(fields) - fields[3] - fields[4], sum(fields))  # idle + iowait
    return out


def cpu_times() -> tuple[int, int]:
    """The machine's (busy, total) CPU time in jiffies, from /proc/stat (all CPUs)."""
    return _cpu_lines()["cpu"]


def cpu_times_each() -> dict[str, tuple[int, int]]:
    """Each CPU's (busy, total) time in jiffies, from /proc/stat: {"cpu0": ..., "cpu1": ...}."""
    return {name: times for name, times in _cpu_lines().items() if name != "cpu"}


def cpu_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the machine's CPU time busy between two cpu_times() (1.0: every core, always)."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total else 0.0


def playbook(
    name: str,
    playbook: str,
    *extra: str,
    timeout: float = 3600,
    inventory: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """ansible-playbook against the bench lab NAME (its inventory, or `inventory`): wall time,
    changed per host, the load."""
    load_before = load()
    cpu_before = cpu_times()
    t0 = time.monotonic()
    out = run(
        "ansible-playbook",
        "-i",
        str(inventory or FLEETS[name][0]),
        "-e",
        f"bench_lab={name}",
        playbook,
        *extra,
        timeout=timeout,
        extra_env=extra_env,
    )
    seconds = time.monotonic() - t0
    changed = {m[1]: int(m[3]) for m in map(RECAP.match, out.splitlines()) if m}
    failed = sum(int(m[4]) + int(m[5]) for m in map(RECAP.match, out.splitlines()) if m)
    if failed:
        raise SystemExit(f"bench: {playbook}: failed or unreachable hosts\n{out[-3000:]}")
    return {
        "seconds": round(seconds, 1),
        "changed": sum(changed.values()),
        "changed_per_host": changed,
        "load": f"{load_before}->{load()}",
        "cpu_busy": cpu_busy(cpu_before, cpu_times()),
        "output": out,
    }


def ssh_argv(name: str, host: str, command: str) -> list[str]:
    return ["ssh", "-F", str(REPO / ".lab" / name / "ssh_config"), host, command]


def ssh(
    name: str, host: str, command: str, timeout: float = 900, check: bool = True, stdin: str = ""
) -> str:
    return run(
        *ssh_argv(name, host, command), timeout=timeout, check=check, quiet=True, stdin=stdin
    )


def put(name: str, host: str, local: Path, remote: str) -> None:
    """Copy a file of bench/ to a lab host (over the lab's SSH, nothing else)."""
    cfg = str(REPO / ".lab" / name / "ssh_config")
    run("scp", "-q", "-F", cfg, str(local), f"{host}:{remote}", timeout=120)


# redis-cli/redis-benchmark options on data1 for the Redis user `admin` over TLS (add -p PORT),
# its password on stdin (redis_admin_password()).
REDIS_ADMIN = "-h 127.0.0.1 --tls --cacert /etc/redis/tls/ca.crt --user admin"
# The deployed Redis's ports, read from roles/redis's defaults (the bench inventories keep them):
# the broker and the result store over TLS, and their plain ports (closed; decompose's `tls`
# variants open them for a run).
_REDIS_DEFAULTS = yaml.safe_load((REPO / "roles" / "redis" / "defaults" / "main.yml").read_text())
BROKER_PORT = _REDIS_DEFAULTS["redis_tls_port"]
RESULTS_PORT = _REDIS_DEFAULTS["redis_results_tls_port"]
BROKER_PLAIN_PORT = _REDIS_DEFAULTS["redis_port"]
RESULTS_PLAIN_PORT = _REDIS_DEFAULTS["redis_results_port"]


def redis_admin_password() -> str:
    return (REPO / ".lab" / "secrets" / "redis_admin_password").read_text().strip()


def redis_admin(name: str, port: int, command: str) -> str:
    """A redis-cli command on data1 as the Redis user `admin`, its password on stdin (never on a
    command line, where `ps` shows it)."""
    cli = f"redis-cli --no-auth-warning {REDIS_ADMIN} -p {port}"
    return ssh(
        name,
        "data1",
        f"read -r REDISCLI_AUTH; export REDISCLI_AUTH; {cli} {command}",
        stdin=redis_admin_password() + "\n",
    )


VARIANTS_REMOTE = "/opt/bench"  # bench/variants/ on the worker hosts (decompose, throughput)


def put_variants(name: str) -> None:
    """bench/variants/ to /opt/bench on every worker host, readable by the user celery."""
    for host in workers(name):
        ssh(name, host, f"install -d -m 0755 {VARIANTS_REMOTE}")
        for f in ("bare_app.py", "variant_app.py", "tls_off.py", "run-variant.sh"):
            put(name, host, BENCH / "variants" / f, f"{VARIANTS_REMOTE}/{f}")
        ssh(name, host, f"chmod 0644 {VARIANTS_REMOTE}/*.py; chmod 0755 {VARIANTS_REMOTE}/*.sh")


def workers(name: str) -> list[str]:
    return [h for h in FLEETS[name][1] if h.startswith("worker")]


def every_host(name: str) -> list[str]:
    return ["data1", "ops1", *workers(name)]


@functools.cache
def host_cgroup(name: str, host: str) -> Path:
    """The directory of a lab host's cgroup on this machine (its every process is below it)."""
    sys.path.insert(0, str(REPO / "lab"))
    from labkit.labs import Lab
    from labkit.procs import cgroup_bases

    return cgroup_bases()[0] / "celery-bundle-lab" / Lab(name).netns(host)


def _cgroup_pids(top: str) -> Iterator[int]:
    """The processes of a cgroup and of its children; one that ends meanwhile is skipped."""
    for sub, _, _ in os.walk(top):  # os.walk skips a directory that vanished
        yield from (int(pid) for pid in _cgroup_pids_here(sub))


def unit_ticks(name: str, hosts: list[str]) -> dict[str, int]:
    """CPU time so far, in jiffies (user + system, with the reaped children's), of every
    service of `hosts` as "HOST/UNIT", and of each host's processes outside its services as
    "HOST/-"; read from /proc on this machine (the lab's hosts share its kernel, and this lab has
    no cpuacct cgroup per host). A process that ended unreaped since the last read is missed."""
    ticks: dict[str, int] = {}
    for host in hosts:
        top = host_cgroup(name, host)
        for sub, _, _ in os.walk(top):
            parts = Path(sub).relative_to(top).parts
            services = (
                [u for u in parts if u.endswith(".service")] if "system.slice" in parts else []
            )
            key = f"{host}/{services[0] if services else '-'}"
            for pid in _cgroup_pids_here(sub):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    f = stat[stat.rfind(")") + 2 :].split()  # f[0] is field 3 (state)
                    ticks[key] = ticks.get(key, 0) + sum(int(v) for v in f[11:15])
    return ticks


def _cgroup_pids_here(path: str) -> list[str]:
    """The processes of one cgroup (not its children); none if it vanished."""
    try:
        return (Path(path) / "cgroup.procs").read_text().split()
    except FileNotFoundError:
        return []


def signal_units(name: str, hosts: list[str], patterns: list[str], sig: int) -> int:
    """Send `sig` to every process of the services whose unit names match `patterns` (fnmatch
    on NAME.service, e.g. 'prometheus*') on `hosts`, from this machine: the lab's hosts share
    its kernel, so all of them get it within milliseconds and no SSH session spends CPU (an SSH
    fan-out to 4 hosts took 2.5-3 s of a saturated lab). Returns how many processes got it."""
    sent = 0
    for host in hosts:
        for top, dirs, _ in os.walk(host_cgroup(name, host) / "payload" / "system.slice"):
            unit = Path(top).name
            if unit.endswith(".service") and any(fnmatch.fnmatch(unit, p) for p in patterns):
                dirs.clear()  # its children are read by _cgroup_pids
                for pid in _cgroup_pids(top):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                        sent += 1
    return sent


def exit_on_hangup() -> None:
    """SIGTERM and SIGHUP end the command as an exception does, so that its `finally` runs:
    a bench that froze units thaws them when it is killed or its terminal goes away."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))


def pin_hosts(name: str, cpus: dict[str, str]) -> None:
    """Set the CPU affinity of every process of each named lab host (`taskset -a -cp`), e.g.
    {"ops1": "1", "data1": "0"}; what they fork later inherits it. A host's processes are those of
    its cgroup (lab/labkit/procs.py), read twice to catch a fork in between."""
    for host, cpu in cpus.items():
        top = host_cgroup(name, host)
        for _ in range(2):
            for pid in sorted(set(_cgroup_pids(str(top)))):  # one gone meanwhile: taskset fails
                argv = ["taskset", "-a", "-cp", cpu, str(pid)]
                subprocess.run(argv, capture_output=True, check=False)


@contextlib.contextmanager
def ops1_apart(name: str, cpu: str) -> Iterator[None]:
    """With `cpu` ("1"): every process of ops1 on that CPU, every other host's on the rest, as if
    ops1 (Prometheus, Alertmanager, the Celery exporter, the load generator) were a machine of its
    own; every host on every CPU again at the end. With "": nothing."""
    if not cpu:
        yield
        return
    hosts, cpus = every_host(name), os.cpu_count() or 1
    rest = ",".join(str(c) for c in range(cpus) if str(c) != cpu)
    pin_hosts(name, {h: (cpu if h == "ops1" else rest) for h in hosts})
    try:
        yield
    finally:
        pin_hosts(name, dict.fromkeys(hosts, f"0-{cpus - 1}"))


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def emit(record: dict[str, Any]) -> None:
    """One JSON line per figure on stdout (the load is in every record)."""
    record.setdefault("load", load())
    record.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%S"))
    print(json.dumps(record), flush=True)


# --- the deployed fleet: load from ops1, an SMTP sink on each worker host -------------------------

# The app settings and taskctl's Redis login (ops1 runs no task: app.env has no Redis login).
APP_ENV = "set -a; . /etc/celery/app.env; . /etc/celery/taskctl.env; set +a; cd /root;"
PY = "/opt/celery/current/bin/python"
INSTANCES = ("pricing", "notifications", "batch")  # inventories/lab/group_vars/celery_workers.yml


def prepare(name: str, smtp_delay: float = 0.1) -> None:
    """loadgen.py on ops1, demo data seeded, an SMTP sink (127.0.0.1:25) on every worker host."""
    put(name, "ops1", BENCH / "loadgen.py", "/root/loadgen.py")
    ssh(name, "worker1", "/usr/local/sbin/taskctl db seed >/dev/null")  # a host with the DB login
    for host in workers(name):
        put(name, host, BENCH / "smtp_sink.py", "/root/smtp_sink.py")
        ssh(
            name,
            host,
            "systemctl stop bench-smtp 2>/dev/null; systemctl reset-failed bench-smtp 2>/dev/null;"
            " systemd-run --quiet --unit=bench-smtp --property=RuntimeMaxSec=7200"
            f" /usr/bin/python3 /root/smtp_sink.py --delay {smtp_delay} --seconds 7000",
            check=False,
        )


def gen(name: str, *args: str, timeout: float = 1200) -> dict[str, Any]:
    """Run loadgen.py on ops1; its JSON result."""
    out = ssh(name, "ops1", f"{APP_ENV} {PY} /root/loadgen.py {shlex.join(args)}", timeout=timeout)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def nodes(name: str, instances: tuple[str, ...] = INSTANCES) -> list[str]:
    return [f"{i}@{h}" for h in workers(name) for i in instances]


def wait_nodes(name: str, instances: tuple[str, ...] = INSTANCES) -> None:
    got = gen(name, "ping", "--nodes", ",".join(nodes(name, instances)), "--timeout", "120")
    if got["missing"]:
        raise SystemExit(f"bench: workers not answering: {got['missing']}")


def drain_queues(name: str, queues: tuple[str, ...] = ()) -> bool:
    """Nothing left over from an earlier run (a failed run may leave messages queued), in every
    queue or only in `queues`; at most 300 s. Whether they were drained."""
    for _ in range(60):
        out = ssh(name, "ops1", "/usr/local/sbin/taskctl queues --json")
        lengths = json.loads(out)["queues"]
        if not any(n for q, n in lengths.items() if not queues or q in queues):
            return True
        time.sleep(5)
    return False


def empty_results(name: str) -> None:
    """An empty result store. A burst stores a result per task and the store evicts at its
    maxmemory (256 MB, allkeys-lru): after ~200,000 tasks every write evicts and each
    minute's snapshot (`save 60 10000`) writes 256 MB; the mix ran at 26.5 tasks/s against 29-31
    from an empty store. Each burst then starts from the same store, wherever it falls in a run."""
    redis_admin(name, RESULTS_PORT, "FLUSHALL")


def settle(busy_below: float = 0.2, most: float = 90.0) -> float:
    """Wait until the machine's CPUs (every lab host's, the controller's kernel) are at most
    `busy_below` busy over 2 s, `most` seconds at most; the seconds waited. What a previous burst
    or a mode's switch left running (Redis's snapshot fork, a service starting or stopping) then
    does not land in the next burst: without it the first of two modes lost 5 pairs of 6."""
    started = time.monotonic()
    while True:
        before = cpu_times()
        time.sleep(2)
        busy = cpu_busy(before, cpu_times())
        waited = time.monotonic() - started
        if busy <= busy_below or waited >= most:
            return round(waited, 1)


# The fleet's worker units on a worker host. The instances by name too: `systemctl stop` of the
# target alone returns while they still stop.
UNITS_STOP = "systemctl stop celery-workers.target 'celery-worker@*.service'\n"
UNITS_START = "systemctl start celery-workers.target\n"


def held_burst(
    name: str,
    kind: str,
    count: int,
    stop: str,
    start: str,
    at_start: Callable[[], object] | None = None,
    while_running: Callable[[subprocess.Popen[str]], object] | None = None,
    timeline: bool = False,
) -> dict[str, Any]:
    """A burst into a filled queue: empty the result store, run `stop` on every worker host,
    send `count` tasks from ops1, let the machine settle, call `at_start` if given, run `start`
    on every worker host at once, call `while_running` (with the load generator's process) if
    given; tasks/s from the first start to the last end (and every task's end time with
    `timeline`)."""
    drain_queues(name)
    empty_results(name)
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda h: ssh(name, h, stop), workers(name)))
        cmd = f"{APP_ENV} {PY} /root/loadgen.py burst --hold --kind {kind} --count {count}"
        cmd += " --timeline" if timeline else ""
        with subprocess.Popen(ssh_argv(name, "ops1", cmd), stdout=subprocess.PIPE, text=True) as p:
            assert p.stdout is not None
            p.stdout.readline()  # {"sent": N}: the queue is full
            settled = settle()
            if at_start is not None:
                at_start()
            list(pool.map(lambda h: ssh(name, h, start), workers(name)))
            # Its output read meanwhile: a full pipe would hold the load generator's end.
            reading = pool.submit(p.stdout.read)
            try:
                if while_running is not None:
                    while_running(p)
            except BaseException:
                p.kill()  # not a wait of up to the load generator's timeout
                raise
            out = reading.result(timeout=1200)
            p.wait(timeout=60)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return {**result, "settle_s": settled}


def burst_parser(doc: str, kinds: str) -> argparse.ArgumentParser:
    """The options of the held-burst benchmarks (throughput.py, appendfsync.py)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--lab", default="bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--kinds", default=kinds)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the task counts")
    return p


def ready_for_bursts(name: str) -> None:
    prepare(name)
    for host in workers(name):  # a run interrupted inside a burst left them stopped
        ssh(name, host, UNITS_START)
    wait_nodes(name)
