"""End to end from ops1: each queue's task runs on a worker host that consumes that queue,
chain/group/chord complete, beat's periodic tasks fire, an unhealthy cluster mails once per
incident, Flower asks for a login."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from conftest import QUEUES, address_of, app_python, other_host
from monitoring import mail_subjects, wait_until
from reliability import WORKERS, broker_admin

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
# Celery sends a chain's next link before it stores the current one's result, so a fast last
# link can finish while its parent's result is still being written: wait for each link.
out = {
    "chain": all(r.get(timeout=120) is not None for r in (c, c.parent, c.parent.parent)),
    "group": len(g.get(timeout=120)),
    "chord": d.get(timeout=120) is not None,
}
print(json.dumps(out))
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
    """Beat (every 10 s here) sends each entry; Flower's task history shows who ran it."""
    wanted = {
        "maintenance.expire_old_quotes",
        "maintenance.cleanup_expired_reservations",
        "data.generate_daily_reports",
        "data.backup_pricing_data",
        "maintenance.check_system_health",
        "maintenance.database_maintenance",
    }
    login = flower_login(host)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not wanted <= set(seen):
        tasks = json.loads(flower_get(host, "/api/tasks?state=SUCCESS&limit=1000", login)[1])
        seen = {t["name"]: t["worker"] for t in tasks.values() if t.get("name") in wanted}
        time.sleep(5)
    assert wanted <= set(seen), f"beat tasks never succeeded: {sorted(wanted - set(seen))}"
    for worker in seen.values():
        assert worker.split("@")[1] in ("worker1", "worker2")


HEALTH_ALERT = "System Alert - system_health"
HEALTH_OK = "System Alert - system_health_ok"


def app_mails(subject: str) -> int:
    """Mails with exactly this subject in the worker hosts' SMTP sinks (prepare.yml)."""
    return sum(
        mail_subjects(other_host(w), subject).count(subject)
        for w in WORKERS  # exact, not _ok
    )


# Beat's health checks that found the cluster unhealthy, by incident ("opened", "ongoing"), from
# the JSON lines of the batch instances' logs (beat's entries keep no result).
UNHEALTHY = """
import collections, json
seen = collections.Counter()
for line in open("/var/log/celery/batch.log", encoding="utf-8"):
    if '"system_unhealthy"' in line:
        seen[json.loads(line).get("incident")] += 1
print(json.dumps(seen))
"""


def unhealthy_checks(incident: str) -> int:
    return sum(
        json.loads(other_host(w).check_output(f"python3 -c {shlex.quote(UNHEALTHY)}")).get(
            incident, 0
        )
        for w in WORKERS
    )


def test_database_down_mails_one_alert_per_incident(host: Any) -> None:
    """PostgreSQL stopped on data1 while beat runs the health check (every 10 s here): one alert
    mail reaches the recipients while it is still down (the alert's ledger is in the broker), the
    checks that follow find the incident ongoing and mail nothing; once it is back, one mail says
    so."""
    data1 = other_host("data1")
    wait_until(lambda: not broker_admin("GET health:incident").strip(), 90, "no open incident")
    before = {HEALTH_ALERT: app_mails(HEALTH_ALERT), HEALTH_OK: app_mails(HEALTH_OK)}
    ongoing = unhealthy_checks("ongoing")
    t0 = time.time()
    data1.check_output("systemctl stop postgresql")
    try:
        wait_until(lambda: app_mails(HEALTH_ALERT) > before[HEALTH_ALERT], 90, "the alert mail")
        print(f"HEALTH alert mailed {time.time() - t0:.0f} s after PostgreSQL stopped")
        assert data1.run("systemctl is-active postgresql").rc != 0  # mailed while down
        wait_until(lambda: unhealthy_checks("ongoing") >= ongoing + 2, 90, "2 more checks")
        assert app_mails(HEALTH_ALERT) == before[HEALTH_ALERT] + 1
    finally:
        data1.check_output("systemctl start postgresql")
    wait_until(lambda: app_mails(HEALTH_OK) > before[HEALTH_OK], 120, "the resolved mail")
    time.sleep(25)  # two more checks (every 10 s here), healthy: no more mail
    after = {HEALTH_ALERT: app_mails(HEALTH_ALERT), HEALTH_OK: app_mails(HEALTH_OK)}
    assert after == {subject: n + 1 for subject, n in before.items()}


def flower_get(host: Any, path: str, auth: str | None, client: Any = None) -> tuple[int, str]:
    """HTTP status and body of Flower's `path` on ops1's cluster address, fetched over HTTPS from
    `client` (ops1 itself by default), the certificate verified against the lab CA."""
    code = f"""
import base64, ssl, sys, urllib.error, urllib.request
req = urllib.request.Request("https://" + sys.argv[1] + ":5555{path}")
if len(sys.argv) > 2:
    req.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[2].encode()).decode())
context = ssl.create_default_context(cafile="/etc/celery/ca.pem")
try:
    r = urllib.request.urlopen(req, timeout=10, context=context)
    print(r.status)
    print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"""
    address = address_of(host)
    args = f"{address} {shlex.quote(auth)}" if auth else address
    out = (client or host).check_output(f"python3 -c {shlex.quote(code)} {args}")
    status, _, body = out.partition("\n")
    return int(status), body


def flower_login(host: Any) -> str:
    env = host.file("/etc/celery/flower.env").content_string
    basic = next(x for x in env.splitlines() if x.startswith("FLOWER_BASIC_AUTH="))
    return basic.split("=", 1)[1].strip('"').split(",")[0]  # the first of the logins


def test_flower_requires_its_login(host: Any) -> None:
    login = flower_login(host)
    assert flower_get(host, "/", None)[0] == 401
    assert flower_get(host, "/", "admin:wrong-password")[0] == 401
    assert flower_get(host, "/api/workers", None)[0] == 401
    assert flower_get(host, "/", login)[0] == 200
    status, body = flower_get(host, "/api/workers?refresh=1", login)
    assert status == 200
    assert {"pricing@worker1", "batch@worker2"} <= set(json.loads(body))
    # Flower 2 serves /metrics and /healthcheck to anyone; app/flower_service.py puts /metrics
    # behind the login, and /healthcheck too for any other host than Flower's own.
    assert flower_get(host, "/healthcheck", None)[0] == 200
    assert flower_get(host, "/metrics", None)[0] == 401
    assert flower_get(host, "/metrics", login)[0] == 200
    worker1 = other_host("worker1")
    secrets = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"], ".lab/secrets")
    ops = f"ops:{(secrets / 'flower_ops_password').read_text().strip()}"  # the lab's extra login
    assert flower_get(host, "/healthcheck", None, client=worker1)[0] == 401
    assert flower_get(host, "/metrics", None, client=worker1)[0] == 401
    assert flower_get(host, "/healthcheck", ops, client=worker1)[0] == 200
    assert flower_get(host, "/api/workers", ops, client=worker1)[0] == 200
    plain = f"urllib.request.urlopen('http://{address_of(host)}:5555/healthcheck', timeout=5)"
    assert worker1.run(f"python3 -c {shlex.quote('import urllib.request; ' + plain)}").rc != 0


def test_workers_keep_logging_after_logrotate(host: Any) -> None:
    """Move-and-create rotation: the next task's lines land in the new pricing.log. It runs by
    itself: logrotate's timer is up on every host, PostgreSQL's too (the packages are installed
    with policy-rc.d 101, which leaves a timer stopped until a boot unless it is started)."""
    for name in ("ops1", "worker1", "worker2", "data1"):
        timer = other_host(name).service("logrotate.timer")
        assert timer.is_running and timer.is_enabled, name
    worker1 = other_host("worker1")
    worker1.check_output("logrotate --force /etc/logrotate.d/celery")
    assert worker1.file("/var/log/celery/pricing.log.1").exists
    for attempt in range(10):  # the pricing queue is shared by worker1 and worker2
        token = f"rotate-{int(time.time())}-{attempt}"
        task_id = host.check_output(
            f"taskctl submit ops.probe --args {shlex.quote(json.dumps([token]))} --queue pricing"
        ).strip()
        assert host.run(f"taskctl result --wait --timeout 60 {task_id}").rc == 0
        if (
            json.loads(host.check_output(f"taskctl status {task_id}"))["worker"]
            == "pricing@worker1"
        ):
            break
    else:
        raise AssertionError("no pricing task ran on worker1 in 10 tries")
    log = worker1.file("/var/log/celery/pricing.log")
    assert (log.user, log.group, log.mode) == ("celery", "celery", 0o640)
    assert task_id in log.content_string
