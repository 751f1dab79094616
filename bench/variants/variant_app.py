"""The deployed app with features switched off, for bench/decompose.py (never shipped).

    BENCH_OFF=results,events celery --app=variant_app:celery_app worker ...

BENCH_OFF, comma-separated: `results` (no result write: task_ignore_result), `extended`
(result_extended off), `events` (no task events), `guard` (no redelivery counter), `dedup`
(worker_deduplicate_successful_tasks off), `structlog` (stdlib logging.Formatter lines instead
of structlog's JSON), `tls` (both Redis servers over their plain ports: tls_off.py). BENCH_ON,
what the app did before issue 17's cuts: `guard-every` (the redelivery counter on every
delivery: INCR + EXPIRE, then DEL, per task) and `received` (Celery's "received" line at INFO).
Per-task INFO lines are switched off by the command line (--loglevel=WARNING), as an operator
would.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import Any

from celery import signals
from tls_off import plain

from app import celery_app as deployed
from app import logs
from app.celery_app import AppTask, celery_app
from app.settings import get_settings

OFF = {x for x in os.environ.get("BENCH_OFF", "").split(",") if x}
KNOWN = {"results", "extended", "events", "guard", "dedup", "structlog", "tls"}
ON = {x for x in os.environ.get("BENCH_ON", "").split(",") if x}
UNKNOWN = (OFF - KNOWN) | (ON - {"guard-every", "received"})
if UNKNOWN:
    raise SystemExit(f"BENCH_OFF/BENCH_ON: unknown {sorted(UNKNOWN)}; see the docstring")

if "tls" in OFF:
    celery_app.conf.broker_url = plain(celery_app.conf.broker_url)
    celery_app.conf.result_backend = plain(celery_app.conf.result_backend)
if "results" in OFF:
    celery_app.conf.task_ignore_result = True
if "extended" in OFF:
    celery_app.conf.result_extended = False
if "events" in OFF:
    celery_app.conf.worker_send_task_events = False
if "dedup" in OFF:
    celery_app.conf.worker_deduplicate_successful_tasks = False


def _guard_every_delivery(self: AppTask) -> str | None:
    """The guard as it was: every delivery counted (INCR + EXPIRE in MULTI), its key returned
    for the DEL at the end; the poison bound itself is not needed for a benchmark."""
    key = f"app:deliveries:{self.request.id}:{self.request.retries}"
    with deployed.broker_redis().pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, get_settings().visibility_timeout * 2)
        pipe.execute()
    return key


if "guard-every" in ON:
    AppTask._redelivered = lambda self: True  # type: ignore[method-assign]
    AppTask._guard_redeliveries = _guard_every_delivery  # type: ignore[method-assign]
if "guard" in OFF:
    AppTask._guard_redeliveries = lambda self: None  # type: ignore[method-assign]


def _stdlib_logging(loglevel: Any = None, logfile: str | None = None, **kwargs: Any) -> None:
    handler = logging.handlers.WatchedFileHandler(logfile) if logfile else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(loglevel or "INFO")


def _received_line(**kwargs: Any) -> None:
    logging.getLogger(logs.RECEIVED_LOGGER).setLevel(logging.NOTSET)


if "received" in ON:  # after the app's own setup_logging receiver, connected first
    signals.setup_logging.connect(_received_line, weak=False)
if "structlog" in OFF:
    signals.setup_logging.disconnect(deployed._setup_logging)
    signals.setup_logging.connect(_stdlib_logging, weak=False)
