"""Health checks: database, Redis, disk, memory, and real queue lengths read from Redis; and the
incident they open or close (one alert per incident, not one per check)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psutil
import redis
from sqlalchemy import text

from app.celery_app import broker_redis, celery_app
from app.db import get_engine
from app.logs import get_logger
from app.queues import QUEUES
from app.settings import get_settings

# kombu's Redis transport keeps priorities > 0 in sub-lists named QUEUE + SEP + PRIORITY.
PRIORITY_SEP = "\x06\x16"
PRIORITIES = range(1, 10)

log = get_logger(__name__)

DEFAULT_MAX_QUEUE_LENGTH = 10_000
DEFAULT_MIN_DISK_FREE_PERCENT = 10.0
DEFAULT_MAX_MEMORY_PERCENT = 95.0


def queue_lengths(client: redis.Redis | None = None) -> dict[str, int]:
    """Messages waiting per queue (all priority sub-lists), straight from the broker."""
    client = client or broker_redis()
    with client.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(queue)
            for p in PRIORITIES:
                pipe.llen(f"{queue}{PRIORITY_SEP}{p}")
        sizes = pipe.execute()
    step = 1 + len(PRIORITIES)
    return {q: int(sum(sizes[i * step : (i + 1) * step])) for i, q in enumerate(QUEUES)}


def unacked_keys(client: redis.Redis | None = None) -> list[str]:
    """kombu's unacked hashes: `unacked:NAME` of each worker instance name (and a plain
    `unacked` left by a worker without APP_UNACKED_KEY)."""
    client = client or broker_redis()
    keys = client.scan_iter(match="unacked*", count=1000, _type="HASH")
    return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in keys)


def unacked_count(client: redis.Redis | None = None) -> int | None:
    """Messages delivered to workers and not yet acknowledged, over every unacked hash.

    None if the Redis user may not run SCAN or HLEN (informative, not a health criterion).
    """
    client = client or broker_redis()
    try:
        return sum(int(client.hlen(key)) for key in unacked_keys(client))
    except redis.exceptions.NoPermissionError:
        return None


def _timed(check: Any) -> dict[str, Any]:
    start = time.monotonic()
    try:
        result = {"ok": True, **(check() or {})}
    except Exception as exc:  # a health check reports every failure, it never raises
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    result["latency_ms"] = round((time.monotonic() - start) * 1000, 1)
    return result


def _existing(path: str) -> str:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


def run_checks(
    max_queue_length: int = DEFAULT_MAX_QUEUE_LENGTH,
    min_disk_free_percent: float = DEFAULT_MIN_DISK_FREE_PERCENT,
    max_memory_percent: float = DEFAULT_MAX_MEMORY_PERCENT,
) -> dict[str, Any]:
    settings = get_settings()

    def database() -> None:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))

    def broker() -> None:
        broker_redis().ping()

    def results() -> None:
        celery_app.backend.client.ping()

    def disk() -> dict[str, Any]:
        paths = {_existing(p) for p in (settings.report_dir, settings.backup_dir, "/")}
        usage = {}
        for p in sorted(paths):
            u = shutil.disk_usage(p)
            usage[p] = round(u.free * 100 / u.total, 1)
        low = {p: free for p, free in usage.items() if free < min_disk_free_percent}
        if low:
            raise RuntimeError(f"free space below {min_disk_free_percent}%: {low}")
        return {"free_percent": usage}

    def memory() -> dict[str, Any]:
        used = psutil.virtual_memory().percent
        if used > max_memory_percent:
            raise RuntimeError(f"memory {used}% used, above {max_memory_percent}%")
        return {"used_percent": used}

    def queues() -> dict[str, Any]:
        lengths = queue_lengths()
        long = {q: n for q, n in lengths.items() if n > max_queue_length}
        if long:
            raise RuntimeError(f"queues longer than {max_queue_length}: {long}")
        return {"lengths": lengths, "unacked": unacked_count()}

    checks = {
        "database": _timed(database),
        "redis": _timed(broker),
        "results": _timed(results),
        "disk": _timed(disk),
        "memory": _timed(memory),
        "queues": _timed(queues),
    }
    healthy = all(c["ok"] for c in checks.values())
    return {
        "status": "healthy" if healthy else "unhealthy",
        "healthy": healthy,
        "problems": [f"{name}: {c['error']}" for name, c in checks.items() if not c["ok"]],
        "checks": checks,
        "host": os.uname().nodename,
    }


# The open incident (its failing checks, since when), kept in the broker: when the broker is down
# no health task runs at all, so it is there whenever a check can read it.
INCIDENT_KEY = "health:incident"


def track_incident(status: dict[str, Any], client: redis.Redis | None = None) -> str | None:
    """Where this check stands against the open incident: "opened" (a new one, or other checks
    failing than before: alert), "ongoing" (the same checks still failing: no new alert),
    "resolved" (healthy again after one: alert once more), or None (healthy, nothing open).
    When the record cannot be read or written, it answers "opened": an alert twice rather than
    none."""
    failing = sorted(name for name, check in status["checks"].items() if not check["ok"])
    client = client or broker_redis()
    try:
        raw = client.get(INCIDENT_KEY)
        current = json.loads(raw) if raw else None
        if not failing:
            if current is None:
                return None
            client.delete(INCIDENT_KEY)
            return "resolved"
        if current is not None and current.get("checks") == failing:
            return "ongoing"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.set(INCIDENT_KEY, json.dumps({"checks": failing, "since": since}))
        return "opened"
    except (redis.RedisError, ValueError) as exc:
        log.warning("incident_state_unavailable", error=str(exc)[:200])
        return "opened" if failing else None
