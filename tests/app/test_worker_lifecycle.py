"""A worker of its own (broker db 4): warm shutdown finishes the running task; a SIGKILLed worker's
task comes back after the visibility timeout and completes once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ENV, ROOT, WORK, worker_argv
from services import RedisServer, wait_for
from sqlalchemy import select

from app.celery_app import celery_app
from app.db import session_scope
from app.models import TaskProbe

VISIBILITY = 8  # seconds; short so that the test sees the redelivery


class Worker:
    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.env = {
            **os.environ,
            **ENV,
            "APP_BROKER_URL": redis.url(4),
            "APP_RESULT_BACKEND": redis.url(5),
            "APP_TASK_SOFT_TIME_LIMIT": "5",
            "APP_TASK_TIME_LIMIT": "7",
            "APP_VISIBILITY_TIMEOUT": str(VISIBILITY),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = WORK / "lifecycle-worker.log"

    def _ready_lines(self) -> int:
        text = self.log.read_text() if self.log.exists() else ""
        return len(re.findall(r"lifecycle@\S* ready\.", text))

    def start(self) -> None:
        before = self._ready_lines()  # the log is appended to by every start
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                worker_argv("lifecycle", 1, "--without-mingle"),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,  # its own process group: SIGKILL reaches the children
            )
        wait_for(lambda: self._ready_lines() > before, 90, "lifecycle worker", interval=0.3)

    def send_probe(self, token: str, sleep: float) -> None:
        with celery_app.connection_for_write(self.redis.url(4)) as conn:
            celery_app.send_task("ops.probe", [token], {"sleep_seconds": sleep}, connection=conn)

    def stop(self, sig: int) -> int:
        assert self.proc is not None
        if sig == signal.SIGKILL:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        return self.proc.wait(60)


def counts(token: str) -> tuple[int, int] | None:
    with session_scope() as s:
        row = s.scalars(select(TaskProbe).where(TaskProbe.token == token)).one_or_none()
        return (row.runs, row.completions) if row else None


@pytest.fixture
def lifecycle(database: Any, redis_server: RedisServer) -> Iterator[Worker]:
    worker = Worker(redis_server)
    yield worker
    if worker.proc and worker.proc.poll() is None:
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(30)


def test_warm_shutdown_lets_the_running_task_finish(lifecycle: Worker) -> None:
    token = uuid.uuid4().hex
    lifecycle.start()
    lifecycle.send_probe(token, sleep=3)
    wait_for(lambda: counts(token) == (1, 0), 30, "probe started")
    assert lifecycle.stop(signal.SIGTERM) == 0
    assert counts(token) == (1, 1)  # finished before the worker exited


def test_killed_worker_task_is_redelivered_and_completes_once(lifecycle: Worker) -> None:
    token = uuid.uuid4().hex
    lifecycle.start()
    lifecycle.send_probe(token, sleep=3)
    wait_for(lambda: counts(token) == (1, 0), 30, "probe started")
    lifecycle.stop(signal.SIGKILL)  # main process and pool child, mid-task
    assert counts(token) == (1, 0)
    lifecycle.start()
    # Back in the queue once the visibility timeout passed (kombu checks every 10 s).
    wait_for(lambda: counts(token) == (2, 1), VISIBILITY + 60, "redelivered probe", interval=0.5)
