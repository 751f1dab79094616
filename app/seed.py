"""Demo data (`taskctl db seed`): upserts on natural keys, so seeding twice changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.models import Customer, InventoryItem, Material, Quote, QuoteVersion
from app.pricing import Specification, price

MATERIALS = [
    ("AL6061", "Aluminium 6061", "4.2000", "2.7000"),
    ("SS304", "Stainless steel 304", "6.8000", "8.0000"),
    ("PA12", "Nylon PA12", "9.5000", "1.0100"),
    ("TI64", "Titanium Ti-6Al-4V", "38.0000", "4.4300"),
]
CUSTOMERS = [
    ("Acme Machining", "buyer@acme.example", "+4915100000001"),
    ("Globex Robotics", "purchasing@globex.example", "+4915100000002"),
]
INVENTORY = [
    ("SKU-AL-BAR", "Aluminium bar stock 50 mm", "AL6061", 120, 40),
    ("SKU-SS-PLATE", "Stainless plate 10 mm", "SS304", 8, 20),
    ("SKU-PA-POWDER", "PA12 powder 10 kg", "PA12", 3, 5),
]
DEMO_SPEC: dict[str, Any] = {
    "material": "AL6061",
    "quantity": 25,
    "dimensions": {"length_mm": 120, "width_mm": 60, "height_mm": 20},
    "finish": "anodized",
}
# A stable namespace makes demo ids identical across seeds and hosts.
SEED_NAMESPACE = uuid.UUID("9d3c7c5e-2f1b-4d0e-8a8e-5b9f6f0e4c21")


def create_quote(
    session: Session,
    customer_id: uuid.UUID,
    quote_number: str,
    specification: dict[str, Any],
    valid_days: int = 30,
) -> Quote:
    """A draft quote with its first version; returns the existing one if the number is taken."""
    existing = session.scalars(select(Quote).where(Quote.quote_number == quote_number)).first()
    if existing is not None:
        return existing
    spec = Specification.parse(specification)
    material = session.get(Material, spec.material)
    if material is None:
        raise NotFoundError(f"unknown material {spec.material!r}")
    pricing = price(spec, material)
    quote = Quote(
        id=uuid.uuid5(SEED_NAMESPACE, quote_number),
        quote_number=quote_number,
        customer_id=customer_id,
        material_code=spec.material,
        specification=specification,
        status="draft",
        valid_until=datetime.now(UTC) + timedelta(days=valid_days),
        current_version=1,
        total_price=Decimal(pricing["total_price"]),
    )
    session.add(quote)
    session.flush()
    session.add(
        QuoteVersion(
            quote_id=quote.id,
            version=1,
            unit_price=Decimal(pricing["unit_price"]),
            total_price=Decimal(pricing["total_price"]),
            breakdown=pricing["breakdown"],
            reason="Initial quote",
        )
    )
    return quote


def seed(session: Session) -> dict[str, int]:
    for code, name, cost, density in MATERIALS:
        session.execute(
            insert(Material)
            .values(code=code, name=name, unit_cost=Decimal(cost), density=Decimal(density))
            .on_conflict_do_nothing(index_elements=[Material.code])
        )
    for name, email, phone in CUSTOMERS:
        session.execute(
            insert(Customer)
            .values(id=uuid.uuid5(SEED_NAMESPACE, email), name=name, email=email, phone=phone)
            .on_conflict_do_nothing(index_elements=[Customer.email])
        )
    for sku, name, material, quantity, reorder in INVENTORY:
        session.execute(
            insert(InventoryItem)
            .values(
                sku=sku, name=name, material_code=material, quantity=quantity, reorder_level=reorder
            )
            .on_conflict_do_nothing(index_elements=[InventoryItem.sku])
        )
    for index, (_, email, _) in enumerate(CUSTOMERS, start=1):
        create_quote(session, uuid.uuid5(SEED_NAMESPACE, email), f"Q-DEMO-{index:04d}", DEMO_SPEC)
    return {
        "materials": len(MATERIALS),
        "customers": len(CUSTOMERS),
        "inventory_items": len(INVENTORY),
        "quotes": len(CUSTOMERS),
    }
