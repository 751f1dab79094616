"""Kombu's Redis transport with one loss and one duplicate closed: a message popped just before
the broker refused writes (full) or went away (crashed), and a task acked while it was full.

A consumer takes a message with BRPOP (allowed at `maxmemory`: it frees memory) and only then
records it in the `unacked` hash (HSET/ZADD: refused with OOM under `noeviction`). Unpatched, the
refusal drops the message (in neither the queue nor `unacked`) and the exception ends the
consumer for good while the process stays up (Celery #5716). Here the consumer holds the message
and retries the record until the broker accepts writes again, keeping systemd's watchdog fed
(it is deliberately waiting, not wedged) and saying why on its STATUS line. Once recorded the
message is safe whatever happens to the worker. The same holds for a broker that crashed between
the pop and the record (Redis restarts in about a second): the record is retried for up to
BROKER_GONE_WAIT seconds. Acks are deliberately not held: on a lost connection Celery terminates
the running tasks and acks them, counting on that ack to fail so that the visibility timeout
brings them back; an ack held until Redis returned deleted them (measured: lost tasks).

An ack removes the message from `unacked` with ZREM and HDEL, which Redis allows at maxmemory (they
free memory) — but kombu sends them inside MULTI/EXEC, and Redis refuses every command queued in
a transaction once it is full. Unpatched, a task that finished while the broker was full stayed
in `unacked` and ran a second time after the visibility timeout (measured: 10 of 300 in CI).
Here acks (and rejects without requeue) send the two commands pipelined without MULTI: accepted
when full; if the connection drops between them, the index entry or the payload is left alone,
which the visibility sweep skips or cleans (never a second run).

Imported for its effect by app.celery_app.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from app import liveness, logs

log = logs.get_logger(__name__)

# A broker that went away (crashed, restarting) is waited for this long before giving up: under
# systemd's watchdog (20 s), which a broker that does not answer stops feeding.
BROKER_GONE_WAIT = 15.0

_record_unacked = kombu_redis.QoS.append


def _holding(what: str, call: Callable[[], Any]) -> Any:
    """call() until the broker takes it: forever while it is full (it answers, it refuses),
    BROKER_GONE_WAIT while it does not answer."""
    started = time.monotonic()
    delay, logged = 0.2, -10.0
    error: redis.exceptions.RedisError
    while True:
        try:
            return call()
        except redis.exceptions.OutOfMemoryError as exc:
            reason, error = "broker full (OOM)", exc
        except redis.exceptions.ResponseError as exc:  # it answers, cannot persist: as full
            if "MISCONF" not in str(exc):
                raise
            reason, error = "broker cannot persist (MISCONF)", exc
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if time.monotonic() - started > BROKER_GONE_WAIT:
                raise
            reason, error = "broker gone", exc
        held = time.monotonic() - started
        liveness.waiting(f"{reason}: holding {what} for {held:.0f} s")
        if held - logged >= 10:
            logged = held
            log.error(
                "broker_refused_holding",
                what=what,
                reason=reason,
                held_seconds=round(held, 1),
                error=str(error)[:300],
            )
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _append(self: Any, message: Any, delivery_tag: Any) -> Any:
    return _holding("1 message", lambda: _record_unacked(self, message, delivery_tag))


def _remove_from_indices(self: Any, delivery_tag: Any) -> None:
    with self.channel.conn_or_acquire() as client:
        pipe = client.pipeline(transaction=False)  # no MULTI: allowed at maxmemory
        pipe.zrem(self.unacked_index_key, delivery_tag).hdel(self.unacked_key, delivery_tag)
        pipe.execute()


def _ack(self: Any, delivery_tag: Any) -> None:
    _remove_from_indices(self, delivery_tag)
    kombu_redis.virtual.QoS.ack(self, delivery_tag)


_reject = kombu_redis.QoS.reject


def _reject_without_multi(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
    if requeue:  # back in its queue: a write, refused when full like any other
        _reject(self, delivery_tag, requeue=True)
    else:  # dropped: for the broker the same as an ack
        _ack(self, delivery_tag)


kombu_redis.QoS.append = _append  # type: ignore[method-assign]
kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
kombu_redis.QoS.reject = _reject_without_multi  # type: ignore[method-assign]


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
    if "MISCONF" in str(exc):  # it cannot write its data to disk (AOF, or a snapshot)
        return (
            "the broker refuses writes: Redis cannot write its data to disk (a full disk, or no "
            "memory to fork) and holds new messages back until it can, so nothing was queued; "
            "free disk or memory on the data host (docs/RUNBOOK.md, 'Broker full'). "
            f"Redis said: {exc}"
        )
    return None
