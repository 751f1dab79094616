"""A worker's task events published in batches: one PUBLISH every FLUSH_INTERVAL at most.

Celery's worker buffers its task events and flushes the buffer at the event loop's next turn: at a
few hundred tasks a second that is about one PUBLISH for every event, and Redis copies each one,
over TLS, to every subscriber (Flower, the metrics' exporter: docs/BENCHMARKS.md). This consumer
bootstep takes the flush off the loop's next turn and makes it a timer of the loop instead, every
FLUSH_INTERVAL; Celery's own limit (a flush at 24 events) stays. An event reaches Flower and the
exporter at most FLUSH_INTERVAL later; heartbeats and other worker events are not buffered. The
buffer is flushed when the consumer stops, and when the broker is away Celery's dispatcher keeps
what it could not publish and sends it with the next flush after the return.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from app import logs

log = logs.get_logger(__name__)

FLUSH_INTERVAL = 0.1  # seconds


class BatchedTaskEvents(bootsteps.StartStopStep):
    """Consumer bootstep: the task events' buffer flushed on a timer, not at every loop turn."""

    requires = ("celery.worker.consumer.events:Events",)

    def start(self, c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None or getattr(c, "hub", None) is None:
            return  # no event loop (solo, threads): Celery flushes at once, as before
        # The Events step creates a dispatcher on every (re)start of the consumer, asking for a
        # flush at the loop's next turn for each buffered event; and the consumer cancels its
        # timer entries when the connection is lost: both are set again here each time.
        dispatcher.on_send_buffered = None
        c.hub.timer.call_repeatedly(FLUSH_INTERVAL, self.flush, (c,))

    def stop(self, c: Any) -> None:
        self.flush(c)

    def shutdown(self, c: Any) -> None:
        self.flush(c)

    @staticmethod
    def flush(c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None:
            return
        try:
            dispatcher.flush(errors=True, groups=True)
        except Exception as exc:  # never the worker's loop: the next flush tries again
            log.warning("task_events_flush_failed", error=f"{type(exc).__name__}: {exc}"[:300])
