"""Session fixtures: a real Redis, PostgreSQL, SMTP server, SMS gateway and Celery worker.

The APP_* environment is set here, at import, before any test module imports `app`, so the
test process and the worker subprocess share one configuration.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from services import PostgresServer, RedisServer, SmtpServer, free_port, wait_for

from app import queues as app_queues  # the queue contract only: reads no settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUEUES = ",".join(app_queues.QUEUES)
WORK = Path(tempfile.mkdtemp(prefix="app-tests-", dir="/tmp"))
WORK.chmod(0o755)  # PostgreSQL runs as `nobody` under root and must reach its directory

REDIS = RedisServer(WORK / "redis")
POSTGRES = PostgresServer(WORK / "pg")
SMTP = SmtpServer()
SMS_PORT = free_port()
DB_NAME = "app"

ENV = {
    "APP_BROKER_URL": REDIS.url(0),
    "APP_RESULT_BACKEND": REDIS.url(1),
    "APP_DATABASE_URL": (
        f"postgresql+psycopg://app:{POSTGRES.password}@127.0.0.1:{POSTGRES.port}/{DB_NAME}"
    ),
    "APP_SMTP_HOST": "127.0.0.1",
    "APP_SMTP_PORT": str(SMTP.port),
    "APP_MAIL_FROM": "quotes@bundle.test",
    "APP_ALERT_RECIPIENTS": "ops@bundle.test,devops@bundle.test",
    "APP_PROCUREMENT_RECIPIENTS": "procurement@bundle.test",
    "APP_SMS_GATEWAY_URL": f"http://127.0.0.1:{SMS_PORT}/messages",
    "APP_SMS_GATEWAY_TOKEN": "test-sms-token",
    "APP_REPORT_DIR": str(WORK / "reports"),
    "APP_BACKUP_DIR": str(WORK / "backups"),
    "APP_BACKUP_KEEP": "3",
    "APP_LOG_FORMAT": "json",
    "APP_LOG_LEVEL": "INFO",
    "APP_TASK_SOFT_TIME_LIMIT": "60",
    "APP_TASK_TIME_LIMIT": "90",
    "APP_VISIBILITY_TIMEOUT": "3600",
    "APP_TASK_MAX_DELIVERIES": "3",
    "APP_PROBE_FAULTS": "true",  # the fault tests use ops.probe's hooks
}
os.environ.update(ENV)
WORKER_LOG = WORK / "worker.log"  # stderr (the journal: startup errors only)
WORKER_FILE_LOG = WORK / "worker-file.log"  # --logfile (what /var/log/celery/NAME.log gets)


class SmsGateway:
    """A real HTTP SMS gateway: records requests; can answer 503 to the next N."""

    def __init__(self, port: int) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if gateway.fail_next > 0:
                    gateway.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                if self.headers.get("Authorization") != "Bearer test-sms-token":
                    self.send_response(401)
                    self.end_headers()
                    return
                gateway.requests.append({"path": self.path, **json.loads(body)})
                reply = json.dumps({"id": f"sms-{len(gateway.requests)}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def taskctl(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """taskctl as an operator runs it, with the tests' settings (and `env` over them)."""
    return subprocess.run(
        [str(BIN / "taskctl"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV, **(env or {})},
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    REDIS.directory.mkdir(parents=True, exist_ok=True)
    REDIS.start()
    yield REDIS
    REDIS.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    POSTGRES.start()
    POSTGRES.create_app_database(DB_NAME)
    yield POSTGRES
    from app import db

    db.dispose()
    POSTGRES.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    SMTP.start()
    yield SMTP
    SMTP.stop()


@pytest.fixture(scope="session")
def sms_gateway() -> Iterator[SmsGateway]:
    gateway = SmsGateway(SMS_PORT)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def database(postgres_server: PostgresServer) -> PostgresServer:
    """The migrated and seeded app database (through the CLI, as an operator would)."""
    for command in (("db", "migrate"), ("db", "seed")):
        done = taskctl(*command)
        assert done.returncode == 0, done.stderr
    return postgres_server


def _ping() -> bool:
    from app.celery_app import celery_app

    return bool(celery_app.control.ping(timeout=1.0))


def worker_argv(node: str, concurrency: int, *extra: str) -> list[str]:
    """A prefork worker on all five queues, node NODE@host: the tests' one worker command line."""
    return [
        str(BIN / "celery"),
        "-A",
        "app.celery_app",
        "worker",
        "-Q",
        QUEUES,
        "-P",
        "prefork",
        "-c",
        str(concurrency),
        "-n",
        f"{node}@%h",
        "--without-gossip",
        "--loglevel",
        "INFO",
        *extra,
    ]


@pytest.fixture(scope="session")
def worker(
    redis_server: RedisServer,
    database: PostgresServer,
    smtp_server: SmtpServer,
    sms_gateway: SmsGateway,
) -> Iterator[subprocess.Popen[bytes]]:
    """One prefork worker (2 processes) consuming all five queues."""
    log = WORKER_LOG.open("ab")
    proc = subprocess.Popen(
        worker_argv("testworker", 2, "--logfile", str(WORKER_FILE_LOG)),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )
    try:
        wait_for(_ping, 60, "celery worker", interval=0.5)
        yield proc
    finally:
        gc.collect()  # drop AsyncResults (they unsubscribe from Redis) while Redis still runs
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture
def alive(worker: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """The worker, checked to be running and answering after the test too."""
    yield worker
    assert worker.poll() is None, f"worker died; see {WORKER_LOG}"


def worker_log() -> str:
    return WORKER_LOG.read_text(errors="replace") if WORKER_LOG.exists() else ""


def run(name: str, *args: Any, timeout: float = 60, **kwargs: Any) -> Any:
    """Send a task by name (as any client would) and wait for its final state."""
    from app.celery_app import celery_app

    result = celery_app.send_task(name, args=list(args), kwargs=kwargs)
    result.get(timeout=timeout, propagate=False, interval=0.1)
    return result


def wait_state(result: Any, states: set[str], timeout: float = 30) -> str:
    return str(wait_for(lambda: result.state in states and result.state, timeout, f"{states}"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for path in (WORKER_FILE_LOG, WORKER_LOG) if exitstatus != 0 else ():
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-60:]
            sys.stderr.write(f"\n--- {path.name} (tail) ---\n" + "\n".join(tail) + "\n")
    for server in (REDIS, POSTGRES):
        server.stop()
    shutil.rmtree(WORK, ignore_errors=True)
