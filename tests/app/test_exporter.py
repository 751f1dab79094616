"""The Prometheus exporter (app/exporter.py) as systemd runs it: `python -m app.exporter`, on a
Redis of its own (stopped at the end), a real worker consuming `default` only, real tasks, beat
for a few seconds; scraped over HTTP with basic auth and read with Prometheus's own parser."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from conftest import ENV, ROOT, WORK, worker_argv
from prometheus_client.parser import text_string_to_metric_families
from services import (
    RedisServer,
    acl_refusals,
    apply_role_acl,
    assert_refused,
    certificates,
    free_port,
    wait_for,
)
from sqlalchemy import select
from test_liveness import NotifySocket

from app import exporter as exporter_module
from app.celery_app import SENT_AT_HEADER, celery_app
from app.db import session_scope
from app.liveness import BEAT_LAST_SENT_KEY
from app.models import TaskProbe
from app.queues import QUEUES

USER, PASSWORD = "prom", "exporter-test-secret"
FORGET_AFTER = 15  # s after a clean stop (production: 600)
NODE = f"exporter@{socket.gethostname()}"  # the worker's -n exporter@%h
PROBE = {"name": "ops.probe", "hostname": NODE, "queue_name": "default"}
FROZEN_HOLD = 25  # s a frozen broker stays frozen after the receiver declares it lost
BACK_WITHIN_S = 3.5  # s from a frozen broker's return to the receiver's subscription again
# task-sent's: the producer's host (these producers have no node name: gen<PID>@HOST).
SENT = {**PROBE, "hostname": socket.gethostname()}


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url)  # noqa: S310 - our own http:// URL
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


class Stack:
    """The exporter, its Redis and the worker, with what the tests ask of them."""

    def __init__(self) -> None:
        self.redis = RedisServer(WORK / f"exporter-redis-{uuid.uuid4().hex[:6]}")
        # The exporter logs in as the redis role's `celery_exporter` user (its rules applied to
        # this Redis); the worker, beat and the tests' own sends as the server's default user.
        self.exporter_password = secrets.token_hex(16)
        self.start_redis()
        self.port = free_port()
        self.notify = NotifySocket(WORK / "notify-exporter.sock")
        self.env = {
            **os.environ,
            **ENV,
            "APP_BROKER_URL": self.redis.url(0),
            "APP_RESULT_BACKEND": self.redis.url(1),
            "APP_EXPORTER_PORT": str(self.port),
            "APP_EXPORTER_USER": USER,
            "APP_EXPORTER_PASSWORD": PASSWORD,
            "APP_EXPORTER_POLL_INTERVAL": "1",
            "APP_EXPORTER_FORGET_AFTER": str(FORGET_AFTER),
        }
        self.log = WORK / "exporter.log"
        self.exporter = subprocess.Popen(
            [sys.executable, "-m", "app.exporter"],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env={
                **self.env,
                "APP_REDIS_USERNAME": "celery_exporter",
                "APP_REDIS_PASSWORD": self.exporter_password,
                "NOTIFY_SOCKET": str(self.notify.path),
                "WATCHDOG_USEC": "2000000",
            },
            cwd=ROOT,
            start_new_session=True,
        )
        self.worker: subprocess.Popen[bytes] | None = None

    def start_redis(self) -> None:
        """Redis (again: the same port and password) with the exporter's ACL user."""
        self.redis.start()
        apply_role_acl(self.broker(), "celery_exporter", self.exporter_password)

    def start_worker(self) -> None:
        argv = worker_argv("exporter", 1, "--without-mingle")
        argv[argv.index("-Q") + 1] = "default"
        self.worker = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=(WORK / "exporter-worker.log").open("ab"),
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, text = get(self.url("/metrics"), (USER, PASSWORD))
        assert status == 200, text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, metric: str, /, **labels: str) -> float | None:
        """The sum of the samples of that name whose labels include these (None: no sample)."""
        found = [
            v
            for (n, lbl), v in self.scrape().items()
            if n == metric and labels.items() <= dict(lbl).items()
        ]
        return sum(found) if found else None

    def wait_value(self, metric: str, want: float, /, timeout: float = 20, **labels: str) -> None:
        wait_for(lambda: self.value(metric, **labels) == want, timeout, f"{metric}{labels}={want}")

    def send(self, name: str, *args: Any, options: dict[str, Any] | None = None, **kw: Any) -> None:
        with celery_app.connection_for_write(self.redis.url(0)) as conn:
            celery_app.send_task(
                name, list(args), kw, connection=conn, ignore_result=True, **(options or {})
            )

    def broker(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url(0))

    def close(self) -> None:
        for proc in (self.worker, self.exporter):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        self.notify.close()
        self.redis.stop()


@pytest.fixture(scope="module")
def stack(database: Any, redis_server: RedisServer) -> Iterator[Stack]:
    stack = Stack()
    try:
        stack.notify.wait("READY=1", 30)
        stack.wait_value("celery_exporter_events_connected", 1)
        stack.start_worker()
        # Its heartbeats reach the exporter: the events flow from the worker (and will from us).
        stack.wait_value("celery_worker_up", 1, timeout=60, hostname=NODE)
        yield stack
    finally:
        stack.close()


@pytest.mark.parametrize(
    ("env", "variable"),
    [({"APP_EXPORTER_PASSWORD": ""}, "APP_EXPORTER_PASSWORD"), ({"APP_EXPORTER_PORT": "x"}, "")],
)
def test_refuses_to_start_without_a_password_or_with_a_bad_setting(
    env: dict[str, str], variable: str
) -> None:
    variable = variable or next(iter(env))
    done = subprocess.run(
        [sys.executable, "-m", "app.exporter"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV, "APP_EXPORTER_PASSWORD": "set", **env},
        cwd=ROOT,
    )
    assert done.returncode != 0
    assert variable in done.stderr, done.stderr


def envelope(events: Any, routing_key: str = "task.multi", **fields: Any) -> bytes:
    """A message as kombu's Redis transport publishes it on the event channel (what the
    exporter reads there: the other tests send real ones)."""
    body = base64.b64encode(json.dumps(events).encode()).decode()
    message = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": "w@h"},
        "properties": {
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "body_encoding": "base64",
        },
        **fields,
    }
    return json.dumps(message).encode()


def test_decode_events_reads_one_event_or_a_workers_buffered_list() -> None:
    one = {"type": "task-sent", "uuid": "a"}
    assert exporter_module.decode_events(envelope(one, "task.sent")) == [one]
    two = [{"type": "task-received", "uuid": "a"}, {"type": "task-started", "uuid": "a"}, 3]
    assert exporter_module.decode_events(envelope(two)) == two[:2]  # a non-event is dropped
    plain = json.loads(envelope(one))
    plain["body"], plain["properties"] = json.dumps(one), {}  # no body_encoding: JSON as is
    assert exporter_module.decode_events(json.dumps(plain).encode()) == [one]
    with pytest.raises(ValueError, match="content-type 'application/x-python-serialize'"):
        exporter_module.decode_events(
            envelope(one, **{"content-type": "application/x-python-serialize"})
        )


def test_the_event_topic_is_kombus_fanout_and_odd_options_stop_the_start() -> None:
    from celery import Celery

    app = Celery("t", set_as_current=False)
    assert exporter_module.events_topic(app, 0) == "/0.celeryev/*"
    assert exporter_module.events_topic(app, 3) == "/3.celeryev/*"
    app.conf.broker_transport_options = {"fanout_prefix": "x", "visibility_timeout": 1}
    with pytest.raises(SystemExit, match="fanout_prefix"):
        exporter_module.events_topic(app, 0)


def test_an_instance_is_up_for_two_heartbeat_periods_then_down() -> None:
    beats = exporter_module.Beats(freq=2.0, last=100.0)
    assert beats.up(100.0) and beats.up(103.9)
    assert not beats.up(104.0)
    assert not exporter_module.Beats().up(0.0)  # never heard, or said goodbye: down


def test_a_tasks_name_and_queue_are_kept_until_its_end_and_no_longer() -> None:
    """Real events through on_message into a real registry: the queue of task-sent labels the
    worker's events; a task's entry goes at its end; one never sent (before the exporter
    started) takes its route; the dict is bounded even when ends never come."""
    from prometheus_client import generate_latest

    from app.settings import get_settings

    x = exporter_module.Exporter(celery_app, get_settings())
    sent = {"type": "task-sent", "uuid": "a", "name": "ops.probe", "queue": "pricing"}
    x.on_message(envelope({**sent, "hostname": "gen42@producer"}, "task.sent"))
    x.on_message(envelope([
        {"type": "task-received", "uuid": "a", "name": "ops.probe", "hostname": "w@h"},
        {"type": "task-started", "uuid": "a", "hostname": "w@h"},
        {"type": "task-succeeded", "uuid": "a", "hostname": "w@h", "runtime": 0.2},
        {"type": "task-started", "uuid": "b", "hostname": "w@h"},  # its sent never seen
        {"type": "task-failed", "uuid": "c", "name": "data.x", "hostname": "w@h",
         "exception": "KeyError('secret')"},
    ]))  # fmt: skip
    x.on_message(b"not json")  # skipped with a log line, nothing else
    text = generate_latest(x.registry).decode()
    assert (
        'celery_task_sent_total{hostname="producer",name="ops.probe",queue_name="pricing"} 1.0'
        in text
    )
    assert (
        'celery_task_succeeded_total{hostname="w@h",name="ops.probe",queue_name="pricing"} 1.0'
        in text
    )
    assert (
        'celery_task_runtime_count{hostname="w@h",name="ops.probe",queue_name="pricing"} 1.0'
        in text
    )
    assert (
        'celery_task_started_total{hostname="w@h",name="unknown",queue_name="unknown"} 1.0' in text
    )
    failed = 'exception="KeyError",hostname="w@h",name="data.x",queue_name="data_processing"'
    assert f"celery_task_failed_total{{{failed}}} 1.0" in text
    assert "secret" not in text
    x.on_event({"type": "task-rejected", "uuid": "b", "hostname": "w@h", "requeue": True})
    assert set(x.tasks) == {"b"}  # a and c ended; b given back to its queue has not
    for n in range(exporter_module.MAX_TASKS_IN_MEMORY + 5):
        x.on_event({"type": "task-received", "uuid": f"t{n}", "name": "ops.probe"})
    assert len(x.tasks) == exporter_module.MAX_TASKS_IN_MEMORY
    assert "b" not in x.tasks and "t0" not in x.tasks  # the oldest in flight went first


def test_ready_and_basic_auth(stack: Stack) -> None:
    status, headers, _ = get(stack.url("/metrics"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic "), headers
    assert get(stack.url("/metrics"), (USER, "wrong"))[0] == 401
    assert get(stack.url("/metrics"), ("someone", PASSWORD))[0] == 401
    status, headers, text = get(stack.url("/metrics"), (USER, PASSWORD))
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version="), headers
    assert "celery_exporter_broker_up 1.0" in text
    status, _, text = get(stack.url("/healthz"))  # no credentials needed
    assert (status, text) == (200, "ok\n")
    assert get(stack.url("/other"), (USER, PASSWORD))[0] == 404
    stack.notify.wait("WATCHDOG=1", 10)


def test_task_counters_and_runtime(stack: Stack) -> None:
    def now(metric: str, /, **labels: str) -> float:
        return stack.value(metric, **labels) or 0.0

    failed = {**PROBE, "exception": "ValidationError"}
    before = {
        "sent": now("celery_task_sent_total", **SENT),
        "received": now("celery_task_received_total", **PROBE),
        "started": now("celery_task_started_total", **PROBE),
        "succeeded": now("celery_task_succeeded_total", **PROBE),
        "failed": now("celery_task_failed_total", **failed),
        "retried": now("celery_task_retried_total", **PROBE),
        "runtime": now("celery_task_runtime_count", **PROBE),
    }
    for _ in range(3):
        stack.send("ops.probe", uuid.uuid4().hex, sleep_seconds=0.05)
    stack.send("ops.probe", "bad", sleep_seconds=-1)  # ValidationError: fails at once
    stack.send("ops.probe", uuid.uuid4().hex, fail_times=1)  # retried once (1-2 s), then done
    stack.wait_value("celery_task_succeeded_total", before["succeeded"] + 4, **PROBE)
    stack.wait_value("celery_task_failed_total", before["failed"] + 1, **failed)
    assert now("celery_task_retried_total", **PROBE) == before["retried"] + 1
    # 5 messages of ours and the retry's (sent by the worker); each received and started.
    assert now("celery_task_sent_total", **SENT) == before["sent"] + 6
    assert now("celery_task_received_total", **PROBE) == before["received"] + 6
    assert now("celery_task_started_total", **PROBE) == before["started"] + 6
    assert now("celery_task_runtime_count", **PROBE) == before["runtime"] + 4
    assert now("celery_task_runtime_bucket", **PROBE, le="0.001") < now(
        "celery_task_runtime_bucket", **PROBE, le="+Inf"
    )  # 50 ms tasks land above the first bucket
    # The exception's class only, never its message.
    samples = stack.scrape()
    labels = [dict(lbl) for (n, lbl) in samples if n == "celery_task_failed_total"]
    assert {lbl["exception"] for lbl in labels} == {"ValidationError"}, labels
    assert stack.value("celery_worker_tasks_active", hostname=NODE) is not None


def test_queue_length_and_oldest_message_age(stack: Stack) -> None:
    """Nobody consumes `pricing` or `notifications`: what is pushed stays, and ages."""
    broker = stack.broker()
    stack.send("pricing.nobody_runs_this", options={"queue": "pricing"})
    stack.send("pricing.nobody_runs_this", options={"queue": "pricing", "priority": 5})
    assert broker.llen("pricing") == 1 and broker.llen("pricing\x06\x163") == 1
    header = json.loads(broker.lindex("pricing", -1))["headers"]  # type: ignore[arg-type]
    assert abs(header[SENT_AT_HEADER] - time.time()) < 5, header  # stamped at publish
    # A message without the header (a producer without app.celery_app): counted, no age.
    broker.lpush("notifications", json.dumps({"body": "", "headers": {"task": "x"}}))
    waited = 2.0
    time.sleep(waited)
    assert stack.value("celery_queue_length", queue_name="pricing") == 2
    assert waited <= stack.value("celery_queue_oldest_message_age_seconds", queue_name="pricing")
    assert stack.value("celery_queue_oldest_message_age_seconds", queue_name="pricing") < 30
    assert stack.value("celery_queue_length", queue_name="notifications") == 1
    assert stack.value("celery_queue_oldest_message_age_seconds", queue_name="notifications") == 0
    for queue in QUEUES:  # every queue, empty ones too
        assert stack.value("celery_queue_length", queue_name=queue) is not None


def test_beat_records_each_send(stack: Stack) -> None:
    """Beat for real (every entry every second here), logged in as the redis role's `beat` user
    (its rules, from roles/redis/defaults/main.yml, applied to this Redis): its sends land in the
    queues and the broker's hash, with no command refused, and the exporter shows them, with the
    periods of the real schedule (the exporter's own). The same login is refused the rest."""
    broker = stack.broker()
    password = secrets.token_hex(16)
    apply_role_acl(broker, "beat", password)
    started = time.time()
    beat = subprocess.Popen(
        [
            str(os.path.join(os.path.dirname(sys.executable), "celery")),
            "-A",
            "app.celery_app",
            "beat",
            "-s",
            str(WORK / f"exporter-beat-{uuid.uuid4().hex[:6]}"),
            "--loglevel",
            "INFO",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(WORK / "exporter-beat.log").open("ab"),
        env={
            **stack.env,
            "APP_BEAT_INTERVAL_OVERRIDE": "1",
            "APP_REDIS_USERNAME": "beat",
            "APP_REDIS_PASSWORD": password,
        },
        cwd=ROOT,
    )
    try:
        # Beat's start (imports, its schedule file) is most of the wait: a busy machine slows it.
        wait_for(lambda: broker.hexists(BEAT_LAST_SENT_KEY, "check-system-health"), 90, "a send")
        # Two ticks later, every entry has been sent through the same login.
        schedule = celery_app.conf.beat_schedule
        wait_for(lambda: broker.hlen(BEAT_LAST_SENT_KEY) >= len(schedule), 60, "every entry")
    finally:
        beat.terminate()
        beat.wait(30)
    assert acl_refusals(broker, "beat") == []
    as_beat = redis.Redis(
        host="127.0.0.1", port=stack.redis.port, username="beat", password=password
    )
    assert_refused(
        as_beat,
        ("PUBLISH", "/0.celery.pidbox", "x"),
        ("RPOP", "maintenance"),
        ("DEL", "default"),
        ("SCAN", "0"),
        ("GET", "celery-task-meta-x"),
        ("HSET", "health:incident", "x", "1"),
        ("HGETALL", "unacked"),
        ("FLUSHDB",),
    )
    broker.execute_command("ACL", "DELUSER", "beat")
    recorded = float(broker.hget(BEAT_LAST_SENT_KEY, "check-system-health"))  # type: ignore[arg-type]
    assert started <= recorded <= time.time()
    entry = {"entry": "check-system-health", "task": "maintenance.check_system_health"}
    assert stack.value("celery_beat_entry_last_sent_timestamp_seconds", **entry) == recorded
    assert stack.value("celery_beat_entry_period_seconds", **entry) == 300
    daily = {"entry": "generate-daily-reports", "task": "data.generate_daily_reports"}
    assert stack.value("celery_beat_entry_period_seconds", **daily) == 86400  # a crontab
    broker.hset(BEAT_LAST_SENT_KEY, "no-such-entry", time.time())  # not in the schedule
    assert (
        stack.value("celery_beat_entry_last_sent_timestamp_seconds", entry="no-such-entry") is None
    )


def test_consumers_while_the_worker_runs_and_after_it_stops(stack: Stack) -> None:
    stack.wait_value("celery_active_consumer_count", 1, queue_name="default")
    assert stack.value("celery_active_consumer_count", queue_name="pricing") == 0
    assert stack.value("celery_worker_consuming", hostname=NODE, queue_name="default") == 1
    assert stack.worker is not None
    stack.worker.send_signal(signal.SIGTERM)
    assert stack.worker.wait(30) == 0
    stack.wait_value("celery_active_consumer_count", 0, queue_name="default")
    # Seen once, now silent: 0, not gone; and down (its worker-offline event).
    assert stack.value("celery_worker_consuming", hostname=NODE, queue_name="default") == 0
    stack.wait_value("celery_worker_up", 0, hostname=NODE)
    assert stack.value("celery_worker_tasks_active", hostname=NODE) == 0
    # It said goodbye (a clean stop, as when it leaves the inventory): forgotten after
    # APP_EXPORTER_FORGET_AFTER, so no alert stays on an instance that no longer exists.
    wait_for(
        lambda: stack.value("celery_worker_up", hostname=NODE) is None,
        FORGET_AFTER + 15,
        "the stopped instance forgotten",
    )
    assert stack.value("celery_worker_consuming", hostname=NODE) is None
    assert stack.value("celery_active_consumer_count", queue_name="default") == 0


def test_a_worker_killed_without_goodbye_reads_down_after_two_heartbeats(stack: Stack) -> None:
    """SIGKILL (no worker-offline event): down once two heartbeat periods (2 s each) pass."""
    stack.start_worker()
    stack.wait_value("celery_worker_up", 1, timeout=60, hostname=NODE)
    assert stack.worker is not None
    os.killpg(stack.worker.pid, signal.SIGKILL)
    stack.worker.wait(30)
    killed = time.monotonic()
    stack.wait_value("celery_worker_up", 0, timeout=20, hostname=NODE)
    assert time.monotonic() - killed >= 2  # not before its last heartbeat can have expired
    assert stack.value("celery_worker_tasks_active", hostname=NODE) == 0


def test_a_frozen_broker_is_noticed_by_the_event_receiver(stack: Stack) -> None:
    """SIGSTOP on Redis: the connection stays open and silent (as in a partition). The receiver's
    PING goes unanswered: disconnected within EVENTS_SILENT_MAX plus a PING period; SIGCONT:
    connected again, and events count again."""
    assert stack.redis.proc is not None
    stack.wait_value("celery_exporter_events_connected", 1)
    stack.redis.proc.send_signal(signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        healthz = lambda: get(stack.url("/healthz"))[2]  # noqa: E731
        wait_for(lambda: "events not connected" in healthz(), 40, "events disconnected")
        assert time.monotonic() - frozen >= exporter_module.EVENTS_PING_AFTER
    finally:
        stack.redis.proc.send_signal(signal.SIGCONT)
    stack.wait_value("celery_exporter_events_connected", 1, timeout=40)
    before = stack.value("celery_task_sent_total", **SENT) or 0.0
    stack.send("ops.probe", uuid.uuid4().hex)  # nobody consumes it: sent, counted
    stack.wait_value("celery_task_sent_total", before + 1, **SENT)


def test_a_broker_frozen_under_load_loses_no_task_and_undercounts_only_its_return(
    stack: Stack,
) -> None:
    """Live load (a producer sending probes at ~20/s, the worker consuming them) across a SIGSTOP
    of Redis held FROZEN_HOLD s past the receiver's declaring it lost (its backoff at its cap),
    then SIGCONT. Counted: sent, completed, lost, run twice, the receiver's time back, the
    succeeded events counted and missed. Pub/sub keeps nothing for a client not subscribed:
    what the exporter may miss is bounded by the tasks that finished between the freeze and its
    subscription again; everything after is counted, no task is lost, and the gauge said it was
    blind meanwhile."""
    if stack.worker is None or stack.worker.poll() is not None:  # an earlier test killed it
        stack.start_worker()
    stack.wait_value("celery_worker_up", 1, timeout=60, hostname=NODE)
    stack.wait_value("celery_exporter_events_connected", 1)
    assert stack.redis.proc is not None

    def succeeded_when_still() -> float:
        """The succeeded counter once it stands still for 3 s (every event in)."""
        last = stack.value("celery_task_succeeded_total", **PROBE)
        for _ in range(20):
            time.sleep(3)
            now = stack.value("celery_task_succeeded_total", **PROBE)
            if now == last:
                break
            last = now
        return last or 0.0

    # What earlier tests left in the queue is done first: only this test's probes are counted.
    stack.wait_value("celery_queue_length", 0, timeout=60, queue_name="default")
    prefix = f"freeze-{uuid.uuid4().hex[:8]}-"
    before = succeeded_when_still()
    sent: list[str] = []
    unconfirmed: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            token = f"{prefix}{n}"
            n += 1
            try:
                stack.send("ops.probe", token)
                sent.append(token)
            except Exception:  # the frozen broker timed the send out: maybe queued, maybe not
                unconfirmed.append(token)
            time.sleep(0.05)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        time.sleep(3)
        frozen_at = datetime.now(UTC)
        stack.redis.proc.send_signal(signal.SIGSTOP)
        try:
            healthz = lambda: get(stack.url("/healthz"))[2]  # noqa: E731
            wait_for(lambda: "events not connected" in healthz(), 40, "events disconnected")
            time.sleep(FROZEN_HOLD)  # the receiver retries meanwhile, its backoff at its cap
        finally:
            stack.redis.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        stack.wait_value("celery_exporter_events_connected", 1, timeout=30)
        back_s = time.monotonic() - resumed
        back_at = datetime.now(UTC)
        at_back = stack.value("celery_task_succeeded_total", **PROBE) or 0.0
        time.sleep(5)  # load after the return: counted again
    finally:
        stop.set()
        producer.join(60)

    def rows() -> list[TaskProbe]:
        with session_scope() as s:
            found = list(s.scalars(select(TaskProbe).where(TaskProbe.token.startswith(prefix))))
            s.expunge_all()
            return found

    confirmed = set(sent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the backlog drains (a loss is counted, not raised)
        if confirmed <= {r.token for r in rows() if r.completions}:
            break
        time.sleep(1)
    done = rows()
    last = succeeded_when_still()
    counted = last - before
    completed = sum(1 for r in done if r.completions)
    lost = len(confirmed - {r.token for r in done if r.completions})
    twice = sum(1 for r in done if r.runs > 1)

    def finished(since: datetime, until: datetime | None = None) -> int:
        return sum(
            1
            for r in done
            if r.completed_at is not None
            and since <= r.completed_at
            and (until is None or r.completed_at <= until)
        )

    # A task's event follows its commit by milliseconds: half a second of slack either side.
    slack = timedelta(seconds=0.5)
    window = finished(frozen_at - slack, back_at + slack)
    after = finished(back_at + slack)
    missed = completed - counted
    summary = (
        f"sent {len(sent)} (+{len(unconfirmed)} unconfirmed), completed {completed}, lost "
        f"{lost}, run twice {twice}, receiver back {back_s:.1f} s after SIGCONT, counted "
        f"{counted:.0f}, missed {missed:.0f} (finished around the outage: {window}; after the "
        f"return {after}, counted then {last - at_back:.0f})"
    )
    print(f"\nfrozen broker under load: {summary}")
    assert (lost, twice) == (0, 0), summary
    # Back within its 2 s retry cap and a little (an attempt on a frozen Redis ends when it
    # answers); with the former 10 s cap: 8.6 s, and 151 of 293 succeeded events missed.
    assert back_s <= BACK_WITHIN_S, summary
    assert last - at_back >= after > 0, summary  # counted again after the return
    assert missed <= window, summary


def test_the_exporters_redis_login_is_enough_and_no_more(stack: Stack) -> None:
    """Every test above ran with the exporter logged in as the redis role's `celery_exporter`
    user: nothing it did was refused. The same login cannot queue, take or delete a task,
    read a result or another hash, scan, or flush."""
    assert acl_refusals(stack.broker(), "celery_exporter") == []
    login = redis.Redis(
        host="127.0.0.1",
        port=stack.redis.port,
        username="celery_exporter",
        password=stack.exporter_password,
    )
    assert_refused(
        login,
        ("LPUSH", "pricing", "x"),
        ("BRPOP", "pricing", "1"),
        ("RPOP", "default"),
        ("DEL", "default"),
        ("GET", "celery-task-meta-x"),
        ("HGETALL", "unacked"),
        ("SET", "health:incident", "x"),
        ("PUBLISH", "/0.celeryev/task.sent", "{}"),
        ("SCAN", "0"),
        ("FLUSHDB",),
    )


def test_broker_down_reported_then_reconnected(stack: Stack) -> None:
    stack.redis.stop()
    wait_for(lambda: get(stack.url("/healthz"))[0] == 503, 15, "healthz 503")
    _, _, text = get(stack.url("/healthz"))
    assert "broker does not answer" in text, text
    started = time.monotonic()
    assert stack.value("celery_exporter_broker_up") == 0  # a scrape still answers, at once
    assert time.monotonic() - started < 5
    stack.wait_value("celery_exporter_events_connected", 0)
    assert stack.value("celery_queue_length", queue_name="default") is None  # unknown, not 0
    assert stack.exporter.poll() is None  # never exits
    stack.start_redis()  # the same port and password
    wait_for(lambda: get(stack.url("/healthz"))[0] == 200, 30, "healthz 200 again")
    assert stack.value("celery_exporter_broker_up") == 1


def test_sigterm_stops_it_cleanly(stack: Stack) -> None:
    stack.exporter.send_signal(signal.SIGTERM)
    stack.notify.wait("STOPPING=1", 10)  # read as it comes: systemd's socket never fills up
    assert stack.exporter.wait(10) == 0


def test_https_requires_a_client_certificate_for_clients(stack: Stack, tmp_path: Any) -> None:
    """As deployed (roles/celery_exporter): HTTPS, a client certificate of the CA with clientAuth
    required, basic auth on top. No certificate, or a server's (no clientAuth): refused in the
    handshake, and the exporter keeps serving; Prometheus's certificate and login: 200."""
    import ssl

    certificates(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.exporter"],
        stdout=subprocess.DEVNULL,
        stderr=(WORK / "exporter-tls.log").open("ab"),
        env={
            **stack.env,
            "APP_EXPORTER_PORT": str(port),
            "APP_EXPORTER_TLS_CERT": str(tmp_path / "server.crt"),
            "APP_EXPORTER_TLS_KEY": str(tmp_path / "server.key"),
            "APP_EXPORTER_TLS_CLIENT_CA": str(tmp_path / "ca.crt"),
        },
        cwd=ROOT,
        start_new_session=True,
    )

    def fetch(cert: str | None) -> int | str:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        if cert:
            ctx.load_cert_chain(tmp_path / f"{cert}.crt", tmp_path / f"{cert}.key")
        request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, context=ctx, timeout=10) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code
        except (OSError, ssl.SSLError) as err:
            return f"refused: {type(err).__name__}"

    try:
        wait_for(lambda: fetch("prometheus") == 200, 30, "the exporter serving HTTPS")
        assert str(fetch(None)).startswith("refused")
        assert str(fetch("worker")).startswith("refused")
        assert fetch("prometheus") == 200
        # Plain HTTP to the TLS port gets nothing.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
