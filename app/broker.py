"""Kombu's Redis transport with one loss closed: a message popped while the broker is full.

A consumer takes a message with BRPOP (allowed at `maxmemory`: it frees memory) and only then
records it in the `unacked` hash (HSET/ZADD: refused with OOM under `noeviction`). Unpatched, the
refusal drops the message (in neither the queue nor `unacked`) and the exception ends the
consumer for good while the process stays up (Celery #5716). Here the consumer holds the message
and retries the record until the broker accepts writes again, keeping systemd's watchdog fed
(it is deliberately waiting, not wedged) and saying why on its STATUS line. Once recorded the
message is safe whatever happens to the worker. Imported for its effect by app.celery_app.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from app import liveness, logs

log = logs.get_logger(__name__)

_record_unacked = kombu_redis.QoS.append


def _append_waiting_out_oom(self: Any, message: Any, delivery_tag: Any) -> Any:
    started = time.monotonic()
    delay, logged = 0.2, 0.0
    while True:
        try:
            return _record_unacked(self, message, delivery_tag)
        except redis.exceptions.OutOfMemoryError as exc:
            held = time.monotonic() - started
            liveness.waiting(f"broker full (OOM): holding 1 message for {held:.0f} s")
            if held - logged >= 10 or logged == 0.0:
                logged = held or 0.001
                log.error(
                    "broker_full_holding_message", held_seconds=round(held, 1), error=str(exc)
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


kombu_redis.QoS.append = _append_waiting_out_oom


def explain_refusal(exc: BaseException) -> str | None:
    """A producer's one-line reason when the broker refused a message, else None."""
    # redis-py raises OutOfMemoryError; kombu re-raises it as OperationalError with Redis's text.
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or "used memory > 'maxmemory'" in str(
        exc
    ):
        return (
            "the broker is full: Redis is at its maxmemory and refuses new messages, so nothing "
            "was queued; consume the backlog or raise redis_maxmemory (docs/RUNBOOK.md, "
            f"'Broker full'). Redis said: {exc}"
        )
    return None
