"""The queue contract (app/queues.py) is the one the deployment checks inventories against."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.celery_app import celery_app
from app.queues import PREFIX_QUEUES, QUEUES

ROOT = Path(__file__).resolve().parents[2]


def test_the_worker_role_knows_exactly_the_apps_queues() -> None:
    defaults = yaml.safe_load((ROOT / "roles/celery_worker/defaults/main.yml").read_text())
    assert list(defaults["celery_worker_known_queues"]) == list(QUEUES)


def test_every_routed_queue_is_declared() -> None:
    assert set(PREFIX_QUEUES.values()) <= set(QUEUES)
    assert {q.name for q in celery_app.conf.task_queues} == set(QUEUES)
