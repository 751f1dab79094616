"""Bare Celery, the yardstick of bench/decompose.py: Celery's defaults plus what the fleet's
guarantees need at the least (acks_late, prefetch 1, reject_on_worker_lost), results ignored, no
events, Celery's own logging. Same broker, same TLS, same login as the deployed app (its
app.env): only the app around the worker differs.

    celery --app=bare_app:app worker -Q default --loglevel=WARNING
"""

from __future__ import annotations

import os

from celery import Celery
from tls_off import plain

from app.settings import get_settings

# BENCH_OFF=tls: over the broker's plain port (bench/decompose.py's `bare-plain`).
url = get_settings().broker_url
app = Celery("bare", broker=plain(url) if "tls" in os.environ.get("BENCH_OFF", "") else url)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_send_task_events=False,
    task_send_sent_event=False,
    # The deployed instance's own unacked hash and sweep (worker-NAME.env): the same broker work.
    broker_transport_options={"unacked_key": get_settings().unacked_key},
)
