"""Maintenance tasks (queue `maintenance`): expiry, cleanup, health, database care, alerts."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy.exc
from sqlalchemy import delete, func, select, text, update

from app import health, mail
from app.celery_app import celery_app
from app.db import session_scope
from app.deliveries import mail_each_once_via_broker
from app.errors import ValidationError
from app.logs import get_logger
from app.models import ApplicationLog, InventoryItem, Quote, StockReservation
from app.settings import get_settings
from app.validation import require_dict, require_int, require_number, require_str

log = get_logger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@celery_app.task(bind=True, name="maintenance.expire_old_quotes")
def expire_old_quotes(self: Any) -> dict[str, Any]:
    """Draft and sent quotes past their validity become expired (status-guarded: idempotent)."""
    with session_scope() as session:
        expired = session.scalars(
            update(Quote)
            .where(Quote.status.in_(("draft", "sent")), Quote.valid_until < func.now())
            .values(status="expired", updated_at=func.now())
            .returning(Quote.quote_number)
        ).all()
    return {
        "expired_quotes": len(expired),
        "quotes": sorted(expired),
        "execution_time": _now(),
        "status": "success",
    }


@celery_app.task(bind=True, name="maintenance.cleanup_expired_reservations")
def cleanup_expired_reservations(self: Any) -> dict[str, Any]:
    """Expire active reservations past expires_at and give their stock back, exactly once."""
    with session_scope() as session:
        rows = session.execute(
            update(StockReservation)
            .where(StockReservation.status == "active", StockReservation.expires_at < func.now())
            .values(status="expired")
            .returning(StockReservation.item_id, StockReservation.quantity)
        ).all()
        released: dict[int, int] = {}
        for item_id, quantity in rows:
            released[item_id] = released.get(item_id, 0) + quantity
        for item_id, quantity in released.items():
            session.execute(
                update(InventoryItem)
                .where(InventoryItem.id == item_id)
                .values(
                    reserved=func.greatest(InventoryItem.reserved - quantity, 0),
                    updated_at=func.now(),
                )
            )
    return {
        "cleaned_reservations": len(rows),
        "released_units": sum(released.values()),
        "execution_time": _now(),
        "status": "success",
    }


@celery_app.task(bind=True, name="maintenance.check_system_health")
def check_system_health(
    self: Any,
    max_queue_length: int = health.DEFAULT_MAX_QUEUE_LENGTH,
    min_disk_free_percent: float = health.DEFAULT_MIN_DISK_FREE_PERCENT,
    max_memory_percent: float = health.DEFAULT_MAX_MEMORY_PERCENT,
) -> dict[str, Any]:
    """Check database, Redis, disk, memory, queues; when unhealthy, send a system alert."""
    status = health.run_checks(
        max_queue_length=require_int(max_queue_length, "max_queue_length", minimum=0),
        min_disk_free_percent=float(
            require_number(
                min_disk_free_percent, "min_disk_free_percent", positive=False, maximum=100
            )
        ),
        max_memory_percent=float(
            require_number(max_memory_percent, "max_memory_percent", maximum=100)
        ),
    )
    incident = health.track_incident(status)
    alert_id = None
    if not status["healthy"]:
        log.warning("system_unhealthy", problems=status["problems"], incident=incident)
    if incident in ("opened", "resolved"):
        alert = send_system_alert.apply_async(
            (
                {
                    "alert_type": "system_health" if incident == "opened" else "system_health_ok",
                    "problems": status["problems"],
                    "status": status,
                    "timestamp": _now(),
                },
            ),
            # one alert per health-check run, even if this task runs twice
            task_id=f"alert-{self.request.id}" if self.request.id else None,
        )
        alert_id = alert.id
    return {
        "health_status": status,
        "incident": incident,
        "alert_task_id": alert_id,
        "execution_time": _now(),
        "status": "success",
    }


@celery_app.task(bind=True, name="maintenance.database_maintenance", track_started=True)
def database_maintenance(self: Any, retention_days: int = 30) -> dict[str, Any]:
    """Delete application logs older than retention_days, then ANALYZE the app's tables."""
    days = require_int(retention_days, "retention_days", minimum=1, maximum=3650)
    cutoff = datetime.now(UTC) - timedelta(days=days)
    with session_scope() as session:
        deleted = session.execute(
            delete(ApplicationLog).where(ApplicationLog.created_at < cutoff)
        ).rowcount  # type: ignore[attr-defined]
    with session_scope() as session:
        # As the tables' owner (migration 0002): the tasks' role may not ANALYZE them itself.
        session.execute(text("SELECT app_analyze()"))
    return {
        "maintenance_results": {
            "deleted_logs": deleted,
            "statistics_updated": True,
            "cutoff": cutoff.isoformat(),
        },
        "execution_time": _now(),
        "status": "success",
    }


@celery_app.task(bind=True, name="maintenance.send_system_alert")
def send_system_alert(self: Any, alert_data: dict[str, Any]) -> dict[str, Any]:
    """Mail the alert to APP_ALERT_RECIPIENTS (once per run), then record it in application_logs."""
    data = require_dict(alert_data, "alert_data")
    alert_type = require_str(data.get("alert_type"), "alert_data.alert_type", max_len=100)
    body = json.dumps(data, indent=2, sort_keys=True, default=str)
    if len(body) > 100_000:
        raise ValidationError("alert_data: larger than 100000 bytes")
    recipients = list(get_settings().alert_recipients)
    run = self.request.id or f"local-{time.time_ns()}"
    subject = f"System Alert - {alert_type}"
    problems = data.get("problems")
    text_body, html = mail.render(
        "system_alert",
        subject,
        alert_type=alert_type,
        problems=[str(p) for p in problems] if isinstance(problems, list) else [],
        data_json=body,
    )
    # Mailed first, through the broker's ledger: an alert about the database goes out while the
    # database is down. Its application_logs row is a record, written if the database answers.
    mail_each_once_via_broker(f"alert:{run}", recipients, subject, text_body, html)
    try:
        with session_scope() as session:
            logged = session.scalar(
                select(ApplicationLog.id).where(
                    ApplicationLog.event == "system_alert",
                    ApplicationLog.data["task_id"].astext == run,
                )
            )
            if logged is None:  # a rerun of the same message logs it once
                session.add(
                    ApplicationLog(
                        level="WARNING",
                        event="system_alert",
                        data={"alert_type": alert_type, "task_id": run, "recipients": recipients},
                    )
                )
        recorded = True
    except sqlalchemy.exc.SQLAlchemyError as exc:
        log.warning("system_alert_not_recorded", alert_type=alert_type, error=str(exc)[:500])
        recorded = False
    if not recipients:
        log.warning("system_alert_logged_only", alert_type=alert_type, alert=data)
    return {
        "alert_sent": bool(recipients),
        "recipients": recipients,
        "alert_type": alert_type,
        "recorded": recorded,
        "status": "success" if recipients else "logged_only",
    }


@celery_app.task(bind=True, name="maintenance.worker_health_check")
def worker_health_check(self: Any) -> dict[str, Any]:
    """Run the checks from this worker; answers which worker ran it and whether it is healthy."""
    start = time.monotonic()
    status = health.run_checks()
    return {
        "worker_id": self.request.hostname,
        "timestamp": _now(),
        "execution_time": round(time.monotonic() - start, 3),
        "checks": {name: c["ok"] for name, c in status["checks"].items()},
        "problems": status["problems"],
        "healthy": status["healthy"],
    }
