"""The result store (its own Redis, `redis-server@results`): what a result records, and a task
that completes even when its result cannot be stored.

Results are metadata an operator or a caller reads back (`taskctl status`, chords, the HTTP API):
state, return value or error, and with `result_extended` the task's name, worker, queue and
retries. Celery's extended results also copy the task's arguments, which hold e-mail addresses,
phone numbers and whole pricing batches: a second copy of personal data, readable by every holder
of the result store's credentials, for no reader in this bundle. They are left out here.

A result write refused at `maxmemory` (a result store configured `noeviction`, or the broker's
Redis used for results) used to fail the task's completion itself ("Exception raised outside
body"); on the threads pool the request then never completed, and once every thread's request
was stuck the instance consumed nothing, alive to the watchdog (measured: both `notifications`
instances wedged by one 30 s full broker). Here a refused result write is logged
(`result_not_stored`) and the task completes and is acked; its result reads PENDING.
Imported for its effect by app.celery_app.
"""

from __future__ import annotations

from typing import Any

import redis
from celery.backends.redis import RedisBackend

from app import logs

log = logs.get_logger(__name__)

_meta = RedisBackend._get_result_meta


def _meta_without_arguments(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    meta = _meta(self, *args, **kwargs)
    meta.pop("args", None)
    meta.pop("kwargs", None)
    return meta


_store = RedisBackend.set


def _store_unless_full(self: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return _store(self, key, value, *args, **kwargs)
    except redis.exceptions.OutOfMemoryError as exc:
        log.error(
            "result_not_stored",
            key=key.decode() if isinstance(key, bytes) else str(key),
            reason="result store full (OOM)",
            error=str(exc)[:200],
        )
        return None


RedisBackend._get_result_meta = _meta_without_arguments
RedisBackend.set = _store_unless_full
