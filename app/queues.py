"""The queue contract: the app's queues and which task goes to which, in one place.

Importable without building the Celery app (no settings, no broker): taskctl checks a --queue
against it, the tests and the benchmarks send to it, and tests/app/test_queues.py holds the
worker role's `celery_worker_known_queues` (what an inventory may name) to it.
"""

from __future__ import annotations

QUEUES = ("default", "pricing", "notifications", "data_processing", "maintenance")

# Task name prefix -> queue. The task names are the contract, not the module paths.
PREFIX_QUEUES = {
    "pricing": "pricing",
    "notifications": "notifications",
    "data": "data_processing",
    "maintenance": "maintenance",
}


def queue_for(task_name: str) -> str:
    """The queue a task goes to unless its sender names one."""
    return PREFIX_QUEUES.get(task_name.split(".", 1)[0], "default")
