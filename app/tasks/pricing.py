"""Pricing tasks (queue `pricing`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from app.celery_app import celery_app
from app.db import session_scope
from app.errors import NotFoundError, PermanentError, ValidationError
from app.jobs import Progress
from app.logs import get_logger
from app.models import Customer, Material, MaterialCostChange, Quote, QuoteVersion
from app.pricing import Specification, load_materials, price, price_with
from app.validation import (
    MAX_BATCH,
    require_dict,
    require_list,
    require_number,
    require_str,
    require_uuid,
)

log = get_logger(__name__)


@celery_app.task(bind=True, name="pricing.calculate_bulk_pricing", track_started=True)
def calculate_bulk_pricing(self: Any, specifications: list[dict[str, Any]]) -> dict[str, Any]:
    """Price many specifications; a bad one fails alone. Reads only: safe to run twice."""
    items = require_list(specifications, "specifications")
    parsed: list[Specification | PermanentError] = []
    for index, item in enumerate(items):
        try:
            parsed.append(Specification.parse(item))
        except PermanentError as exc:
            parsed.append(ValidationError(f"specifications[{index}]: {exc}"))
    codes = {p.material for p in parsed if isinstance(p, Specification)}
    with session_scope() as session:
        materials = load_materials(session, codes)
    results: list[dict[str, Any]] = []
    progress = Progress(self, len(items))  # PROGRESS {done, total} while it runs (app.jobs)
    for index, spec in enumerate(parsed):
        progress.advance(index)
        try:
            if isinstance(spec, PermanentError):
                raise spec
            results.append(
                {
                    "index": index,
                    "status": "success",
                    "specification": items[index],
                    "result": price_with(materials, spec),
                }
            )
        except PermanentError as exc:
            results.append({"index": index, "status": "error", "error": str(exc)})
    successful = sum(1 for r in results if r["status"] == "success")
    log.info("bulk_pricing_done", total=len(items), successful=successful)
    return {
        "total_processed": len(items),
        "successful": successful,
        "failed": len(items) - successful,
        "results": results,
    }


@celery_app.task(bind=True, name="pricing.summarize_batches")
def summarize_batches(self: Any, batch_results: Any) -> dict[str, Any]:
    """Chord callback: merge the results of several calculate_bulk_pricing batches."""
    batches = [batch_results] if isinstance(batch_results, dict) else batch_results
    batches = require_list(batches, "batch_results")
    total = Decimal("0")
    summary = {"batches": len(batches), "total_processed": 0, "successful": 0, "failed": 0}
    for index, batch in enumerate(batches):
        batch = require_dict(batch, f"batch_results[{index}]")
        for key in ("total_processed", "successful", "failed"):
            if not isinstance(batch.get(key), int):
                raise ValidationError(f"batch_results[{index}]: missing count {key!r}")
            summary[key] += batch[key]
        for item in batch.get("results", []):
            if isinstance(item, dict) and item.get("status") == "success":
                total += Decimal(str(item["result"]["total_price"]))
    return {**summary, "total_value": str(total)}


@celery_app.task(bind=True, name="pricing.update_material_costs")
def update_material_costs(self: Any, material_updates: dict[str, Any]) -> dict[str, Any]:
    """Set unit costs per material code; history rows only for effective changes (idempotent)."""
    updates = require_dict(material_updates, "material_updates")
    if len(updates) > MAX_BATCH:
        raise ValidationError(f"material_updates: {len(updates)} items, at most {MAX_BATCH}")
    updated: list[str] = []
    changed: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    for code, raw_cost in updates.items():
        try:
            code = require_str(code, "material code", max_len=40)
            cost = require_number(raw_cost, f"material_updates[{code!r}]", maximum=1_000_000)
            cost = cost.quantize(Decimal("0.0001"))
            # One transaction per material: a bad item fails alone, the rest is kept.
            with session_scope() as session:
                material = session.get(Material, code, with_for_update=True)
                if material is None:
                    raise NotFoundError(f"unknown material {code!r}")
                if material.unit_cost != cost:
                    session.add(
                        MaterialCostChange(
                            material_code=code, old_cost=material.unit_cost, new_cost=cost
                        )
                    )
                    changed.append(
                        {"material": code, "old": str(material.unit_cost), "new": str(cost)}
                    )
                    material.unit_cost = cost
                    material.updated_at = func.now()
            updated.append(code)
        except PermanentError as exc:
            failed.append({"material": str(code), "error": str(exc)})
    log.info("material_costs_updated", updated=len(updated), changed=len(changed))
    return {
        "updated": updated,
        "changed": changed,
        "failed": failed,
        "total_updated": len(updated),
        "total_failed": len(failed),
    }


@celery_app.task(bind=True, name="pricing.recalculate_customer_quotes")
def recalculate_customer_quotes(self: Any, customer_id: str, material_code: str) -> dict[str, Any]:
    """Reprice a customer's draft quotes of a material; a new version only if the price moved."""
    cid = require_uuid(customer_id, "customer_id")
    code = require_str(material_code, "material_code", max_len=40)
    updated: list[str] = []
    unchanged: list[str] = []
    failed: list[dict[str, str]] = []
    with session_scope() as session:
        if session.get(Customer, cid) is None:
            raise NotFoundError(f"unknown customer {cid}")
        material = session.get(Material, code)
        if material is None:
            raise NotFoundError(f"unknown material {code!r}")
        # Row locks: two concurrent runs cannot both add the same version.
        quotes = session.scalars(
            select(Quote)
            .where(Quote.customer_id == cid, Quote.material_code == code, Quote.status == "draft")
            .order_by(Quote.quote_number)
            .with_for_update()
        ).all()
        for quote in quotes:
            try:
                pricing = price(Specification.parse(quote.specification), material)
            except PermanentError as exc:
                failed.append({"quote_id": str(quote.id), "error": str(exc)})
                continue
            total = Decimal(pricing["total_price"])
            if total == quote.total_price:
                unchanged.append(str(quote.id))
                continue
            quote.current_version += 1
            session.add(
                QuoteVersion(
                    quote_id=quote.id,
                    version=quote.current_version,
                    unit_price=Decimal(pricing["unit_price"]),
                    total_price=total,
                    breakdown=pricing["breakdown"],
                    reason=f"Auto-update due to {code} cost change",
                )
            )
            quote.total_price = total
            quote.updated_at = func.now()
            updated.append(str(quote.id))
    return {
        "customer_id": str(cid),
        "material_code": code,
        "quotes_updated": updated,
        "quotes_unchanged": unchanged,
        "quotes_failed": failed,
        "total_updated": len(updated),
        "total_failed": len(failed),
    }
