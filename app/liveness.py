"""Tell systemd the truth about a worker instance or beat: READY, WATCHDOG, STATUS, STOPPING.

The sd_notify protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET (man
sd_notify); it is written here directly (~20 lines) rather than through a package: `systemd-python`
needs libsystemd headers and a compiler on every host, `sdnotify` (PyPI) is unmaintained since 2017
and is the same 20 lines. Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op.

A worker is alive when its consumer's event loop turns (a timer in the loop stamps it) and the
broker answers a PING; only then does the watchdog thread send WATCHDOG=1. A consumer that died
after an unrecoverable error (Celery #5716: the process stays up, consuming nothing), a main
process stopped by SIGSTOP or a hung broker connection stop the stamps or the PING, systemd's
WatchdogSec= expires and it kills and restarts the instance. Beat is alive while its scheduler
ticks (beat_max_loop_interval bounds the sleep between ticks) and the broker answers; it records
each send of an entry in the broker (BEAT_LAST_SENT_KEY) for the exporter. Flower
(app/flower_service.py) is alive while its web server answers its own /healthcheck (the request
is served by its event loop) and the broker answers.

On `systemctl stop` (SIGTERM: Celery's warm shutdown, running tasks finish), the stop guard gives
running tasks APP_WORKER_SOFT_SHUTDOWN_TIMEOUT seconds; tasks still running then are put back at
the head of their queue at once (not left for the visibility timeout) and the instance exits,
well before systemd's TimeoutStopSec would SIGKILL it. docs/RELIABILITY.md, "Stop".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import redis
from celery import bootsteps, signals
from celery.beat import PersistentScheduler

from app import logs
from app.settings import get_settings

log = logs.get_logger(__name__)

# How often the event loop stamps itself, and how old a stamp may be while the loop is alive.
LOOP_STAMP_INTERVAL = 2.0
LOOP_STALE_AFTER = 10.0


def notify(message: str) -> bool:
    """Send one sd_notify message ("READY=1", "STATUS=...", or several lines); False if none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False
    return True


def watchdog_seconds() -> float | None:
    """systemd's WatchdogSec for this process, or None when no watchdog is armed for it."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


class Liveness:
    """The watchdog thread: WATCHDOG=1 and the STATUS line only while every check passes."""

    def __init__(self, name: str, describe: Callable[[], str]) -> None:
        self.name = name
        self.describe = describe
        self.last_stamp: float | None = None
        self.ready = False
        self.stopping = False
        self._thread: threading.Thread | None = None
        self._last_problem = ""

    def stamp(self) -> None:
        """Called from the loop being watched: it turned just now."""
        self.last_stamp = time.monotonic()
        if not self.ready:
            self.ready = True
            notify(f"READY=1\nSTATUS={self.describe()}")
            log.info("sd_ready", service=self.name)

    def start(self) -> None:
        if self._thread is None and os.environ.get("NOTIFY_SOCKET"):
            self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
            self._thread.start()

    def problem(self) -> str:
        """Why the service is not alive now, or "" when it is."""
        if self.last_stamp is None:
            return "starting"
        age = time.monotonic() - self.last_stamp
        if age > LOOP_STALE_AFTER:
            return f"event loop silent for {age:.0f} s"
        # The app's broker client (5 s socket timeouts): a PING slower than that is no answer.
        from app.celery_app import broker_redis  # imported late: app.celery_app imports this

        try:
            broker_redis().ping()
        except redis.RedisError as exc:
            return f"broker does not answer: {type(exc).__name__}: {exc}"[:200]
        return ""

    def _run(self) -> None:
        period = (watchdog_seconds() or 20.0) / 4
        wait = period
        while True:
            slept_from = time.monotonic()
            time.sleep(wait)
            paused = time.monotonic() - slept_from > wait + LOOP_STAMP_INTERVAL
            wait = period
            if self.stopping or not self.ready:
                continue
            if paused:
                # The whole process was paused (SIGSTOP then SIGCONT, a frozen VM or cgroup):
                # its loop could not stamp meanwhile either, so a stale stamp now says nothing.
                # No verdict and no WATCHDOG=1 (a process kept paused is still killed); judged
                # again soon, once the loop has had time to turn.
                wait = min(period, LOOP_STALE_AFTER / 2)
                continue
            problem = self.problem()
            if problem:
                # No WATCHDOG=1: systemd kills and restarts the service when WatchdogSec runs out.
                notify(f"STATUS=not alive: {problem}")
                if problem != self._last_problem:
                    log.error("liveness_failed", service=self.name, problem=problem)
            else:
                notify(f"WATCHDOG=1\nSTATUS={self.describe()}")
            self._last_problem = problem


# --- worker instances -----------------------------------------------------------------------

_worker_liveness: Liveness | None = None


def _describe_worker(consumer: Any) -> Callable[[], str]:
    from celery.worker import state

    def describe() -> str:
        queues = sorted(q.name for q in getattr(consumer.task_consumer, "queues", None) or [])
        processed = sum(state.total_count.values())
        active = len(state.active_requests)
        return f"consuming {','.join(queues) or '-'}, {active} active, {processed} processed"

    return describe


def waiting(reason: str) -> None:
    """The worker's loop is deliberately held (e.g. broker full): alive, and says why."""
    if _worker_liveness is not None:
        _worker_liveness.last_stamp = time.monotonic()
        notify(f"STATUS={reason}")


class WorkerLiveness(bootsteps.StartStopStep):
    """Consumer bootstep: stamps the event loop once the consumer is consuming."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        global _worker_liveness
        if _worker_liveness is None:
            _worker_liveness = Liveness(c.hostname, _describe_worker(c))
            _worker_liveness.start()
        # Registered on every (re)start of the consumer: the consumer cancels its timer entries
        # when the connection is lost, and a loop that never restarts then starves the watchdog.
        timer = c.hub.timer if getattr(c, "hub", None) is not None else c.timer
        timer.call_repeatedly(LOOP_STAMP_INTERVAL, _worker_liveness.stamp)
        _worker_liveness.stamp()


@signals.worker_shutting_down.connect
def _worker_stopping(sig: str = "", how: str = "", **kwargs: Any) -> None:
    # systemd asked (SIGTERM): say so, and bound the time running tasks get.
    liveness = _worker_liveness
    if liveness is not None:
        liveness.stopping = True
    notify(f"STOPPING=1\nSTATUS=stopping ({how.lower()} shutdown on {sig})")
    if how == "Warm":
        threading.Thread(target=_stop_guard, name="stop-guard", daemon=True).start()


def _stop_guard() -> None:
    """After the grace, put the tasks still running back in their queues and exit."""
    from celery.worker import state

    grace = get_settings().worker_soft_shutdown_timeout
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not state.active_requests:
            return
        time.sleep(0.2)
    running = [r for r in tuple(state.active_requests) if not r.acknowledged]
    if not running:
        return
    notify(f"STATUS=stop grace of {grace} s over: requeueing {len(running)} running task(s)")
    # Pool children first, so that no task finishes (and acks) after its message went back.
    for pid in {r.worker_pid for r in running if r.worker_pid and r.worker_pid != os.getpid()}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for request in running:
        try:
            request.message.channel.basic_reject(request.message.delivery_tag, requeue=True)
            log.warning(
                "task_requeued_on_stop",
                task_id=request.id,
                task_name=request.name,
                grace_seconds=grace,
            )
        except Exception as exc:  # the visibility timeout still brings it back
            log.error("task_requeue_failed", task_id=request.id, error=str(exc)[:300])
    logs.flush()
    os._exit(0)


# --- beat -----------------------------------------------------------------------------------

# Beat records when it last sent each entry in this hash of the broker database (field: the entry
# name, value: epoch seconds), read by the exporter (app.exporter, docs/METRICS.md).
BEAT_LAST_SENT_KEY = "beat:last_sent"


def record_sent(entry_name: str) -> None:
    """One HSET per send; a broker that refuses it never stops beat (the send itself went)."""
    from app.celery_app import broker_redis  # imported late: app.celery_app imports this

    try:
        broker_redis().hset(BEAT_LAST_SENT_KEY, entry_name, repr(time.time()))
    except redis.RedisError as exc:
        log.warning("beat_last_sent_not_recorded", entry=entry_name, error=str(exc)[:300])


class LivenessScheduler(PersistentScheduler):
    """Beat's scheduler (the shelve file of --schedule), stamping each tick for the watchdog."""

    liveness: Liveness | None = None

    def setup_schedule(self) -> None:
        super().setup_schedule()
        if LivenessScheduler.liveness is None:
            LivenessScheduler.liveness = Liveness(
                "beat", lambda: f"scheduling {len(self.schedule)} entries"
            )
            LivenessScheduler.liveness.start()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = super().tick(*args, **kwargs)
        if LivenessScheduler.liveness is not None:
            LivenessScheduler.liveness.stamp()
        return float(interval)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kw: Any) -> Any:
        result = super().apply_async(entry, producer=producer, advance=advance, **kw)
        record_sent(entry.name)  # sent (a failed send raised): the exporter's last-sent time
        return result

    def close(self) -> None:
        if LivenessScheduler.liveness is not None:
            LivenessScheduler.liveness.stopping = True
        notify("STOPPING=1\nSTATUS=stopping")
        super().close()


# --- Flower ---------------------------------------------------------------------------------


class FlowerLiveness(Liveness):
    """READY once Flower's web server answers; then alive while it answers and the broker does."""

    def __init__(self, healthcheck_url: str, context: ssl.SSLContext | None = None) -> None:
        super().__init__("flower", lambda: f"serving {healthcheck_url.rsplit('/', 1)[0]}/")
        self.url = healthcheck_url
        self.context = context  # HTTPS: verified against Flower's CA

    def answers(self) -> str:
        """ "" when /healthcheck answers 200 within 5 s, else why not."""
        try:
            with urllib.request.urlopen(  # noqa: S310 - our URL
                self.url, timeout=5, context=self.context
            ) as response:
                return "" if response.status == 200 else f"healthcheck answered {response.status}"
        except OSError as exc:  # URLError and timeouts included
            return f"web server does not answer: {exc}"[:200]

    def problem(self) -> str:  # asked only once ready (Liveness._run)
        answer = self.answers()
        if answer:
            return answer
        self.last_stamp = time.monotonic()  # served by the loop just now
        return super().problem()

    def _run(self) -> None:
        while not self.ready:  # READY=1 once it serves (it binds after connecting to the broker)
            if self.answers():
                time.sleep(1)
            else:
                self.stamp()
        super()._run()
