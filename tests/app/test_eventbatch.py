"""The worker publishes its task events in batches (app.eventbatch): every event arrives, in
far fewer messages than events. Read on the broker's event channel, as Flower and the exporter
read it."""

from __future__ import annotations

import time
from typing import Any

import redis
from conftest import REDIS
from services import wait_for

from app import exporter as exporter_module
from app.celery_app import celery_app
from app.eventbatch import FLUSH_INTERVAL

TASKS = 300


def test_every_task_event_arrives_in_batches(alive: Any) -> None:
    channel = redis.Redis.from_url(REDIS.url(0)).pubsub()
    channel.psubscribe(exporter_module.events_topic(celery_app, 0))
    wait_for(lambda: channel.get_message(timeout=1.0) is not None, 10, "subscribed")
    results = [celery_app.send_task("celery.accumulate", args=[1]) for _ in range(TASKS)]
    ids = {r.id for r in results}
    seen: dict[str, set[str]] = {i: set() for i in ids}
    messages = 0  # the worker's messages holding any of these tasks' events
    stamps: list[float] = []  # when the worker made each of those events (its clock)
    deadline = time.monotonic() + 60
    while any(len(s) < 3 for s in seen.values()) and time.monotonic() < deadline:
        message = channel.get_message(timeout=1.0)
        if not message or message["type"] != "pmessage":
            continue
        mine = [
            e
            for e in exporter_module.decode_events(message["data"])
            if e.get("uuid") in ids and e.get("type") != "task-sent"
        ]
        messages += bool(mine)
        for event in mine:
            seen[event["uuid"]].add(event["type"])
            stamps.append(float(event["timestamp"]))
    channel.close()
    want = {"task-received", "task-started", "task-succeeded"}
    missing = {i: want - s for i, s in seen.items() if want - s}
    example = next(iter(missing.items()), None)
    assert not missing, f"{len(missing)} of {TASKS} tasks lack events, e.g. {example}"
    # Celery's own flush at every turn of the loop: about 2 messages a task (3 events). Batched:
    # at most one message per FLUSH_INTERVAL of the span the worker made the events in, plus one
    # per 24 events (Celery's limit); a quarter of the tasks when the worker ran them fast. A
    # starved worker (a busy machine) spreads them over more intervals: the bound grows with the
    # span, and must stay under the unbatched count for the test to tell the two apart.
    intervals = int((max(stamps) - min(stamps)) / FLUSH_INTERVAL) + 1
    bound = max(TASKS // 4, intervals + TASKS * 3 // 24)
    assert bound < 2 * TASKS, f"the tasks took {intervals} flush intervals: too slow to tell"
    assert messages <= bound, f"{messages} messages for {TASKS * 3} events of {TASKS} tasks"
