"""Helpers of the reliability tests: send real ops.probe tasks, count their effects in PostgreSQL,
inject faults from the controller (lab/lab.py) and wait, bounded, for hosts to come back."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from conftest import QUEUES, app_python, other_host

WORKERS = ["worker1", "worker2"]
INSTANCES = ["pricing", "notifications", "batch"]
# Redelivery after a lost worker: visibility timeout (60 s in this scenario) + the 10 s sweep.
REDELIVERY_WAIT = 200
# Every figure printed by wait_done, shown together at the end of the session (conftest.py:
# pytest captures the tests' own output unless run with -s).
FIGURES: list[str] = []


def new_prefix(name: str) -> str:
    """A fresh token prefix: rel-NAME-HEX8, NAME reduced to lowercase letters and digits."""
    return f"rel-{re.sub(r'[^a-z0-9]', '', name.lower())}-{uuid.uuid4().hex[:8]}"


def send_each(ops1: Any, tokens: list[tuple[str, str]], **kwargs: Any) -> dict[str, Any]:
    """Send ops.probe(token, **kwargs) for each (token, queue) from ops1, each on its own: a
    publish refused (a full broker) is counted and the next one still tried. {"ids": the
    accepted tasks' ids, "refused": n, "errors": the refusals' distinct messages}."""
    code = f"""
import json, traceback
from app.celery_app import celery_app
out = {{"ids": [], "refused": 0, "errors": []}}
for token, queue in {tokens!r}:
    # A producer from the pool per task, as each API request takes one: kombu can leave a
    # producer whose publish failed on a closed channel, and reusing it fails for that reason.
    try:
        r = celery_app.send_task("ops.probe", args=[token], kwargs={kwargs!r}, queue=queue)
        out["ids"].append(r.id)
    except Exception as exc:
        out["refused"] += 1
        error = f"{{type(exc).__name__}}: {{exc}}"[:300]
        if "maxmemory" not in error:  # unexpected: where it came from, for the report
            error += " at " + " < ".join(
                f"{{f.name}}:{{f.lineno}}" for f in traceback.extract_tb(exc.__traceback__)[-4:]
            )
        if error not in out["errors"]:
            out["errors"].append(error)
print(json.dumps(out))
"""
    result: dict[str, Any] = app_python(ops1, code, timeout=600)
    return result


def send(ops1: Any, tokens: list[tuple[str, str]], **kwargs: Any) -> list[str]:
    """send_each that must be accepted whole (a healthy broker); the task ids."""
    out = send_each(ops1, tokens, **kwargs)
    assert not out["refused"], f"{out['refused']} of {len(tokens)} refused: {out['errors']}"
    ids: list[str] = out["ids"]
    return ids


def send_many(ops1: Any, prefix: str, n: int, queues: list[str], **kwargs: Any) -> float:
    """Send n probes `prefix-I` (queue I mod len(queues)) from ops1; the seconds it took."""
    code = f"""
import json, time
from app.celery_app import celery_app
queues = {queues!r}
t0 = time.monotonic()
with celery_app.producer_or_acquire() as producer:
    for i in range({n}):
        celery_app.send_task("ops.probe", args=["{prefix}-" + str(i)], kwargs={kwargs!r},
                             queue=queues[i % len(queues)], producer=producer)
print(json.dumps(time.monotonic() - t0))
"""
    seconds: float = app_python(ops1, code, timeout=900)
    return seconds


def probe_prefix(prefix: str) -> str:
    """`prefix` checked to be one of new_prefix's (inlined in SQL below: no quoting needed)."""
    assert re.fullmatch(r"rel-[a-z0-9-]+-[0-9a-f]{8}", prefix), prefix
    return prefix


def pg_json(sql: str, timeout: float = 90) -> Any:
    """One JSON value computed by PostgreSQL on data1, read as its superuser over the local
    socket: the tests need no app login on ops1 (which holds no database password: it runs no
    task). Retried while PostgreSQL restarts."""
    data1 = other_host("data1")
    cmd = f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d app -c {shlex.quote(sql)}"
    deadline = time.monotonic() + timeout
    while True:
        out = data1.run(cmd)
        if out.rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert out.rc == 0, f"psql on data1 failed (rc {out.rc}): {out.stderr[-2000:]}"
    return json.loads(out.stdout.strip())


def counts(ops1: Any, prefix: str) -> dict[str, int]:
    """Probes of `prefix`: rows, completed once, not completed, more than once, runs."""
    result: dict[str, int] = pg_json(
        "select json_build_object('rows', count(*),"  # noqa: S608 (probe_prefix: checked)
        " 'completed', count(*) filter (where completions = 1),"
        " 'unfinished', count(*) filter (where completions = 0),"
        " 'duplicated', count(*) filter (where completions > 1),"
        " 'runs', coalesce(sum(runs), 0))"
        f" from task_probes where token like '{probe_prefix(prefix)}-%'"
    )
    return result


def probes(ops1: Any, prefix: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = pg_json(
        "select coalesce(json_agg(json_build_object('token', token, 'queue', queue, 'runs', runs,"  # noqa: S608
        " 'completions', completions, 'worker', worker, 'workers', workers) order by token),"
        f" '[]') from task_probes where token like '{probe_prefix(prefix)}-%'"
    )
    return result


def wait_done(ops1: Any, prefix: str, sent: int, timeout: float, label: str) -> dict[str, int]:
    """Poll until every probe of `prefix` completed, or none is left to complete, or time is up;
    print and return the figures.

    "None left": no completion for 15 s and the broker holds no message of `prefix` (in a queue
    or in unacked; a running task's message stays in unacked until its ack, acks_late) — what is
    missing then is lost, and waiting out `timeout` (sized past the visibility timeouts) would
    only make the test slower.
    """
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while True:
        c = counts(ops1, prefix)
        done = c["completed"] + c["duplicated"]
        if done >= sent or time.monotonic() > deadline:
            break
        if done != last:
            last, still_since = done, time.monotonic()
        elif time.monotonic() - still_since >= 15 and held_probes(ops1, prefix) == 0:
            # Read again: a task commits its completion just before its ack removes the message,
            # so one that finished between the two reads above is counted, not called lost.
            c = counts(ops1, prefix)
            break
        time.sleep(3)
    c["sent"] = sent
    c["lost"] = sent - c["completed"] - c["duplicated"]
    line = (
        f"RELIABILITY {label}: sent={sent} completed={c['completed']} lost={c['lost']} "
        f"duplicated={c['duplicated']} runs={c['runs']}"
    )
    FIGURES.append(line)
    print(line, flush=True)
    return c


def wait_running(ops1: Any, prefix: str, n: int = 1, timeout: float = 90) -> list[dict[str, Any]]:
    """Wait until n probes of `prefix` started; their rows (worker = NAME@HOST)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r for r in probes(ops1, prefix) if r["runs"] >= 1]
        if len(rows) >= n:
            return rows
        time.sleep(1)
    raise AssertionError(f"probes {prefix} did not start within {timeout} s")


def task_states(ops1: Any, ids: list[str]) -> list[dict[str, Any]]:
    code = f"""
import json
from app.celery_app import celery_app
out = []
for i in {ids!r}:
    r = celery_app.AsyncResult(i)
    out.append({{"id": i, "state": r.state, "error": repr(r.result) if r.failed() else None}})
print(json.dumps(out))
"""
    result: list[dict[str, Any]] = app_python(ops1, code)
    return result


# Python run on ops1 ahead of the helpers below: HELD = (place, the task's argsrepr)
# of every message the broker holds, queued (place = queue) or delivered and not acked
# (place = unacked, over every instance's unacked:NAME; read tag by tag: the ACL allows HGET,
# not HVALS).
HELD = """
import json
from app.celery_app import QUEUES, broker_redis
from app.health import unacked_keys
r = broker_redis()
HELD = [(q, json.loads(m)["headers"].get("argsrepr", ""))
        for q in QUEUES for m in r.lrange(q, 0, -1)]
for key in unacked_keys(r):
    for tag in r.zrange(key + "_index", 0, -1):
        raw = r.hget(key, tag)
        if raw:
            HELD.append(("unacked", json.loads(raw)[0]["headers"].get("argsrepr", "")))
"""


def queued_probes(ops1: Any, prefix: str) -> dict[str, int]:
    """The probes of `prefix` waiting in each queue (and in `unacked`), read from the broker.

    Exact where queue lengths are not: beat keeps adding its own messages while workers are away.
    """
    code = f"""
found = dict.fromkeys([*QUEUES, "unacked"], 0)
for place, args in HELD:
    found[place] += "{prefix}-" in args
print(json.dumps(found))
"""
    result: dict[str, int] = app_python(ops1, HELD + code, timeout=300)
    return result


def held_probes(ops1: Any, prefix: str) -> int | None:
    """How many messages of `prefix` the broker holds (queued or unacked); None if unreadable."""
    code = f"""
print(json.dumps(sum("{prefix}-" in args for _, args in HELD)))
"""
    try:
        held: int = app_python(ops1, HELD + code, timeout=300)
    except AssertionError:  # the broker away (restarting, cut off): unknown, keep waiting
        return None
    return held


def missing_probes(ops1: Any, prefix: str, n: int) -> dict[str, Any]:
    """Of probes `prefix-0..n-1`, the ones not completed, and where the broker still holds them."""
    done = set(
        pg_json(
            "select coalesce(json_agg(token), '[]') from task_probes"  # noqa: S608
            f" where token like '{probe_prefix(prefix)}-%' and completions >= 1"
        )
    )
    missing = sorted({f"{prefix}-{i}" for i in range(n)} - done)
    # Where the broker holds the first 20 (the report's sample).
    code = f"""
import re
shown = set({missing[:20]!r})
where = {{}}
for place, args in HELD:
    token = re.search(r"'({prefix}-[0-9]+)'", args)
    if token and token[1] in shown:
        where[token[1]] = place
print(json.dumps({{t: where.get(t, "nowhere") for t in sorted(shown)}}))
"""
    where: dict[str, str] = app_python(ops1, HELD + code, timeout=300)
    return {"missing": len(missing), "where": where}


def instance_states(host: Any) -> list[str]:
    """`systemctl is-active` of each worker instance of the host, in INSTANCES order."""
    units = " ".join(f"celery-worker@{i}" for i in INSTANCES)
    return list(host.run(f"systemctl is-active {units}").stdout.split())


def main_pid(host: Any, unit: str) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}"))


def lab(*args: str, timeout: int = 300) -> None:
    """lab/lab.py on this scenario's lab (mol-cluster), from the checkout Molecule runs."""
    root = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    scenario = os.environ.get("MOLECULE_SCENARIO_NAME", "cluster")
    cmd = [sys.executable, f"{root}/lab/lab.py", "--lab", f"mol-{scenario}", *args]
    out = subprocess.run(
        cmd, cwd=root, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{' '.join(cmd)}: {out.stdout[-1500:]} {out.stderr[-1500:]}"


def host_healthy(name: str) -> tuple[bool, str]:
    """All units of the host up: system running (no failed unit), every worker instance active."""
    try:
        h = other_host(name)
        state = h.run("systemctl is-system-running").stdout.strip()
        active = instance_states(h)
    except Exception as exc:  # host down or unreachable while it boots
        return False, f"unreachable: {str(exc)[:200]}"
    ok = state == "running" and active == ["active"] * len(INSTANCES)
    return ok, f"system {state}, instances {active}"


def wait_healthy(name: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        ok, status = host_healthy(name)
        if ok:
            return status
        time.sleep(3)
    raise AssertionError(f"{name} not healthy within {timeout} s: {status}")


def wait_answering(ops1: Any, nodes: list[str], timeout: float = 120) -> None:
    """Wait until every node NAME@HOST answers a broadcast ping."""
    deadline = time.monotonic() + timeout
    missing: list[str] = nodes
    while time.monotonic() < deadline:
        out = ops1.run("taskctl workers --json --timeout 3")
        if out.rc == 0:
            answered = json.loads(out.stdout).get("workers", [])
            names = {w if isinstance(w, str) else w.get("name", "") for w in answered}
            missing = [n for n in nodes if n not in names]
            if not missing:
                return
        time.sleep(3)
    raise AssertionError(f"workers {missing} do not answer within {timeout} s")


def all_nodes() -> list[str]:
    return [f"{i}@{w}" for w in WORKERS for i in INSTANCES]


def served_without(ops1: Any, label: str) -> None:
    """Probes on every queue complete, all on worker1 (worker2 is away)."""
    prefix = new_prefix(label.split()[2])
    send(ops1, [(f"{prefix}-{q}-{i}", q) for q in QUEUES for i in range(4)])
    c = wait_done(ops1, prefix, 4 * len(QUEUES), 120, label)
    hosts = {r["worker"].split("@")[1] for r in probes(ops1, prefix)}
    assert (c["lost"], c["duplicated"], hosts) == (0, 0, {"worker1"}), (c, hosts)


BROKER_PORT, RESULTS_PORT = 6380, 6382  # TLS ports of redis-server and redis-server@results


def broker_admin(
    command: str, check: bool = True, port: int = BROKER_PORT, seconds: int = 0
) -> str:
    """redis-cli as the admin user on data1 (TLS port, password from the lab's secrets); with
    `seconds`, stopped then (a SUBSCRIBE, a MONITOR: their output so far)."""
    data1 = other_host("data1")
    secret = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"], ".lab/secrets/redis_admin_password")
    cli = (
        f"REDISCLI_AUTH={secret.read_text().strip()} {f'timeout {seconds} ' if seconds else ''}"
        f"redis-cli --no-auth-warning --user admin --tls --cacert /etc/redis/tls/ca.crt -h data1 "
        f"-p {port} "
    )
    out = data1.run(cli + command)
    if check:
        assert out.rc == 0 and "ERR" not in out.stdout, out.stdout + out.stderr
    return str(out.stdout.strip())


def results_admin(command: str, check: bool = True, seconds: int = 0) -> str:
    return broker_admin(command, check=check, port=RESULTS_PORT, seconds=seconds)


def info_field(text: str, field: str) -> int:
    return int(text.split(f"{field}:", 1)[1].split()[0])
