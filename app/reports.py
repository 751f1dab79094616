"""The daily report: quotes, price changes, deliveries and stock of one UTC day."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.files import write_atomic
from app.models import Customer, Delivery, InventoryItem, MaterialCostChange, Quote


def build(session: Session, day: date) -> tuple[dict[str, Any], list[list[str]]]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    end = start + timedelta(days=1)
    quotes = session.execute(
        select(Quote, Customer.name)
        .join(Customer, Customer.id == Quote.customer_id)
        .where(Quote.created_at >= start, Quote.created_at < end)
        .order_by(Quote.quote_number)
    ).all()
    by_status: dict[str, dict[str, Any]] = {}
    total = Decimal("0")
    rows = [["quote_number", "customer", "material", "status", "version", "total_price"]]
    for quote, customer in quotes:
        entry = by_status.setdefault(quote.status, {"count": 0, "value": Decimal("0")})
        entry["count"] += 1
        entry["value"] += quote.total_price
        total += quote.total_price
        rows.append(
            [
                quote.quote_number,
                customer,
                quote.material_code,
                quote.status,
                str(quote.current_version),
                str(quote.total_price),
            ]
        )
    changes = session.scalars(
        select(MaterialCostChange)
        .where(MaterialCostChange.changed_at >= start, MaterialCostChange.changed_at < end)
        .order_by(MaterialCostChange.id)
    ).all()
    deliveries = dict(
        session.execute(
            select(Delivery.channel, func.count())
            .where(Delivery.sent_at >= start, Delivery.sent_at < end, Delivery.status == "sent")
            .group_by(Delivery.channel)
        ).all()
    )
    low_stock = session.scalars(
        select(InventoryItem.sku)
        .where(InventoryItem.quantity - InventoryItem.reserved <= InventoryItem.reorder_level)
        .order_by(InventoryItem.sku)
    ).all()
    summary = {
        "report_date": day.isoformat(),
        "quotes_created": len(quotes),
        "quotes_value": str(total),
        "quotes_by_status": {
            k: {"count": v["count"], "value": str(v["value"])} for k, v in sorted(by_status.items())
        },
        "material_cost_changes": [
            {
                "material": c.material_code,
                "old": str(c.old_cost),
                "new": str(c.new_cost),
                "at": c.changed_at.isoformat(),
            }
            for c in changes
        ],
        "deliveries_sent": deliveries,
        "low_stock_items": list(low_stock),
    }
    return summary, rows


def write(directory: Path, summary: dict[str, Any], rows: list[list[str]]) -> list[str]:
    """Files of one day; written again on a rerun with the same content (no duplicates)."""
    day_dir = directory / summary["report_date"]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    files = {
        day_dir / "summary.json": json.dumps(summary, indent=2, sort_keys=True).encode(),
        day_dir / "quotes.csv": buffer.getvalue().encode(),
    }
    for path, data in files.items():
        write_atomic(path, data)
    return [str(p) for p in files]
