"""Each task lands in its own queue: messages are read back from Redis with no worker consuming."""

from __future__ import annotations

import json

import redis
from services import RedisServer
from test_config import EXPECTED_TASKS

from app.celery_app import celery_app
from app.health import PRIORITY_SEP, queue_lengths
from app.queues import QUEUES

IDLE_DB = 3  # a broker database no worker consumes


def _messages(client: redis.Redis, key: str) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def test_each_task_lands_in_its_own_queue(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url(IDLE_DB))
    client.flushdb()
    with celery_app.connection_for_write(redis_server.url(IDLE_DB)) as conn:
        for name in EXPECTED_TASKS:
            celery_app.send_task(name, connection=conn)
    for queue in QUEUES:
        names = sorted(m["headers"]["task"] for m in _messages(client, queue))  # type: ignore[index]
        expected = sorted(n for n, q in EXPECTED_TASKS.items() if q == queue)
        assert names == expected, queue
    assert queue_lengths(client) == {
        q: sum(1 for v in EXPECTED_TASKS.values() if v == q) for q in QUEUES
    }


def test_queue_override_and_priority_sub_queues_are_counted(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url(IDLE_DB))
    client.flushdb()
    with celery_app.connection_for_write(redis_server.url(IDLE_DB)) as conn:
        celery_app.send_task("ops.probe", args=["x"], queue="pricing", connection=conn)
        celery_app.send_task("ops.probe", args=["y"], priority=6, connection=conn)
    assert client.llen("pricing") == 1
    assert client.llen(f"default{PRIORITY_SEP}6") == 1
    lengths = queue_lengths(client)
    assert lengths["pricing"] == 1 and lengths["default"] == 1
