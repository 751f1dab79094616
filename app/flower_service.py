"""Flower under systemd (flower.service, Type=notify): `python -m app.flower_service`.

Runs `celery --app=app.celery_app flower` in this process with a watchdog thread
(app/liveness.py, FlowerLiveness) that sends READY=1 once the web server answers and WATCHDOG=1
only while its /healthcheck answers within 5 s and the broker answers a PING: a Flower whose loop
hangs, or that lost the broker for good, is killed and restarted by systemd. Flower reads its
options from FLOWER_* variables (flower.env); the same ones name the URL checked here. With
FLOWER_CERTFILE it serves HTTPS, and the watchdog verifies it with APP_FLOWER_CA.

Flower 2 serves /metrics and /healthcheck to anyone, though its other pages ask the login. Here
/metrics asks it too (the cluster's metrics come from app.exporter; nothing scrapes Flower), and
/healthcheck answers without a login only to the host itself (the watchdog, the deploy's wait).
"""

from __future__ import annotations

import os
import ssl

from app import liveness


def _address() -> str:
    address = os.environ.get("FLOWER_ADDRESS", "") or "127.0.0.1"
    if address in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind answers on loopback
        address = "127.0.0.1"
    return address


def healthcheck_url() -> str:
    address = _address()
    host = f"[{address}]" if ":" in address else address
    port = os.environ.get("FLOWER_PORT", "") or "5555"
    prefix = os.environ.get("FLOWER_URL_PREFIX", "").strip("/")
    scheme = "https" if os.environ.get("FLOWER_CERTFILE") else "http"
    return f"{scheme}://{host}:{port}/{prefix + '/' if prefix else ''}healthcheck"


def healthcheck_context() -> ssl.SSLContext | None:
    """The watchdog's TLS context: the certificate verified against APP_FLOWER_CA."""
    if not os.environ.get("FLOWER_CERTFILE"):
        return None
    return ssl.create_default_context(cafile=os.environ.get("APP_FLOWER_CA") or None)


def logins_everywhere_but_here() -> None:
    """/metrics behind the login; /healthcheck too, except for requests from this host."""
    from flower.views import monitor
    from tornado import web

    monitor.Metrics.get = web.authenticated(monitor.Metrics.get)
    local = {"127.0.0.1", "::1", _address()}
    healthcheck = monitor.Healthcheck.get

    async def get(self: monitor.Healthcheck) -> None:
        if self.request.remote_ip not in local:
            self.get_current_user()  # raises 401 (with Flower's challenge) without a valid login
        await healthcheck(self)

    monitor.Healthcheck.get = get


def main() -> None:
    from app.celery_app import celery_app

    logins_everywhere_but_here()
    liveness.FlowerLiveness(healthcheck_url(), healthcheck_context()).start()
    raise SystemExit(celery_app.start(["flower"]) or 0)


if __name__ == "__main__":
    main()
