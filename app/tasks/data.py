"""Data tasks (queue `data_processing`): daily reports and pricing backups."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import backup, reports
from app.celery_app import celery_app
from app.db import get_engine
from app.errors import ValidationError
from app.logs import get_logger
from app.settings import get_settings
from app.validation import require_str

log = get_logger(__name__)


def _report_day(value: Any) -> date:
    today = datetime.now(UTC).date()
    if value is None:
        return today - timedelta(days=1)
    raw = require_str(value, "report_date", max_len=10)
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise ValidationError(f"report_date: {raw!r} is not a date YYYY-MM-DD") from None
    if day > today:
        raise ValidationError(f"report_date: {raw} is in the future")
    return day


@celery_app.task(bind=True, name="data.generate_daily_reports", track_started=True)
def generate_daily_reports(self: Any, report_date: str | None = None) -> dict[str, Any]:
    """Write the report files of one day (default: yesterday, UTC) into APP_REPORT_DIR."""
    day = _report_day(report_date)
    with get_engine().connect() as conn, conn.begin(), Session(bind=conn) as session:
        summary, rows = reports.build(session, day)
    files = reports.write(Path(get_settings().report_dir), summary, rows)
    log.info("daily_report_written", report_date=day.isoformat(), files=files)
    return {
        "report_date": day.isoformat(),
        "files": files,
        "quotes_created": summary["quotes_created"],
        "quotes_value": summary["quotes_value"],
        "cost_changes": len(summary["material_cost_changes"]),
        "low_stock_items": len(summary["low_stock_items"]),
        "status": "success",
    }


@celery_app.task(bind=True, name="data.backup_pricing_data", track_started=True)
def backup_pricing_data(self: Any) -> dict[str, Any]:
    """Back up the pricing tables to APP_BACKUP_DIR/pricing-YYYYMMDD.json.gz, keep the newest."""
    settings = get_settings()
    engine = get_engine().execution_options(isolation_level="REPEATABLE READ")
    # One snapshot of all pricing tables.
    with engine.connect() as conn, conn.begin(), Session(bind=conn) as session:
        payload = backup.dump(session)
    directory = Path(settings.backup_dir)
    path = backup.write_backup(directory, payload, datetime.now(UTC).date())
    deleted = backup.prune(directory, settings.backup_keep)
    counts = {name: len(rows) for name, rows in payload["tables"].items()}
    log.info("pricing_backup_written", file=str(path), deleted=deleted)
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "tables": counts,
        "deleted": deleted,
        "kept": settings.backup_keep,
        "status": "success",
    }
