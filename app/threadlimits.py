"""Time limits on the threads pool, which Celery does not enforce there (its thread pool drops
`soft_timeout`/`timeout`: celery/concurrency/thread.py, Celery #9203).

A monitor thread in the worker watches the tasks each pool thread runs:
- past the soft limit it raises SoftTimeLimitExceeded in the task's thread (CPython's
  PyThreadState_SetAsyncExc): the task fails as it would on prefork, at its next Python
  instruction, so within the longest single blocking call (SMTP 30 s, SMS gateway 10 s,
  database connect 5 s: every external call the app makes has a timeout);
- past the hard limit (a task that swallowed the exception or sits in a call without a timeout)
  no thread can be killed, so the instance asks systemd to kill and restart it at once
  (WATCHDOG=trigger); the task's message comes back after the visibility timeout and its
  redeliveries are bounded (APP_TASK_MAX_DELIVERIES).
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from app import liveness, logs

log = logs.get_logger(__name__)

CHECK_INTERVAL = 0.25


@dataclass
class _Running:
    task_id: str
    task_name: str
    started: float
    soft: float | None
    hard: float | None
    soft_raised: bool = False
    hard_reported: bool = False


_running: dict[int, _Running] = {}
_lock = threading.Lock()
_limits: dict[str, float | None] = {}


def enable(soft: float | None, hard: float | None) -> None:
    """Called once in a threads worker (worker_init) with the instance's limits."""
    if _limits:
        return
    _limits.update(soft=soft or None, hard=hard or None)
    threading.Thread(target=_monitor, name="thread-time-limits", daemon=True).start()
    log.info("thread_time_limits_enforced", soft=soft, hard=hard)


def _task_limits(task: Any) -> tuple[float | None, float | None]:
    hard, soft = getattr(task.request, "timelimit", None) or (None, None)
    soft = soft or getattr(task, "soft_time_limit", None) or _limits.get("soft")
    hard = hard or getattr(task, "time_limit", None) or _limits.get("hard")
    return soft, hard


@signals.task_prerun.connect
def _started(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    if _limits and task is not None:
        soft, hard = _task_limits(task)
        with _lock:
            _running[threading.get_ident()] = _Running(
                task_id, task.name, time.monotonic(), soft, hard
            )


@signals.task_postrun.connect
def _ended(**kwargs: Any) -> None:
    if _limits:
        with _lock:
            _running.pop(threading.get_ident(), None)


def _raise_in(thread_id: int, exc: type[BaseException]) -> bool:
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc)
    )
    return bool(done == 1)


def _report(emit: Any, event: str, run: _Running, limit: float | None) -> None:
    emit(event, task_id=run.task_id, task_name=run.task_name, limit=limit, pool="threads")


def _monitor() -> None:
    while True:
        time.sleep(CHECK_INTERVAL)
        now = time.monotonic()
        with _lock:
            for thread_id, run in _running.items():
                elapsed = now - run.started
                if run.soft and elapsed > run.soft and not run.soft_raised:
                    run.soft_raised = True
                    _raise_in(thread_id, SoftTimeLimitExceeded)
                    _report(log.warning, "soft_time_limit_exceeded", run, run.soft)
                if run.hard and elapsed > run.hard and not run.hard_reported:
                    run.hard_reported = True
                    _report(log.critical, "hard_time_limit_exceeded_restarting", run, run.hard)
                    logs.flush()
                    liveness.notify(
                        f"STATUS=task {run.task_id} past its hard time limit ({run.hard:.0f} s) "
                        "on the threads pool: restarting\nWATCHDOG=trigger"
                    )
