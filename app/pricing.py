"""Pricing of a part specification: material weight x unit cost, machining, finish, discounts."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import NotFoundError, ValidationError
from app.models import Material
from app.validation import require_dict, require_int, require_number, require_str

FINISH_COST = {
    "none": Decimal("0"),
    "painted": Decimal("3.00"),
    "anodized": Decimal("4.00"),
    "polished": Decimal("6.00"),
}
TOLERANCE_FACTOR = {"standard": Decimal("1.0"), "precision": Decimal("1.5")}
SETUP_COST = Decimal("50.00")  # once per order
MACHINING_BASE = Decimal("12.50")  # per part
MACHINING_PER_CM3 = Decimal("0.05")
# (minimum quantity, discount) from the largest tier down
DISCOUNTS = ((1000, Decimal("0.15")), (100, Decimal("0.10")), (10, Decimal("0.05")))
CENT = Decimal("0.01")
MAX_DIMENSION_MM = 10_000
MAX_QUANTITY = 1_000_000


@dataclass(frozen=True)
class Specification:
    material: str
    quantity: int
    length_mm: Decimal
    width_mm: Decimal
    height_mm: Decimal
    finish: str = "none"
    tolerance: str = "standard"

    @classmethod
    def parse(cls, data: Any) -> Specification:
        spec = require_dict(data, "specification")
        known = {"material", "quantity", "dimensions", "finish", "tolerance", "description"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValidationError(f"specification: unknown field(s) {', '.join(unknown)}")
        for name in ("material", "quantity", "dimensions"):
            if name not in spec:
                raise ValidationError(f"specification: missing field {name!r}")
        dims = require_dict(spec["dimensions"], "specification.dimensions")
        values = {}
        for name in ("length_mm", "width_mm", "height_mm"):
            if name not in dims:
                raise ValidationError(f"specification.dimensions: missing field {name!r}")
            values[name] = require_number(
                dims[name], f"specification.dimensions.{name}", maximum=MAX_DIMENSION_MM
            )
        finish = require_str(spec.get("finish", "none"), "specification.finish", max_len=20)
        if finish not in FINISH_COST:
            raise ValidationError(
                f"specification.finish: {finish!r} is not one of {', '.join(FINISH_COST)}"
            )
        tolerance = require_str(
            spec.get("tolerance", "standard"), "specification.tolerance", max_len=20
        )
        if tolerance not in TOLERANCE_FACTOR:
            raise ValidationError(
                f"specification.tolerance: {tolerance!r} is not one of "
                f"{', '.join(TOLERANCE_FACTOR)}"
            )
        return cls(
            material=require_str(spec["material"], "specification.material", max_len=40),
            quantity=require_int(spec["quantity"], "specification.quantity", maximum=MAX_QUANTITY),
            finish=finish,
            tolerance=tolerance,
            **values,
        )


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def price(spec: Specification, material: Material) -> dict[str, Any]:
    """The price of a specification with a material row; amounts are decimal strings."""
    volume_cm3 = spec.length_mm * spec.width_mm * spec.height_mm / 1000
    weight_kg = volume_cm3 * material.density / 1000
    material_cost = weight_kg * material.unit_cost
    machining = (MACHINING_BASE + volume_cm3 * MACHINING_PER_CM3) * TOLERANCE_FACTOR[spec.tolerance]
    unit_price = money(material_cost + machining + FINISH_COST[spec.finish])
    subtotal = unit_price * spec.quantity
    rate = next((r for minimum, r in DISCOUNTS if spec.quantity >= minimum), Decimal("0"))
    discount = money(subtotal * rate)
    total = money(subtotal - discount + SETUP_COST)
    return {
        "material": material.code,
        "quantity": spec.quantity,
        "unit_price": str(unit_price),
        "total_price": str(total),
        "breakdown": {
            "weight_kg": str(weight_kg.quantize(Decimal("0.0001"))),
            "material_cost": str(money(material_cost)),
            "machining_cost": str(money(machining)),
            "finish_cost": str(FINISH_COST[spec.finish]),
            "setup_cost": str(SETUP_COST),
            "discount_rate": str(rate),
            "discount": str(discount),
            "material_unit_cost": str(material.unit_cost),
        },
    }


def load_materials(session: Session, codes: set[str]) -> dict[str, Material]:
    if not codes:
        return {}
    rows = session.scalars(select(Material).where(Material.code.in_(codes)))
    return {m.code: m for m in rows}


def price_with(materials: dict[str, Material], spec: Specification) -> dict[str, Any]:
    material = materials.get(spec.material)
    if material is None:
        raise NotFoundError(f"unknown material {spec.material!r}")
    return price(spec, material)
