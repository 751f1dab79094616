"""The Celery application: `celery -A app.celery_app worker|beat|flower`.

Queues, routing by task name, reliability settings and the beat schedule. Every value that
depends on the host comes from app.settings (APP_* variables).
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

import redis
import structlog
from celery import Celery, Task, signals
from celery.schedules import crontab
from kombu import Exchange, Queue

from app import broker, db, eventbatch, liveness, logs, results, threadlimits
from app.errors import TEMPORARY_EXCEPTIONS, PoisonMessageError, TemporaryError
from app.queues import QUEUES, queue_for
from app.settings import get_settings

TASK_MODULES = [
    "app.tasks.pricing",
    "app.tasks.notifications",
    "app.tasks.data",
    "app.tasks.maintenance",
    "app.tasks.ops",
]
# Retry policy of temporary faults: exponential backoff with jitter, then the task fails.
RETRY_MAX = 5
RETRY_BACKOFF_BASE = 2.0
RETRY_BACKOFF_MAX = 120.0
# Every task message's publish time (epoch seconds, float), a message header: the exporter's
# oldest-message age per queue (app.exporter, docs/METRICS.md). Celery puts none in a message.
SENT_AT_HEADER = "sent_at"

log = logs.get_logger(__name__)


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    """Celery router: an explicit apply_async(queue=...) still wins over this."""
    return {"queue": queue_for(name)}


def retry_countdown(retries: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, so workers spread out.

    Never beyond Settings.max_countdown(): a retry held past the visibility timeout would be
    delivered again and again (kombu #337)."""
    ceiling = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * (2**retries))
    countdown = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic
    return min(countdown, get_settings().max_countdown())


_redis: dict[str, redis.Redis] = {}


def broker_redis() -> redis.Redis:
    """A plain Redis client on the broker database (queue lengths, delivery counters)."""
    url = get_settings().broker_url
    if url not in _redis:
        _redis[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return _redis[url]


class AppTask(Task):
    """Base of every task: bounded redeliveries, and temporary faults retried with backoff."""

    max_retries = RETRY_MAX

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        counter = None
        # Only a message the broker gave back (its worker died, or it was requeued) is counted:
        # a first delivery costs no Redis round trip (docs/DESIGN.md, "Per-task cost").
        if self.request.id and not self.request.is_eager and self._redelivered():
            counter = self._guard_redeliveries()
        try:
            return self.run(*args, **kwargs)
        except TEMPORARY_EXCEPTIONS as exc:
            if self.request.is_eager or not self.request.id:
                raise
            # Re-raised as TemporaryError: its text is what the result shows once retries run out.
            err = TemporaryError(f"{type(exc).__name__}: {exc}".strip()[:1000])
            countdown = retry_countdown(self.request.retries)
            log.warning(
                "task_retry",
                error=str(err),
                retries=self.request.retries,
                countdown=round(countdown, 2),
            )
            raise self.retry(exc=err, countdown=countdown) from exc
        finally:
            # The task ended in this worker (done, failed, or retried as a new message): only
            # deliveries whose worker died count towards the bound, so the counter goes. Left to
            # expire, one per task piled up in Redis (144k in an hour of the benchmarks).
            if counter:
                _forget_delivery(counter)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Keep a record of final failures in application_logs (pruned by database_maintenance)."""
        log.error("task_failed", error=f"{type(exc).__name__}: {exc}"[:1000])
        if self.request.is_eager:
            return
        try:
            from app.db import session_scope
            from app.models import ApplicationLog

            with session_scope() as session:
                session.add(
                    ApplicationLog(
                        level="ERROR",
                        event="task_failed",
                        data={
                            "task_id": task_id,
                            "task_name": self.name,
                            "retries": self.request.retries,
                            "error": f"{type(exc).__name__}: {exc}"[:2000],
                        },
                    )
                )
        except Exception as db_exc:  # the database may be the reason the task failed
            log.warning("task_failure_not_recorded", error=str(db_exc)[:500])

    def _redelivered(self) -> bool:
        # kombu's Redis transport marks every message it puts back in its queue: a requeue
        # (reject_on_worker_lost, the stop guard) and the visibility sweep of a lost worker's.
        return bool((self.request.delivery_info or {}).get("redelivered"))

    def _guard_redeliveries(self) -> str | None:
        """Count redeliveries of this message; refuse one that keeps killing its worker.

        acks_late + reject_on_worker_lost requeue a message whose worker died, which is right
        once but loops forever for a message that kills every worker. The count lives in the
        broker's Redis under the task id and retry number (a retry is a new message); the first
        delivery is not in it, so this delivery's number is the count plus one.
        """
        settings = get_settings()
        key = f"app:deliveries:{self.request.id}:{self.request.retries}"
        try:
            client = broker_redis()
            with client.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, settings.visibility_timeout * 2)
                count = int(pipe.execute()[0]) + 1
        except redis.RedisError as exc:  # never block work because the counter is unavailable
            log.warning("delivery_count_unavailable", error=str(exc))
            return None
        if count > settings.task_max_deliveries:
            raise PoisonMessageError(
                f"message delivered {count} times without finishing (its worker was lost each "
                f"time); not running it again (APP_TASK_MAX_DELIVERIES="
                f"{settings.task_max_deliveries})"
            )
        log.warning("task_redelivered", deliveries=count)
        return key


def _forget_delivery(key: str) -> None:
    try:
        broker_redis().delete(key)
    except redis.RedisError as exc:  # it expires anyway (visibility timeout x 2)
        log.warning("delivery_count_not_removed", error=str(exc))


def periodic(task: str, schedule: Any, expires: float) -> dict[str, Any]:
    """A beat entry. Its result is not stored (nobody holds its id; failures show in the logs and
    Flower), and a run not started within `expires` seconds is dropped: after an outage the
    backlog runs once, not once per missed period."""
    return {
        "task": task,
        "schedule": schedule,
        "options": {"ignore_result": True, "expires": expires},
    }


def make_celery() -> Celery:
    s = get_settings()
    app = Celery("app", task_cls=AppTask, include=TASK_MODULES)
    app.conf.update(
        broker_url=s.broker_url,
        result_backend=s.result_backend,
        # Serialization and time
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        # Queues and routing by task name
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        task_default_queue="default",
        task_default_exchange="default",
        task_default_routing_key="default",
        task_routes=(route_task,),
        task_create_missing_queues=False,
        # Delivery: a task is acked when done, requeued if its worker dies, so it may run twice
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # STARTED is one more result write per task: recorded only by the long tasks, whose
        # callers poll them (track_started=True on their decorators).
        task_track_started=False,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1000,
        worker_deduplicate_successful_tasks=True,
        # No task_soft_time_limit/task_time_limit here: a producer with them set puts its own
        # limits in every message's header (send_task merges the local task's options), and the
        # header beats the worker's. The worker instance's limits rule: its command line, else
        # APP_TASK_*_TIME_LIMIT (_set_up_pool).
        # Results, in their own Redis (redis-server@results, evicting): read back by taskctl status
        # and result, chords and callers; beat's entries ignore theirs (nobody holds their id).
        # Extended: name, worker, queue and retries for taskctl status, never the arguments
        # (app.results). result_persistent is for AMQP result queues only.
        result_expires=3600,
        result_extended=True,
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        # Events for Flower
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Redis as broker in production
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": s.visibility_timeout,
            # Each instance group (NAME on every host) records what it took in its own hash,
            # swept with its own visibility timeout: a short queue's work comes back in minutes
            # while a batch instance's hour-long task is not handed out twice.
            "unacked_key": s.unacked_key,
            "unacked_index_key": f"{s.unacked_key}_index",
            "unacked_mutex_key": f"{s.unacked_key}_mutex",
            # Look for messages of lost workers (older than the visibility timeout) every 10 s,
            # not every 100 s (kombu's default throttle of 10 sweeps).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            "socket_keepalive": True,
            "health_check_interval": 25,
        },
        result_backend_transport_options={"health_check_interval": 25},
        redis_socket_keepalive=True,
        redis_backend_health_check_interval=25,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Stop: SIGTERM is Celery's warm shutdown, bounded by app.liveness's stop guard
        # (APP_WORKER_SOFT_SHUTDOWN_TIMEOUT, then running tasks are requeued at once). Celery's
        # own soft shutdown is off: it sleeps its whole timeout in the signal handler, with the
        # event loop stopped, even when the tasks end sooner.
        worker_soft_shutdown_timeout=0.0,
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        # Beat stamps each tick for systemd's watchdog (app.liveness); ticks at least every 5 s.
        beat_scheduler="app.liveness:LivenessScheduler",
        beat_max_loop_interval=5,
        # Periodic tasks (celery beat), all times UTC
        beat_schedule={
            "expire-old-quotes": periodic("maintenance.expire_old_quotes", 3600.0, 3600),
            "cleanup-expired-reservations": periodic(
                "maintenance.cleanup_expired_reservations", 1800.0, 1800
            ),
            # Every 5 minutes; it mails the alert recipients once per incident (app.health).
            "check-system-health": periodic("maintenance.check_system_health", 300.0, 300),
            # Daily and weekly work late by up to half a day still runs; later, by hand.
            "generate-daily-reports": periodic(
                "data.generate_daily_reports", crontab(hour=2, minute=0), 43200
            ),
            "backup-pricing-data": periodic(
                "data.backup_pricing_data", crontab(hour=3, minute=0, day_of_week=0), 43200
            ),
            "database-maintenance": periodic(
                "maintenance.database_maintenance", crontab(hour=4, minute=0, day_of_week=0), 43200
            ),
        },
    )
    if s.beat_interval_override:
        # APP_BEAT_INTERVAL_OVERRIDE (lab and tests only): every entry at a short interval.
        for entry in app.conf.beat_schedule.values():
            entry["schedule"] = float(s.beat_interval_override)
    return app


celery_app = make_celery()
assert broker  # imported for its patch of kombu's Redis QoS (a full broker loses no message)
assert results  # imported for its patch of the result backend (what a result records)
# READY/WATCHDOG/STATUS for systemd, once the consumer consumes (app.liveness).
celery_app.steps["consumer"].add(liveness.WorkerLiveness)
# Task events published every 0.1 s in one message, not one message each (app.eventbatch).
celery_app.steps["consumer"].add(eventbatch.BatchedTaskEvents)


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, logfile: str | None = None, **kwargs: Any) -> None:
    # Connected: Celery leaves logging to us (structlog JSON lines, app.logs). Celery passes its
    # --logfile here (the units set /var/log/celery/NAME.log: the one sink then; stderr without
    # it), and an explicit --loglevel of the worker instance wins over APP_LOG_LEVEL.
    s = get_settings()
    level = loglevel if loglevel and _loglevel_given() else s.log_level
    logs.configure(s.log_format, level, logfile or None)


def _loglevel_given() -> bool:
    return any(a in ("-l", "--loglevel") or a.startswith(("--loglevel=", "-l")) for a in sys.argv)


@signals.task_prerun.connect
def _bind_task_context(task_id: str, task: Task, **kwargs: Any) -> None:
    request = task.request
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        task_id=task_id,
        task_name=task.name,
        queue=(request.delivery_info or {}).get("routing_key"),
        worker=request.hostname,
        retries=request.retries,
    )


@signals.before_task_publish.connect
def _stamp_sent_at(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    # A stamp set by the producer stays. A retry is a new message whose headers copy the first
    # one's (custom headers follow the request): it gets its own publish time.
    if headers is not None and (SENT_AT_HEADER not in headers or headers.get("retries")):
        headers[SENT_AT_HEADER] = time.time()


@signals.task_postrun.connect
def _unbind_task_context(**kwargs: Any) -> None:
    structlog.contextvars.clear_contextvars()


@signals.worker_init.connect
def _set_up_pool(sender: Any = None, **kwargs: Any) -> None:
    # A threads worker runs `concurrency` tasks at once in one process, each with its own
    # connection: keep that many open rather than reconnecting per task. Prefork children run
    # one task at a time (the default pool size covers them).
    pool = getattr(sender, "pool_cls", "")
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "thread" in name and getattr(sender, "concurrency", None):
        db.set_pool_size(int(sender.concurrency))
    if sender is None:
        return
    settings = get_settings()
    sender.soft_time_limit = sender.soft_time_limit or settings.task_soft_time_limit
    sender.time_limit = sender.time_limit or settings.task_time_limit
    if "thread" in name:
        # Celery enforces no time limit on the threads pool: app.threadlimits does.
        threadlimits.enable(sender.soft_time_limit, sender.time_limit)


@signals.worker_process_init.connect
def _fresh_connections(**kwargs: Any) -> None:
    # A forked pool child must not reuse the parent's sockets (app.db checks the pid itself).
    _redis.clear()
