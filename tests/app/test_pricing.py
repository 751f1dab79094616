"""Pricing tasks on the real worker: batches with bad items, idempotent updates, workflows."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from celery import chain, chord, group
from conftest import run
from sqlalchemy import func, select

from app.celery_app import celery_app
from app.db import session_scope
from app.models import Customer, Material, MaterialCostChange, Quote, QuoteVersion
from app.seed import create_quote

GOOD = {
    "material": "AL6061",
    "quantity": 10,
    "dimensions": {"length_mm": 100, "width_mm": 50, "height_mm": 10},
}


def new_material(cost: str = "5.0000") -> str:
    code = f"M{uuid.uuid4().hex[:8].upper()}"
    with session_scope() as s:
        s.add(Material(code=code, name=f"test {code}", unit_cost=Decimal(cost), density=2))
    return code


def new_customer() -> uuid.UUID:
    with session_scope() as s:
        c = Customer(name="Test Customer", email=f"{uuid.uuid4().hex[:10]}@customer.test")
        s.add(c)
        s.flush()
        return c.id


def new_quote(material: str, customer: uuid.UUID | None = None) -> uuid.UUID:
    customer = customer or new_customer()
    with session_scope() as s:
        q = create_quote(s, customer, f"Q-{uuid.uuid4().hex[:10]}", {**GOOD, "material": material})
        return q.id


def test_bulk_pricing_prices_good_items_and_fails_bad_ones_alone(alive: Any) -> None:
    specs: list[Any] = [
        GOOD,
        {**GOOD, "material": "NOPE"},  # unknown material
        {**GOOD, "quantity": -3},  # out of range
        {"material": "SS304"},  # missing fields
        "not an object",
        {**GOOD, "quantity": 100, "finish": "polished"},
    ]
    result = run("pricing.calculate_bulk_pricing", specs)
    assert result.state == "SUCCESS", result.result
    out = result.result
    assert (out["total_processed"], out["successful"], out["failed"]) == (6, 2, 4)
    by_index = {r["index"]: r for r in out["results"]}
    assert "unknown material 'NOPE'" in by_index[1]["error"]
    assert "quantity" in by_index[2]["error"]
    assert "missing field 'quantity'" in by_index[3]["error"]
    assert "expected an object" in by_index[4]["error"]
    first = by_index[0]["result"]
    assert Decimal(first["total_price"]) > 0 and first["breakdown"]["discount_rate"] == "0.05"
    assert by_index[5]["result"]["breakdown"]["discount_rate"] == "0.10"


def test_update_material_costs_twice_leaves_the_same_state(alive: Any) -> None:
    code = new_material("5.0000")
    updates = {code: 6.25, "UNKNOWN-MAT": 3, "": 1}
    first = run("pricing.update_material_costs", {**updates, code: 6.25, "BAD": "abc"}).result
    assert first["updated"] == [code] and first["changed"][0]["new"] == "6.2500"
    assert {f["material"] for f in first["failed"]} == {"UNKNOWN-MAT", "", "BAD"}
    second = run("pricing.update_material_costs", updates).result
    assert second["updated"] == [code] and second["changed"] == []
    with session_scope() as s:
        assert s.get(Material, code).unit_cost == Decimal("6.25")  # type: ignore[union-attr]
        history = s.scalar(select(func.count()).where(MaterialCostChange.material_code == code))
    assert history == 1


def test_recalculate_quotes_adds_one_version_per_price_change(alive: Any) -> None:
    code = new_material("5.0000")
    customer = new_customer()
    quotes = [new_quote(code, customer), new_quote(code, customer)]
    run("pricing.update_material_costs", {code: 9.5})
    first = run("pricing.recalculate_customer_quotes", str(customer), code)
    assert first.state == "SUCCESS", first.result
    assert sorted(first.result["quotes_updated"]) == sorted(map(str, quotes))
    second = run("pricing.recalculate_customer_quotes", str(customer), code).result
    assert second["quotes_updated"] == [] and len(second["quotes_unchanged"]) == 2
    with session_scope() as s:
        for qid in quotes:
            quote = s.get(Quote, qid)
            assert quote is not None and quote.current_version == 2
            versions = s.scalars(select(QuoteVersion).where(QuoteVersion.quote_id == qid)).all()
            assert [v.version for v in versions] == [1, 2]
            assert versions[1].total_price == quote.total_price != versions[0].total_price


def test_recalculate_refuses_unknown_customer_at_once(alive: Any) -> None:
    result = run("pricing.recalculate_customer_quotes", str(uuid.uuid4()), "AL6061")
    assert result.state == "FAILURE"
    assert "unknown customer" in str(result.result)
    assert result.retries == 0
    bad = run("pricing.recalculate_customer_quotes", "not-a-uuid", "AL6061")
    assert bad.state == "FAILURE" and "not a valid UUID" in str(bad.result)


def test_chain_group_and_chord_complete(alive: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    probe = celery_app.signature("ops.probe")
    bulk = celery_app.signature("pricing.calculate_bulk_pricing")
    summarize = celery_app.signature("pricing.summarize_batches")

    flow = chain(
        probe.clone(args=(f"{tag}-a",)).set(immutable=True),
        probe.clone(args=(f"{tag}-b",)).set(immutable=True),
    ).apply_async()
    assert flow.get(timeout=60)["token"] == f"{tag}-b"
    assert flow.parent is not None and flow.parent.get(timeout=5)["token"] == f"{tag}-a"

    batch = group(probe.clone(args=(f"{tag}-g{i}",)) for i in range(4)).apply_async()
    assert sorted(r["token"] for r in batch.get(timeout=60)) == [f"{tag}-g{i}" for i in range(4)]

    header = [bulk.clone(args=([GOOD, GOOD],)), bulk.clone(args=([GOOD, {"bad": 1}],))]
    total = chord(header)(summarize).get(timeout=60)
    assert total["batches"] == 2 and total["successful"] == 3 and total["failed"] == 1
    single = run("pricing.calculate_bulk_pricing", [GOOD]).result["results"][0]["result"]
    assert Decimal(total["total_value"]) == 3 * Decimal(single["total_price"])
