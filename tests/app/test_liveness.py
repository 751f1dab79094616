"""sd_notify from a real worker (app/liveness.py): READY once consuming, WATCHDOG only while alive,
STATUS, STOPPING; and the stop guard: a task still running after the grace goes back to its queue
at once. The socket is a real AF_UNIX datagram socket, as systemd's is (NOTIFY_SOCKET)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ENV, ROOT, WORK, taskctl, worker_argv
from services import RedisServer, certificates, free_port, wait_for
from test_worker_lifecycle import counts

from app import health, liveness
from app.celery_app import celery_app

BROKER_DB, RESULT_DB = 6, 7


class NotifySocket:
    """What systemd's notify socket would receive, message by message."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait(self, what: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.drain():
                if what in message:
                    return message
        raise AssertionError(f"no {what!r} in {timeout} s; got {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class NotifiedWorker:
    def __init__(
        self, redis_server: RedisServer, pool: str, grace: int, extra_env: dict[str, str]
    ) -> None:
        self.redis = redis_server
        self.notify = NotifySocket(WORK / f"notify-{pool}.sock")
        self.env = {
            **os.environ,
            **ENV,
            "APP_BROKER_URL": redis_server.url(BROKER_DB),
            "APP_RESULT_BACKEND": redis_server.url(RESULT_DB),
            "APP_WORKER_SOFT_SHUTDOWN_TIMEOUT": str(grace),
            "NOTIFY_SOCKET": str(self.notify.path),
            "WATCHDOG_USEC": "2000000",  # the watchdog thread then reports every 0.5 s
            **extra_env,
        }
        argv = worker_argv(f"live-{pool}", 2, "--without-mingle")
        argv[argv.index("-P") + 1] = pool
        self.log = WORK / f"live-{pool}-{uuid.uuid4().hex[:6]}.log"
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )

    def send_probe(self, token: str, sleep: float) -> None:
        with celery_app.connection_for_write(self.redis.url(BROKER_DB)) as conn:
            celery_app.send_task("ops.probe", [token], {"sleep_seconds": sleep}, connection=conn)

    def queued(self, queue: str) -> int:
        client = redis.Redis.from_url(self.redis.url(BROKER_DB))
        return int(client.llen(queue))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.notify.close()


@pytest.fixture
def notified(database: Any, redis_server: RedisServer) -> Iterator[Any]:
    started: list[NotifiedWorker] = []

    def start(pool: str, grace: int = 30, **env: str) -> NotifiedWorker:
        redis.Redis.from_url(redis_server.url(BROKER_DB)).flushdb()
        worker = NotifiedWorker(redis_server, pool, grace, env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def test_ready_status_and_watchdog_only_while_alive(notified: Any) -> None:
    worker = notified("prefork")
    ready = worker.notify.wait("READY=1", 90)
    assert "STATUS=consuming " in ready and "default" in ready, ready
    status = worker.notify.wait("WATCHDOG=1", 10)
    assert "STATUS=consuming data_processing,default,maintenance,notifications,pricing" in status
    # SIGSTOP of the main process: not one WATCHDOG=1 while it is stopped.
    os.kill(worker.proc.pid, signal.SIGSTOP)
    time.sleep(0.5)
    worker.notify.drain()
    seen = len(worker.notify.messages)
    time.sleep(4)
    assert not [m for m in worker.notify.drain()[seen:] if "WATCHDOG=1" in m]
    # Stopped longer than a stamp may be old (liveness.LOOP_STALE_AFTER), then resumed: fed
    # again, and never called dead for the pause (its loop could not stamp while it was stopped;
    # the bench's freezes had a healthy exporter killed that way).
    time.sleep(liveness.LOOP_STALE_AFTER + 1 - 4.5)
    seen = len(worker.notify.drain())
    os.kill(worker.proc.pid, signal.SIGCONT)
    worker.notify.wait("WATCHDOG=1", 10)
    called_dead = [m for m in worker.notify.messages[seen:] if "not alive" in m]
    assert not called_dead, worker.notify.messages[seen:]
    # systemctl stop: STOPPING=1, then the process exits on its own.
    worker.proc.send_signal(signal.SIGTERM)
    worker.notify.wait("STOPPING=1", 10)
    assert worker.proc.wait(60) == 0


def test_watchdog_stops_when_the_broker_hangs(notified: Any, redis_server: RedisServer) -> None:
    """The broker hangs (SIGSTOP of redis-server): the watchdog is not fed until it answers."""
    worker = notified("threads")
    worker.notify.wait("WATCHDOG=1", 90)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        message = worker.notify.wait("STATUS=not alive: ", 15)
        assert "broker does not answer" in message or "event loop silent" in message, message
        seen = len(worker.notify.drain())
        time.sleep(3)
        assert not [m for m in worker.notify.drain()[seen:] if "WATCHDOG=1" in m]
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    worker.notify.wait("WATCHDOG=1", 60)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_stop_requeues_a_task_still_running_after_the_grace(notified: Any, pool: str) -> None:
    """SIGTERM during a 60 s task with a 3 s grace: the worker exits within seconds and the
    message is back in its queue at once (not after the visibility timeout); never completed."""
    worker = notified(pool, grace=3, APP_UNACKED_KEY=f"unacked:live-{pool}")
    worker.notify.wait("READY=1", 90)
    token = uuid.uuid4().hex
    worker.send_probe(token, sleep=60)
    wait_for(lambda: counts(token) == (1, 0), 30, "probe started")
    assert worker.queued("default") == 0
    # Recorded in the instance's own unacked hash, which the health count finds.
    broker = redis.Redis.from_url(worker.redis.url(BROKER_DB))
    assert broker.hlen(f"unacked:live-{pool}") == 1 and not broker.exists("unacked")
    assert health.unacked_count(broker) == 1
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    took = time.monotonic() - started
    assert 3 <= took < 15, took
    assert worker.queued("default") == 1  # back at the head of its queue
    assert broker.hlen(f"unacked:live-{pool}") == 0
    assert counts(token) == (1, 0)  # the first run was stopped, not completed


def test_a_full_broker_loses_no_message_and_wedges_no_worker(
    notified: Any, redis_server: RedisServer
) -> None:
    """Redis at maxmemory (noeviction) while a consumer pops: the message is held and recorded
    once writes are accepted again; the worker keeps its watchdog fed and says why; all complete."""
    worker = notified("prefork")
    worker.notify.wait("WATCHDOG=1", 90)
    tokens = [uuid.uuid4().hex for _ in range(20)]
    admin = redis.Redis.from_url(redis_server.url(0))
    os.kill(worker.proc.pid, signal.SIGSTOP)  # its BRPOP is already waiting at Redis
    try:
        for token in tokens:
            worker.send_probe(token, sleep=0.1)
        admin.config_set("maxmemory", "1")  # every write refused from now: OOM
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    try:
        held = worker.notify.wait("broker full (OOM): holding 1 message", 20)
        assert held
        time.sleep(8)  # longer than the loop's staleness bound: still fed, not wedged
        messages = worker.notify.drain()
        assert any("WATCHDOG=1" in m for m in messages[-8:]), messages[-8:]
    finally:
        admin.config_set("maxmemory", "0")
    wait_for(
        lambda: all(counts(t) == (1, 1) for t in tokens), 90, "every probe completed", interval=0.5
    )
    assert worker.proc.poll() is None  # the same process consumed on


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_tasks_ending_while_the_broker_is_full_are_acked_and_free_their_slot(
    notified: Any, redis_server: RedisServer, pool: str
) -> None:
    """Tasks that complete while Redis refuses writes (their results too) are acked all the same
    — gone from the instance's unacked hash at once, never run a second time — and free their
    pool slot: once memory is freed the instance consumes on (threads: it used to wedge)."""
    worker = notified(pool, APP_UNACKED_KEY=f"unacked:full-ack-{pool}")
    worker.notify.wait("READY=1", 90)
    tokens = [uuid.uuid4().hex for _ in range(2)]  # one per slot (concurrency 2)
    for token in tokens:
        worker.send_probe(token, sleep=3)
    wait_for(lambda: all(counts(t) == (1, 0) for t in tokens), 30, "probes started")
    broker = redis.Redis.from_url(worker.redis.url(BROKER_DB))
    assert broker.hlen(f"unacked:full-ack-{pool}") == 2
    admin = redis.Redis.from_url(redis_server.url(0))
    admin.config_set("maxmemory", "1")  # every write refused from now: OOM
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            broker.set("full-ack-probe", "x")  # the fault is in place
        wait_for(lambda: all(counts(t) == (1, 1) for t in tokens), 30, "probes completed")
        wait_for(lambda: broker.hlen(f"unacked:full-ack-{pool}") == 0, 10, "acked while full")
        assert broker.zcard(f"unacked:full-ack-{pool}_index") == 0
    finally:
        admin.config_set("maxmemory", "0")
    after = uuid.uuid4().hex
    worker.send_probe(after, sleep=0)
    wait_for(lambda: counts(after) == (1, 1), 30, "a probe after memory was freed")
    worker.notify.wait(", 0 active,", 10)
    assert worker.proc.poll() is None


def test_taskctl_names_a_full_broker(redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url(0))
    env = {"APP_BROKER_URL": redis_server.url(BROKER_DB)}
    admin.config_set("maxmemory", "1")
    try:
        proc = taskctl("submit", "ops.probe", "--args", '["x"]', env=env)
    finally:
        admin.config_set("maxmemory", "0")
    assert proc.returncode == 1
    assert "the broker is full: Redis is at its maxmemory" in proc.stderr, proc.stderr


def test_taskctl_names_a_broker_that_cannot_save() -> None:
    """A broker that cannot write to disk refuses writes with MISCONF; taskctl says why. On a
    Redis of its own (every client of a refusing server gets it): its snapshot fails for real,
    its file being a directory, with stop-writes-on-bgsave-error on."""
    server = RedisServer(
        WORK / f"misconf-{uuid.uuid4().hex[:6]}",
        extra_args=("--enable-protected-configs", "yes", "--save", "3600 1"),
    )
    server.start()
    try:
        admin = redis.Redis.from_url(server.url(0))
        (server.directory / "blocked.rdb").mkdir()
        admin.config_set("stop-writes-on-bgsave-error", "yes")
        admin.config_set("dbfilename", "blocked.rdb")
        admin.bgsave()
        wait_for(
            lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 20, "a failure"
        )
        proc = taskctl(
            "submit", "ops.probe", "--args", '["x"]', env={"APP_BROKER_URL": server.url(0)}
        )
    finally:
        # SIGTERM would make it save first, which fails here, and it would refuse to exit.
        with contextlib.suppress(redis.exceptions.ConnectionError):
            redis.Redis.from_url(server.url(0)).shutdown(nosave=True)
        server.stop()
    assert proc.returncode == 1
    assert "Redis cannot write its data to disk" in proc.stderr, proc.stderr


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_soft_time_limit_holds_on_every_pool(notified: Any, pool: str) -> None:
    """The instance's soft limit stops the task on each pool shipped (on threads, where Celery
    enforces none, app.threadlimits raises it in the task's thread): FAILURE, never completed.
    The producer here has every task module loaded: its own limits must not reach the message."""
    celery_app.loader.import_default_modules()
    assert celery_app.tasks["ops.probe"].soft_time_limit is None
    worker = notified(pool, APP_TASK_SOFT_TIME_LIMIT="2", APP_TASK_TIME_LIMIT="60")
    worker.notify.wait("READY=1", 90)
    token = uuid.uuid4().hex
    worker.send_probe(token, sleep=20)
    wait_for(lambda: counts(token) == (1, 0), 30, "probe started")
    started = time.monotonic()
    try:
        wait_for(
            # Celery's own failure line (on prefork the main process writes it after the child's).
            lambda: "raised unexpected: SoftTimeLimitExceeded" in worker.log.read_text(),
            10,
            "the soft limit",
            interval=0.2,
        )
    except TimeoutError:
        text = worker.log.read_text()
        raise AssertionError(text[:4000] + "\n...\n" + text[-1500:]) from None
    assert time.monotonic() - started < 5
    text = worker.log.read_text()
    assert "raised unexpected: SoftTimeLimitExceeded" in text
    assert ("soft_time_limit_exceeded" in text) == (pool == "threads")
    time.sleep(20)
    assert counts(token) == (1, 0)  # stopped, never completed
    worker.notify.wait("WATCHDOG=1", 5)  # the instance itself is fine


def flower_get(port: int, path: str, ca: str, source: str, login: str | None = None) -> int:
    """Status of an HTTPS GET to Flower on 127.0.0.2 from the address `source`, verified."""
    context = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(
        "127.0.0.2", port, timeout=10, context=context, source_address=(source, 0)
    )
    headers = {}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_flower_ready_once_it_serves_and_fed_only_while_the_broker_answers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """`python -m app.flower_service` (flower.service): HTTPS with two named logins; READY=1 once
    its web server answers, WATCHDOG=1 while /healthcheck and the broker answer, none while the
    broker hangs. /healthcheck answers without a login to its own address only, /metrics never."""
    notify = NotifySocket(WORK / "notify-flower.sock")
    port = free_port()
    tls = certificates(tmp_path, addresses=("127.0.0.2",))
    env = {
        **os.environ,
        **ENV,
        "APP_BROKER_URL": redis_server.url(BROKER_DB),
        "FLOWER_ADDRESS": "127.0.0.2",
        "FLOWER_PORT": str(port),
        "FLOWER_BASIC_AUTH": "admin:first-password-1,ops:second-password-2",
        "FLOWER_CERTFILE": str(tmp_path / "server.crt"),
        "FLOWER_KEYFILE": str(tmp_path / "server.key"),
        "APP_FLOWER_CA": tls["ca"],
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "2000000",
    }
    log = WORK / f"flower-{uuid.uuid4().hex[:6]}.log"
    proc = subprocess.Popen(
        [os.sys.executable, "-m", "app.flower_service"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        ready = notify.wait("READY=1", 90)
        assert f"STATUS=serving https://127.0.0.2:{port}/" in ready, ready
        ca = tls["ca"]
        # READY meant it; from the host's own address the health check needs no login.
        assert flower_get(port, "/healthcheck", ca, source="127.0.0.2") == 200
        # From anywhere else: a login, either of the two.
        assert flower_get(port, "/healthcheck", ca, source="127.0.0.3") == 401
        assert flower_get(port, "/healthcheck", ca, "127.0.0.3", "ops:second-password-2") == 200
        assert flower_get(port, "/metrics", ca, source="127.0.0.2") == 401
        assert flower_get(port, "/metrics", ca, "127.0.0.3", "admin:first-password-1") == 200
        assert flower_get(port, "/", ca, "127.0.0.3", "admin:second-password-2") == 401
        with pytest.raises(OSError):  # plain HTTP is no way in
            urllib.request.urlopen(f"http://127.0.0.2:{port}/healthcheck", timeout=5)
        notify.wait("WATCHDOG=1", 10)
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            message = notify.wait("STATUS=not alive: ", 15)
            assert "broker does not answer" in message, message
            seen = len(notify.drain())
            time.sleep(3)
            assert not [m for m in notify.drain()[seen:] if "WATCHDOG=1" in m]
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        notify.wait("WATCHDOG=1", 60)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        notify.close()
