"""Prometheus exporter of the Celery cluster: `python -m app.exporter` (docs/METRICS.md).

Three sources, one process:

- Celery's events (a receiver thread on the broker, reconnecting for ever): task counters per
  task name, worker instance and queue, the runtime histogram, worker up/active from heartbeats.
  The thread reads the event channel itself (PSUBSCRIBE, one JSON decode per message) rather than
  through kombu's consumer and Celery's State: an eighth of the CPU per task (docs/BENCHMARKS.md).
  A bounded dict remembers each task's name and queue between its events, until its end.
- The workers' answers to `inspect().active_queues()`, every APP_EXPORTER_POLL_INTERVAL seconds:
  which instance consumes which queue. An instance that stops answering reads 0, it does not
  vanish.
- The broker's Redis, read on each scrape (one pipelined round trip, 3 s socket timeouts): queue
  lengths (priority sub-queues included), the age of each queue's oldest message (the `sent_at`
  header app.celery_app stamps at publish) and beat's last send of each entry (the hash
  app.liveness's scheduler writes).

HTTP (wsgiref, a thread per request): /metrics behind HTTP basic auth (APP_EXPORTER_USER,
APP_EXPORTER_PASSWORD; no password, no start), /healthz without (200 while the events are
connected and the broker answers a PING, else 503). READY=1 to systemd once it serves; WATCHDOG=1
while its web server loop turns (app.liveness). A broker outage is reported (gauges at 0,
/healthz 503), not a reason to exit or to be restarted.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import liveness, logs
from app.queues import QUEUES, queue_for
from app.settings import Settings, SettingsError, get_settings

log = logs.get_logger("app.exporter")  # run as __main__

# Tasks of 1 ms to 30 min.
RUNTIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, float("inf"),
)  # fmt: skip
MAX_TASKS_IN_MEMORY = 10_000  # tasks between their first and last event (name and queue)
BROKER_TIMEOUT = 3.0  # seconds: a scrape or /healthz never waits longer for the broker
# Seconds between the event receiver's attempts, at most: pub/sub keeps nothing for a client
# not subscribed, so each second it waits after the broker's return is a second of events lost
# to the counters; one connection attempt every 2 s costs a dead broker nothing.
RECONNECT_MAX = 2.0
# Read what arrived, then pause: a wake-up per message costs 70-90 us of CPU, one per 50 ms
# ~18 us a message (Redis holds what arrives meanwhile; a scrape sees counters 50 ms late).
EVENTS_BATCH_PAUSE = 0.05  # seconds
EVENTS_PING_AFTER = 5.0  # seconds of silence on the event channel before a PING on it
EVENTS_SILENT_MAX = 15.0  # seconds without a message or a PONG: the connection is lost
HEARTBEAT_WINDOW = 2.0  # an instance is up until 2 heartbeat periods pass (as Celery's State)
ENDS = frozenset(("succeeded", "failed", "rejected", "revoked"))  # a task's last event
TASK_EVENTS = (
    "sent", "received", "started", "succeeded", "failed", "rejected", "revoked", "retried",
)  # fmt: skip
UNKNOWN = "unknown"
_EXCEPTION_CLASS = re.compile(r"\s*([A-Za-z_][\w.]*)\(")
_ANONYMOUS_NODE = re.compile(r"gen\d+@(.+)")  # celery.utils.nodenames.anon_nodename()


def exception_class(text: Any) -> str:
    """The class name of task-failed's `exception` (a repr: "ValueError('msg')"), never the
    message; "unknown" when it is no such repr."""
    match = _EXCEPTION_CLASS.match(str(text or ""))
    return match.group(1).rsplit(".", 1)[-1][:100] if match else UNKNOWN


def sender(hostname: str) -> str:
    """task-sent's hostname as a label: a producer without a node name (every client, beat, a
    worker's pool child retrying) is gen<PID>@HOST, one series per process ever: HOST then."""
    match = _ANONYMOUS_NODE.fullmatch(hostname)
    return match.group(1) if match else hostname


def decode_events(raw: bytes) -> list[dict[str, Any]]:
    """The events of one message on Celery's event channel, as kombu's Redis transport
    publishes it: a JSON envelope whose body is JSON (base64 per `body_encoding`), one event or
    a list of them (a worker's buffered task events, routing key `task.multi`)."""
    envelope = json.loads(raw)
    if envelope.get("content-type") != "application/json":
        raise ValueError(f"content-type {envelope.get('content-type')!r}: events must be JSON")
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    events = json.loads(body)
    return [e for e in (events if isinstance(events, list) else [events]) if isinstance(e, dict)]


def events_topic(app: Any, db: int) -> str:
    """The PSUBSCRIBE pattern of Celery's event exchange on the broker's database DB: kombu's
    fanout topic, "/DB.EXCHANGE/ROUTING_KEY" (its defaults fanout_prefix, fanout_patterns)."""
    options = app.conf.broker_transport_options or {}
    unsupported = {"fanout_prefix", "fanout_patterns", "global_keyprefix"} & set(options)
    if unsupported:
        raise SystemExit(f"app.exporter: broker_transport_options {sorted(unsupported)} unread")
    return f"/{db}.{app.conf.event_exchange}/*"


@dataclass
class Beats:
    """An instance's heartbeats: up while the last is younger than HEARTBEAT_WINDOW periods."""

    freq: float = 2.0
    last: float | None = None  # time.monotonic() of the last; None after worker-offline
    active: int = 0

    def up(self, now: float) -> bool:
        return self.last is not None and now < self.last + self.freq * HEARTBEAT_WINDOW


def period_seconds(schedule: Any, now: datetime | None = None) -> float | None:
    """A beat entry's period: a number or timedelta as is, a schedule's run_every, a crontab's
    interval between its next two runs (a crontab of uneven gaps: the next gap). None otherwise
    (solar)."""
    from celery.schedules import crontab
    from celery.schedules import schedule as every

    if isinstance(schedule, bool):
        return None
    if isinstance(schedule, int | float):
        return float(schedule)
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    if isinstance(schedule, every):
        return float(schedule.run_every.total_seconds())
    if isinstance(schedule, crontab):
        now = now or datetime.now(UTC)

        def next_run(after: datetime) -> datetime:
            last, delta, _ = schedule.remaining_delta(after)
            return last + delta

        first = next_run(now)
        return (next_run(first) - first).total_seconds()
    return None


class Exporter:
    """The metrics, the State the events feed, and what the polls and scrapes read."""

    def __init__(self, celery_app: Any, settings: Settings) -> None:
        from kombu.transport.redis import PRIORITY_STEPS, Channel

        self.app = celery_app
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        disable_created_metrics()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        labels = ("name", "hostname", "queue_name")
        self.task_counters = {
            kind: Counter(
                f"celery_task_{kind}",
                f"Tasks {kind} (Celery's task-{kind} events)",
                (*labels, "exception") if kind == "failed" else labels,
                registry=self.registry,
            )
            for kind in TASK_EVENTS
        }
        self.runtime = Histogram(
            "celery_task_runtime",
            "Run time of succeeded tasks in seconds (task-succeeded's runtime)",
            labels,
            buckets=RUNTIME_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))
        # The receiver's own: each task's (name, queue) until its last event; each label set's
        # counter child (labels() once per series, not per event).
        self.tasks: dict[str, tuple[str | None, str | None]] = {}
        self.children: dict[tuple[str, ...], Any] = {}
        self.lock = threading.Lock()
        self.workers: set[str] = set()  # every instance seen by its worker-* events
        self.beats: dict[str, Beats] = {}  # their heartbeats
        # Instances that said goodbye (worker-offline: a clean stop), and when. One away longer
        # than APP_EXPORTER_FORGET_AFTER is forgotten (taken out of the inventory, not down); one
        # that vanished without a goodbye (a crash, a lost host) stays, reported down.
        self.left: dict[str, float] = {}
        self.events_connected = False
        self._events_down_logged = False
        self._events_retry_delay = 1.0
        # Inspect: who consumes what, as last answered; every (instance, queue) ever answered.
        self.inspect_timeout = min(2.0, settings.exporter_poll_interval / 2)
        self.consuming: dict[str, set[str]] = {}
        self.consumers_seen: set[tuple[str, str]] = set()
        self.consumers_polled_at: float | None = None
        self.broker_ok = False

        def broker(**extra: Any) -> redis.Redis:
            return redis.Redis.from_url(
                settings.broker_url,
                socket_timeout=BROKER_TIMEOUT,
                socket_connect_timeout=BROKER_TIMEOUT,
                **extra,
            )

        self.redis = broker()
        self.topic = events_topic(celery_app, self.redis.connection_pool.connection_kwargs["db"])
        # The receiver's own client, without redis-py's retries: a lost connection reaches
        # run_events (gauge 0, one log line, backoff) instead of a silent reconnect that drops
        # what Redis had queued for the subscription. RESP2: under RESP3 (redis-py 8's default)
        # each message is a push reply that redis-py formats whole for a debug log line, 40 us
        # of an 11 KB batch of events (docs/METRICS.md).
        self.events_redis = broker(retry=Retry(NoBackoff(), 0), protocol=2)
        # Kombu's Redis transport keeps a queue's messages of priority step N>0 in "QUEUE<sep>N".
        options = celery_app.conf.broker_transport_options or {}
        steps = options.get("priority_steps", PRIORITY_STEPS)
        sep = options.get("sep", Channel.sep)
        self.queue_keys = {
            queue: [queue] + [f"{queue}{sep}{step}" for step in steps if step] for queue in QUEUES
        }

    def forget_departed(self) -> None:
        """Drop the instances that stopped cleanly long ago (caller holds the lock)."""
        now = time.monotonic()
        forget_after = self.settings.exporter_forget_after
        for host in [h for h, at in self.left.items() if now - at > forget_after]:
            del self.left[host]
            self.workers.discard(host)
            self.beats.pop(host, None)
            self.consuming.pop(host, None)
            self.consumers_seen = {(h, q) for h, q in self.consumers_seen if h != host}

    # --- events -----------------------------------------------------------------------------

    def on_message(self, raw: bytes) -> None:
        try:
            events = decode_events(raw)
        except Exception as exc:  # one odd message never ends the receiver
            log.warning("exporter_message_skipped", error=f"{type(exc).__name__}: {exc}"[:300])
            return
        for event in events:
            self.on_event(event)

    def on_event(self, event: dict[str, Any]) -> None:
        try:
            self._count(event)
        except Exception as exc:  # one odd event never ends the receiver
            log.warning("exporter_event_skipped", type=event.get("type"), error=str(exc)[:300])

    def _count(self, event: dict[str, Any]) -> None:
        group, _, subject = str(event.get("type", "")).partition("-")
        hostname = str(event.get("hostname") or UNKNOWN)
        if group == "worker":
            self._worker(hostname, subject, event)
            return
        if group != "task" or subject not in self.task_counters:
            return
        uuid = str(event.get("uuid") or "")
        name, queue = self.tasks.pop(uuid, (None, None))
        name = event.get("name") or name
        if subject == "sent":  # the producer's event: it names the queue
            hostname = sender(hostname)
            queue = event.get("queue") or event.get("routing_key") or queue
        # A rejection with requeue (a lost worker's task, given back) is not the task's end.
        ended = subject in ENDS and not (subject == "rejected" and event.get("requeue"))
        if not ended and uuid:
            self.tasks[uuid] = (name, queue)  # re-inserted: the oldest in flight go first
            if len(self.tasks) > MAX_TASKS_IN_MEMORY:
                del self.tasks[next(iter(self.tasks))]
        name = str(name or UNKNOWN)
        if not queue:  # task-sent not seen (sent before the exporter started): its route
            queue = queue_for(name) if name != UNKNOWN else UNKNOWN
        key: tuple[str, ...] = (subject, name, hostname, str(queue))
        if subject == "failed":
            key += (exception_class(event.get("exception")),)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self.task_counters[subject].labels(*key[1:])
        child.inc()
        runtime = event.get("runtime")
        if subject == "succeeded" and isinstance(runtime, int | float) and runtime >= 0:
            histogram_key = ("runtime", *key[1:])
            child = self.children.get(histogram_key)
            if child is None:
                child = self.children[histogram_key] = self.runtime.labels(*key[1:])
            child.observe(float(runtime))

    def _worker(self, hostname: str, subject: str, event: dict[str, Any]) -> None:
        """worker-online/-heartbeat: up for HEARTBEAT_WINDOW periods; -offline: down at once."""
        now = time.monotonic()
        with self.lock:
            self.workers.add(hostname)
            beats = self.beats.setdefault(hostname, Beats())
            if subject == "offline":
                self.left[hostname] = now
                beats.last, beats.active = None, 0
                return
            self.left.pop(hostname, None)
            freq, active = event.get("freq"), event.get("active")
            if isinstance(freq, int | float) and freq > 0:
                beats.freq = float(freq)
            if isinstance(active, int):
                beats.active = active
            beats.last = now

    def run_events(self) -> None:
        """The receiver, for ever: on a lost broker gauge 0, one log line, retries with backoff."""
        while True:
            pubsub = self.events_redis.pubsub()
            try:
                pubsub.psubscribe(self.topic)  # connected once Redis confirms (_receive)
                self._receive(pubsub)
            except Exception as exc:  # the broker went away (or never came): retry
                self.events_connected = False
                if not self._events_down_logged:
                    self._events_down_logged = True
                    log.error("exporter_events_disconnected", error=f"{type(exc).__name__}: {exc}")
                time.sleep(self._events_retry_delay)
                self._events_retry_delay = min(self._events_retry_delay * 2, RECONNECT_MAX)
            finally:
                pubsub.close()

    def _receive(self, pubsub: Any) -> None:
        """Messages until the connection fails or stays silent: a PING after EVENTS_PING_AFTER
        quiet seconds, and no answer (message or PONG) in EVENTS_SILENT_MAX is a lost broker
        (a partition sends no reset). Replies are read from the connection itself: PubSub's
        get_message wraps each in retries, health checks and a dict, twice the CPU."""
        connection = pubsub.connection
        heard = pinged = time.monotonic()
        while True:
            ready = connection.can_read(timeout=1.0)
            now = time.monotonic()
            if ready:
                heard = now
                while ready:  # what has arrived, then a pause (Redis holds what comes meanwhile)
                    self._reply(connection.read_response())
                    # Only if bytes are there: read_response then waits the socket's timeout
                    # for the rest of a reply half arrived.
                    ready = connection.can_read(timeout=0)
                time.sleep(EVENTS_BATCH_PAUSE)
                continue
            if now - heard > EVENTS_SILENT_MAX:
                raise ConnectionError(
                    f"no answer on the event channel in {EVENTS_SILENT_MAX:.0f} s"
                )
            if now - max(heard, pinged) >= EVENTS_PING_AFTER:
                pubsub.ping()
                pinged = now

    def _reply(self, reply: Any) -> None:
        """One reply on the subscribed connection: [pmessage, pattern, channel, data], the
        PSUBSCRIBE's confirmation, or a PING's [pong, ""]."""
        kind = reply[0] if isinstance(reply, list) and reply else None
        if kind == b"pmessage":
            self.on_message(reply[3])
        elif kind == b"psubscribe":
            self._events_up()

    def _events_up(self) -> None:
        """The receiver consumes (again): gauge 1, backoff and outage over."""
        if not self.events_connected:
            log.info("exporter_events_connected")
        self.events_connected = True
        self._events_down_logged = False
        self._events_retry_delay = 1.0

    # --- inspect ----------------------------------------------------------------------------

    def run_polls(self) -> None:
        """Every poll interval: PING the broker, then ask the workers what they consume."""
        failing = ""
        while True:
            started = time.monotonic()
            try:
                self.poll_consumers()
                if failing:
                    log.info("exporter_poll_recovered")
                failing = ""
            except Exception as exc:  # the broker is down or hangs: reported, retried
                problem = f"{type(exc).__name__}: {exc}"[:300]
                if not failing:
                    log.error("exporter_poll_failed", error=problem)
                failing = problem
                with self.lock:
                    self.consuming = {}  # nobody answered
                    self.consumers_polled_at = time.monotonic()
            wait = self.settings.exporter_poll_interval - (time.monotonic() - started)
            time.sleep(max(wait, 0.1))

    def poll_consumers(self) -> None:
        self.ping()  # a broker that does not answer: no inspect (its publish retries for ever)
        inspect = self.app.control.inspect(timeout=self.inspect_timeout)
        replies = inspect.active_queues() or {}
        answered = {
            str(host): {str(q["name"]) for q in queues or () if isinstance(q, dict) and "name" in q}
            for host, queues in replies.items()
        }
        with self.lock:
            self.consuming = answered
            self.consumers_seen.update((h, q) for h, qs in answered.items() for q in qs)
            self.consumers_polled_at = time.monotonic()

    def ping(self) -> None:
        try:
            self.redis.ping()
        except Exception:
            self.broker_ok = False
            raise
        self.broker_ok = True

    # --- the broker, per scrape -------------------------------------------------------------

    def read_broker(self) -> tuple[dict[str, int], dict[str, float], dict[str, float]] | None:
        """(lengths, oldest ages, beat's last sends) from one pipelined round trip; None (and
        broker_up 0) when the broker does not answer within BROKER_TIMEOUT."""
        from app.celery_app import SENT_AT_HEADER

        try:
            pipe = self.redis.pipeline(transaction=False)
            for keys in self.queue_keys.values():
                for key in keys:
                    pipe.llen(key)
                    pipe.lindex(key, -1)  # LPUSH in, BRPOP out: the oldest is at the tail
            pipe.hgetall(liveness.BEAT_LAST_SENT_KEY)
            replies = iter(pipe.execute())
        except redis.RedisError as exc:
            if self.broker_ok:  # once per outage (the poll's PING may have said it first)
                log.warning(
                    "exporter_broker_unreadable", error=f"{type(exc).__name__}: {exc}"[:300]
                )
            self.broker_ok = False
            return None
        self.broker_ok = True
        now = time.time()
        lengths: dict[str, int] = {}
        ages: dict[str, float] = {}
        for queue, keys in self.queue_keys.items():
            lengths[queue], ages[queue] = 0, 0.0
            for _ in keys:
                length, oldest = next(replies), next(replies)
                lengths[queue] += int(length or 0)
                sent_at = _header(oldest, SENT_AT_HEADER)
                if sent_at is not None:  # a message without the header: no age from it
                    ages[queue] = max(ages[queue], now - sent_at, 0.0)
        last_sent: dict[str, float] = {}
        for field, value in (next(replies) or {}).items():
            try:
                last_sent[field.decode()] = float(value)
            except (UnicodeDecodeError, ValueError):
                continue
        return lengths, ages, last_sent

    def healthy(self) -> str:
        """Empty when the events are connected and the broker answers a PING, else why not."""
        problems = [] if self.events_connected else ["events not connected"]
        try:
            self.ping()
        except Exception as exc:
            problems.append(f"broker does not answer: {type(exc).__name__}: {exc}"[:200])
        return "; ".join(problems)

    def describe(self) -> str:
        return (
            f"serving /metrics; events {'connected' if self.events_connected else 'disconnected'}"
            f", broker {'up' if self.broker_ok else 'down'}, {len(self.workers)} workers seen"
        )


def _header(raw: bytes | None, name: str) -> float | None:
    """A header of a kombu message as stored in Redis (JSON), as a float, or None."""
    if not raw:
        return None
    try:
        value = json.loads(raw)["headers"][name]
        return float(value) if isinstance(value, int | float | str) else None
    except (ValueError, KeyError, TypeError):
        return None


class _Collector(Collector):
    """The gauges, computed per scrape from the State, the last poll and the broker."""

    def __init__(self, exporter: Exporter) -> None:
        self.x = exporter

    def describe(self) -> Iterable[Any]:
        return []  # computed: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        x = self.x
        broker = x.read_broker()
        yield from self._workers()
        yield from self._consumers()
        if broker is not None:
            yield from self._broker(*broker)
        yield _gauge(
            "celery_exporter_events_connected",
            "1 while the event receiver is connected to the broker",
            [((), 1.0 if x.events_connected else 0.0)],
        )
        yield _gauge(
            "celery_exporter_broker_up",
            "1 if the last read of the broker (this scrape, or the poll) worked",
            [((), 1.0 if x.broker_ok else 0.0)],
        )

    def _workers(self) -> Iterator[GaugeMetricFamily]:
        x = self.x
        now = time.monotonic()
        with x.lock:
            x.forget_departed()
            rows = []
            for host in sorted(x.workers):
                beats = x.beats.get(host) or Beats()
                alive = beats.up(now)
                rows.append((host, alive, float(beats.active) if alive else 0.0))
        yield _gauge(
            "celery_worker_up",
            "1 while the worker instance's heartbeats arrive (Celery's worker.alive)",
            [((host,), 1.0 if alive else 0.0) for host, alive, _ in rows],
            ("hostname",),
        )
        yield _gauge(
            "celery_worker_tasks_active",
            "Tasks the worker instance runs now (its last heartbeat; 0 when it is not up)",
            [((host,), active) for host, _, active in rows],
            ("hostname",),
        )

    def _consumers(self) -> Iterator[GaugeMetricFamily]:
        x = self.x
        stale_after = x.settings.exporter_poll_interval * 2 + x.inspect_timeout + 5
        with x.lock:
            x.forget_departed()
            polled = x.consumers_polled_at
            fresh = polled is not None and time.monotonic() - polled <= stale_after
            consuming = {h: set(qs) for h, qs in x.consuming.items()} if fresh else {}
            seen = sorted(x.consumers_seen)
        yield _gauge(
            "celery_worker_consuming",
            "1 if the worker instance answered the last inspect consuming the queue, else 0",
            [((h, q), 1.0 if q in consuming.get(h, ()) else 0.0) for h, q in seen],
            ("hostname", "queue_name"),
        )
        counts = dict.fromkeys(QUEUES, 0)
        for queues in consuming.values():
            for queue in queues:
                counts[queue] = counts.get(queue, 0) + 1
        yield _gauge(
            "celery_active_consumer_count",
            "Worker instances consuming the queue (the last inspect's answers)",
            [((q,), float(n)) for q, n in sorted(counts.items())],
            ("queue_name",),
        )

    def _broker(
        self, lengths: dict[str, int], ages: dict[str, float], last_sent: dict[str, float]
    ) -> Iterator[GaugeMetricFamily]:
        yield _gauge(
            "celery_queue_length",
            "Messages waiting in the queue (LLEN, priority sub-queues included)",
            [((q,), float(n)) for q, n in lengths.items()],
            ("queue_name",),
        )
        yield _gauge(
            "celery_queue_oldest_message_age_seconds",
            "Age of the queue's oldest waiting message (its sent_at header); 0 when empty",
            [((q,), age) for q, age in ages.items()],
            ("queue_name",),
        )
        schedule = self.x.app.conf.beat_schedule or {}
        now = datetime.now(UTC)
        sent_rows, period_rows = [], []
        for entry, spec in sorted(schedule.items()):
            task = str(spec.get("task", ""))
            if entry in last_sent:
                sent_rows.append(((entry, task), last_sent[entry]))
            try:
                period = period_seconds(spec.get("schedule"), now)
            except Exception:  # an exotic schedule: no period rather than no scrape
                period = None
            if period is not None:
                period_rows.append(((entry, task), period))
        yield _gauge(
            "celery_beat_entry_last_sent_timestamp_seconds",
            "When beat last sent the entry (epoch seconds); absent until it first does",
            sent_rows,
            ("entry", "task"),
        )
        yield _gauge(
            "celery_beat_entry_period_seconds",
            "The entry's period (a crontab: the gap between its next two runs)",
            period_rows,
            ("entry", "task"),
        )


def _gauge(
    name: str,
    doc: str,
    rows: Iterable[tuple[tuple[str, ...], float]],
    labels: tuple[str, ...] = (),
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


# --- HTTP -------------------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    on_turn: Callable[[], None] | None = None

    def service_actions(self) -> None:  # each turn of serve_forever's loop (0.5 s at most)
        if self.on_turn is not None:
            self.on_turn()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client refused in the TLS handshake (no or a foreign certificate): a line, no traceback.
        error = str(sys.exc_info()[1])[:200]
        log.warning("exporter_request_failed", client=str(client_address[0]), error=error)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The server side of HTTPS; with a client CA, a client certificate it signed is required.
    The handshake happens in the request's thread (do_handshake_on_connect=False), so a slow
    client never holds the accepting loop."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.exporter_tls_cert, settings.exporter_tls_key)
        if settings.exporter_tls_client_ca:
            ctx.load_verify_locations(settings.exporter_tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"app.exporter: APP_EXPORTER_TLS_*: {exc}") from None
    return ctx


def wsgi_app(exporter: Exporter, user: str, password: str) -> Callable[..., Iterable[bytes]]:
    expected = (user.encode(), password.encode())

    def authorized(header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given_user, _, given_password = base64.b64decode(encoded.strip()).partition(b":")
        except (binascii.Error, ValueError):
            return False
        user_ok = hmac.compare_digest(given_user, expected[0])
        password_ok = hmac.compare_digest(given_password, expected[1])
        return user_ok and password_ok

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        headers: list[tuple[str, str]] = [("Content-Type", "text/plain; charset=utf-8")]
        if path == "/metrics":
            if not authorized(environ.get("HTTP_AUTHORIZATION", "")):
                status, body = "401 Unauthorized", b"unauthorized\n"
                headers.append(("WWW-Authenticate", 'Basic realm="celery-exporter"'))
            else:
                status, body = "200 OK", generate_latest(exporter.registry)
                headers = [("Content-Type", CONTENT_TYPE_LATEST)]
        elif path == "/healthz":
            problem = exporter.healthy()
            status, body = ("503 Service Unavailable", f"{problem}\n".encode())
            if not problem:
                status, body = "200 OK", b"ok\n"
        else:
            status, body = "404 Not Found", b"not found\n"
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return app


class ExporterLiveness(liveness.Liveness):
    """Alive while the web server's loop turns; a broker outage is reported, not restarted."""

    def problem(self) -> str:
        if self.last_stamp is None:
            return "starting"
        age = time.monotonic() - self.last_stamp
        return f"web server loop silent for {age:.0f} s" if age > liveness.LOOP_STALE_AFTER else ""


def main() -> None:
    try:
        settings = get_settings()
    except SettingsError as exc:
        raise SystemExit(f"app.exporter: {exc}") from None
    if not settings.exporter_password:
        raise SystemExit(
            "app.exporter: APP_EXPORTER_PASSWORD is not set: /metrics is served only behind HTTP "
            "basic auth (APP_EXPORTER_USER and APP_EXPORTER_PASSWORD); refusing to start"
        )
    logs.configure(settings.log_format, settings.log_level)
    from app.celery_app import celery_app

    exporter = Exporter(celery_app, settings)
    address, port = settings.exporter_address, settings.exporter_port
    try:
        server = make_server(
            address,
            port,
            wsgi_app(exporter, settings.exporter_user, settings.exporter_password),
            server_class=_Server6 if ":" in address else _Server,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        raise SystemExit(f"app.exporter: cannot listen on {address}:{port}: {exc}") from None
    if settings.exporter_tls_cert:
        server.socket = tls_context(settings).wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    watchdog = ExporterLiveness("exporter", exporter.describe)
    server.on_turn = watchdog.stamp
    for target, name in ((exporter.run_events, "events"), (exporter.run_polls, "polls")):
        threading.Thread(target=target, name=name, daemon=True).start()

    def stop(signum: int, frame: Any) -> None:  # serve_forever returns; its thread cannot ask
        threading.Thread(target=server.shutdown, name="stop", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    watchdog.start()
    log.info("exporter_started", address=address, port=port)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        watchdog.stopping = True
        liveness.notify("STOPPING=1\nSTATUS=stopping")
        server.server_close()
        log.info("exporter_stopped")


if __name__ == "__main__":
    main()
