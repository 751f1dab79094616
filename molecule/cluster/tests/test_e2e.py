"""End to end from ops1: each queue's task runs on a worker host that consumes that queue,
chain/group/chord complete, beat's periodic tasks fire, Flower asks for a login."""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from conftest import QUEUES, app_python, other_host

testinfra_hosts = ["ops1"]

ROUND_TRIP = """
import json, uuid
from app.celery_app import celery_app
sent = {
    q: celery_app.send_task("ops.probe", args=["e2e-%%s-%%s" %% (q, uuid.uuid4().hex[:8])], queue=q)
    for q in %(queues)r
}
out = {}
for q, r in sent.items():
    r.get(timeout=90, propagate=True)
    meta = r.backend.get_task_meta(r.id)
    out[q] = {"state": r.state, "worker": meta.get("worker"), "queue": meta.get("queue")}
print(json.dumps(out))
"""

CANVAS = """
import json, uuid
from celery import chain, chord, group
from app.celery_app import celery_app
def probe(q):
    return celery_app.signature("ops.probe", args=["canvas-" + q + "-" + uuid.uuid4().hex[:8]],
                                queue=q, immutable=True)
qs = %(queues)r
c = chain(probe(qs[0]), probe(qs[1]), probe(qs[2])).apply_async()
g = group(probe(q) for q in qs).apply_async()
d = chord(group(probe(q) for q in qs), probe("default")).apply_async()
out = {
    "chain": c.get(timeout=120) is not None and c.parent.ready() and c.parent.parent.ready(),
    "group": len(g.get(timeout=120)),
    "chord": d.get(timeout=120) is not None,
}
print(json.dumps(out))
"""

BEAT_SEEN = """
import json
from app.celery_app import celery_app
client = celery_app.backend.client
names = {}
for key in client.scan_iter("celery-task-meta-*", count=1000):
    meta = json.loads(client.get(key) or "{}")
    if meta.get("name") and meta.get("status") == "SUCCESS":
        names.setdefault(meta["name"], meta.get("worker"))
print(json.dumps(names))
"""


def instance_queues(worker: str) -> list[str]:
    """Queues of the instance `NAME@HOST`, read from HOST's /etc/celery/worker-NAME.env."""
    name, hostname = worker.split("@", 1)
    env = other_host(hostname).file(f"/etc/celery/worker-{name}.env").content_string
    line = next(x for x in env.splitlines() if x.startswith("CELERY_WORKER_QUEUES="))
    return line.split("=", 1)[1].strip('"').split(",")


def test_a_task_of_each_queue_runs_on_a_worker_host_consuming_it(host: Any) -> None:
    results = app_python(host, ROUND_TRIP % {"queues": QUEUES})
    for queue in QUEUES:
        r = results[queue]
        assert r["state"] == "SUCCESS", (queue, r)
        worker = r["worker"]
        assert worker.split("@")[1] in ("worker1", "worker2"), (queue, worker)
        assert queue in instance_queues(worker), (queue, worker)


def test_chain_group_chord_complete(host: Any) -> None:
    out = app_python(host, CANVAS % {"queues": QUEUES})
    assert out == {"chain": True, "group": len(QUEUES), "chord": True}


def test_taskctl_submits_and_reads_a_result(host: Any) -> None:
    token = f"taskctl-{int(time.time())}"
    task_id = host.check_output(
        f"taskctl submit ops.probe --args {shlex.quote(json.dumps([token]))} --queue maintenance"
    ).strip()
    assert host.run(f"taskctl result --wait --timeout 60 {task_id}").rc == 0
    status = json.loads(host.check_output(f"taskctl status {task_id}"))
    assert status["state"] == "SUCCESS" and status["worker"].startswith("batch@")


def test_beat_fires_the_periodic_tasks(host: Any) -> None:
    wanted = {
        "maintenance.expire_old_quotes",
        "maintenance.cleanup_expired_reservations",
        "data.generate_daily_reports",
        "data.backup_pricing_data",
    }
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen = app_python(host, BEAT_SEEN)
        if wanted <= set(seen):
            break
        time.sleep(5)
    assert wanted <= set(seen), f"beat tasks never completed: {sorted(wanted - set(seen))}"
    for name in wanted:
        assert seen[name].split("@")[1] in ("worker1", "worker2")


def flower_get(host: Any, path: str, auth: str | None) -> int:
    """HTTP status of Flower's `path`, fetched on ops1 from its cluster address."""
    code = f"""
import base64, sys, urllib.error, urllib.request
req = urllib.request.Request("http://" + sys.argv[1] + ":5555{path}")
if len(sys.argv) > 2:
    req.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[2].encode()).decode())
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""
    address = host.check_output("hostname -I").split()[0]
    args = f"{address} {shlex.quote(auth)}" if auth else address
    return int(host.check_output(f"python3 -c {shlex.quote(code)} {args}"))


def test_flower_requires_its_login(host: Any) -> None:
    env = host.file("/etc/celery/flower.env").content_string
    basic = next(x for x in env.splitlines() if x.startswith("FLOWER_BASIC_AUTH="))
    login = basic.split("=", 1)[1].strip('"')
    assert flower_get(host, "/", None) == 401
    assert flower_get(host, "/", "admin:wrong-password") == 401
    assert flower_get(host, "/", login) == 200
    assert flower_get(host, "/api/workers", login) == 200
    assert flower_get(host, "/healthcheck", None) == 200
    assert flower_get(host, "/metrics", None) == 200
