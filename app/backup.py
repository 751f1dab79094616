"""Backup and restore of the pricing tables (gzip JSON), with retention."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.files import write_atomic
from app.models import Customer, Material, MaterialCostChange, Quote, QuoteVersion

FORMAT = "celery-bundle-pricing-backup"
VERSION = 1
# Restore order follows the foreign keys.
TABLES: list[Table] = [
    Customer.__table__,  # type: ignore[list-item]
    Material.__table__,  # type: ignore[list-item]
    MaterialCostChange.__table__,  # type: ignore[list-item]
    Quote.__table__,  # type: ignore[list-item]
    QuoteVersion.__table__,  # type: ignore[list-item]
]
PATTERN = "pricing-*.json.gz"


def _plain(value: Any) -> Any:
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def dump(session: Session) -> dict[str, Any]:
    # One snapshot for every table (the caller's transaction is REPEATABLE READ).
    tables = {}
    for table in TABLES:
        rows = session.execute(select(table).order_by(*table.primary_key.columns)).mappings()
        tables[table.name] = [{k: _plain(v) for k, v in row.items()} for row in rows]
    return {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "tables": tables,
    }


def write_backup(directory: Path, payload: dict[str, Any], day: date) -> Path:
    path = directory / f"pricing-{day:%Y%m%d}.json.gz"
    raw = json.dumps(payload, sort_keys=True).encode()
    write_atomic(path, gzip.compress(raw, mtime=0), mode=0o640)
    return path


def prune(directory: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` backups (names sort by date)."""
    files = sorted(directory.glob(PATTERN))
    doomed = files[:-keep] if len(files) > keep else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return [p.name for p in doomed]


def _typed(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name not in table.c:
            raise ValidationError(f"backup: table {table.name} has no column {name!r}")
        column = table.c[name]
        if value is None:
            out[name] = None
            continue
        try:
            kind = column.type.python_type
        except NotImplementedError:
            kind = object
        if kind is uuid.UUID:
            value = uuid.UUID(value)
        elif kind is Decimal:
            value = Decimal(value)
        elif kind is datetime:
            value = datetime.fromisoformat(value)
        out[name] = value
    return out


def restore(session: Session, path: Path) -> dict[str, int]:
    """Upsert every row of a backup (restoring twice gives the same state)."""
    try:
        payload = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{path}: not a readable backup ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValidationError(f"{path}: not a {FORMAT} file")
    if payload.get("version") != VERSION:
        raise ValidationError(f"{path}: backup version {payload.get('version')} unsupported")
    counts = {}
    for table in TABLES:
        rows = [_typed(table, r) for r in payload["tables"].get(table.name, [])]
        keys = [c.name for c in table.primary_key.columns]
        for row in rows:
            stmt = insert(table).values(**row)
            updates = {k: stmt.excluded[k] for k in row if k not in keys}
            session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates))
        counts[table.name] = len(rows)
        # Identity columns continue after the restored ids.
        pk = table.primary_key.columns[0]
        if len(keys) == 1 and pk.type.python_type is int:
            session.execute(
                select(
                    func.setval(
                        func.pg_get_serial_sequence(table.name, pk.name),
                        func.greatest(select(func.max(pk)).scalar_subquery(), 1),
                    )
                )
            )
    return counts
