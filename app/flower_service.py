"""Flower under systemd (flower.service, Type=notify): `python -m app.flower_service`.

Runs `celery --app=app.celery_app flower` in this process with a watchdog thread
(app/liveness.py, FlowerLiveness) that sends READY=1 once the web server answers and WATCHDOG=1
only while its /healthcheck answers within 5 s and the broker answers a PING: a Flower whose loop
hangs, or that lost the broker for good, is killed and restarted by systemd. Flower reads its
options from FLOWER_* variables (flower.env); the same ones name the URL checked here.

Flower 2 serves /metrics to anyone, though its other pages ask the login: here it asks it too
(the cluster's metrics come from app.exporter; nothing scrapes Flower). /healthcheck stays open:
it says only "OK", and the watchdog asks it.
"""

from __future__ import annotations

import os

from app import liveness


def healthcheck_url() -> str:
    address = os.environ.get("FLOWER_ADDRESS", "") or "127.0.0.1"
    if address in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind answers on loopback
        address = "127.0.0.1"
    if ":" in address:
        address = f"[{address}]"
    port = os.environ.get("FLOWER_PORT", "") or "5555"
    prefix = os.environ.get("FLOWER_URL_PREFIX", "").strip("/")
    return f"http://{address}:{port}/{prefix + '/' if prefix else ''}healthcheck"


def metrics_behind_login() -> None:
    from flower.views import monitor
    from tornado import web

    monitor.Metrics.get = web.authenticated(monitor.Metrics.get)


def main() -> None:
    from app.celery_app import celery_app

    metrics_behind_login()
    liveness.FlowerLiveness(healthcheck_url()).start()
    raise SystemExit(celery_app.start(["flower"]) or 0)


if __name__ == "__main__":
    main()
