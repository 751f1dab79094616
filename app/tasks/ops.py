"""Operational tasks (queue `default`): the probe that end-to-end and reliability tests count."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert

from app.celery_app import celery_app
from app.db import get_engine, session_scope
from app.errors import TemporaryError, ValidationError
from app.logs import get_logger
from app.models import TaskProbe
from app.settings import get_settings
from app.validation import require_int, require_number, require_str

log = get_logger(__name__)


@celery_app.task(bind=True, name="ops.probe")
def probe(
    self: Any,
    token: str,
    sleep_seconds: float = 0,
    fail_times: int = 0,
    crash_times: int = 0,
) -> dict[str, Any]:
    """Record a run of `token` in task_probes: runs counts starts, completions counts finishes.

    sleep_seconds keeps it busy between the two; fail_times makes the first N runs raise a
    temporary error (so it is retried); the first crash_times runs SIGKILL their own process
    after counting the run (a large value: a message that kills its worker every time, whose
    redeliveries are bounded by APP_TASK_MAX_DELIVERIES).
    """
    token = require_str(token, "token", max_len=200)
    sleep = float(require_number(sleep_seconds, "sleep_seconds", positive=False, maximum=3600))
    if sleep < 0:
        raise ValidationError("sleep_seconds: must not be negative")
    fail_times = require_int(fail_times, "fail_times", minimum=0, maximum=20)
    crash_times = require_int(crash_times, "crash_times", minimum=0, maximum=1000)
    if (fail_times or crash_times) and not get_settings().probe_faults:
        raise ValidationError(
            "fail_times, crash_times: the probe's fault hooks are off on this worker "
            "(APP_PROBE_FAULTS, celery_app_probe_faults: test scenarios only)"
        )
    request = self.request
    queue = (request.delivery_info or {}).get("routing_key")
    worker = request.hostname
    new = insert(TaskProbe).values(
        token=token, runs=1, task_id=request.id, queue=queue, worker=worker, workers=[worker]
    )
    stmt = new.on_conflict_do_update(
        index_elements=[TaskProbe.token],
        set_={
            "runs": TaskProbe.runs + 1,
            "task_id": new.excluded.task_id,
            "queue": new.excluded.queue,
            "worker": new.excluded.worker,
            "workers": TaskProbe.workers.op("||")(new.excluded.workers),
            "last_run_at": func.now(),
        },
    ).returning(TaskProbe.runs)
    with session_scope() as session:
        runs = session.execute(stmt).scalar_one()
    log.info("probe_started", token=token, runs=runs)
    if runs <= crash_times:
        log.warning("probe_crashing", token=token, runs=runs)
        os.kill(os.getpid(), signal.SIGKILL)
    if runs <= fail_times:
        raise TemporaryError(f"probe {token}: planned failure {runs} of {fail_times}")
    # In slices, like a task of bounded calls: a time limit on the threads pool lands between them.
    deadline = time.monotonic() + sleep
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.1, left))
    with session_scope() as session:
        completions = session.execute(
            update(TaskProbe)
            .where(TaskProbe.token == token)
            .values(completions=TaskProbe.completions + 1, completed_at=func.now())
            .returning(TaskProbe.completions)
        ).scalar_one()
    log.info("probe_completed", token=token, runs=runs, completions=completions)
    return {
        "token": token,
        "runs": runs,
        "completions": completions,
        "queue": queue,
        "worker": worker,
        # Connections this process keeps open (a threads worker: one per thread).
        "db_pool_size": get_engine().pool.size(),  # type: ignore[attr-defined]
        "status": "success",
    }
