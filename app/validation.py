"""Payload checks shared by the tasks: each failure names the field and what was expected."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from app.errors import ValidationError

MAX_BATCH = 1000  # items in one batch task (larger payloads are refused, not truncated)
MAX_STRING = 1000
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
PHONE_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")  # E.164


def require_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def require_list(value: Any, what: str, max_items: int = MAX_BATCH) -> list[Any]:
    if not isinstance(value, list):
        raise ValidationError(f"{what}: expected a list, got {type(value).__name__}")
    if len(value) > max_items:
        raise ValidationError(f"{what}: {len(value)} items, at most {max_items} allowed")
    return value


def require_str(value: Any, what: str, max_len: int = MAX_STRING, min_len: int = 1) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what}: expected a string, got {type(value).__name__}")
    value = value.strip()
    if len(value) < min_len:
        raise ValidationError(f"{what}: must not be empty")
    if len(value) > max_len:
        raise ValidationError(f"{what}: {len(value)} characters, at most {max_len} allowed")
    return value


def require_number(
    value: Any, what: str, *, positive: bool = True, maximum: float = 1e9
) -> Decimal:
    # bool is an int in Python: refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError(f"{what}: expected a number, got {type(value).__name__}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValidationError(f"{what}: {value!r} is not a number") from None
    if not number.is_finite():
        raise ValidationError(f"{what}: {value!r} is not a finite number")
    if positive and number <= 0:
        raise ValidationError(f"{what}: must be positive, got {value!r}")
    if number > Decimal(str(maximum)):
        raise ValidationError(f"{what}: {value!r} exceeds {maximum:g}")
    return number


def require_int(value: Any, what: str, *, minimum: int = 1, maximum: int = 10**9) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what}: expected an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValidationError(f"{what}: {value} is outside {minimum}..{maximum}")
    return value


def require_uuid(value: Any, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise ValidationError(f"{what}: expected a UUID string, got {type(value).__name__}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValidationError(f"{what}: {value!r} is not a valid UUID") from None


def require_email(value: Any, what: str = "email") -> str:
    address = require_str(value, what, max_len=254)
    if not EMAIL_RE.match(address):
        raise ValidationError(f"{what}: {address!r} is not a valid e-mail address")
    return address


def require_phone(value: Any, what: str = "phone") -> str:
    number = require_str(value, what, max_len=16)
    if not PHONE_RE.match(number):
        raise ValidationError(f"{what}: {number!r} is not an E.164 phone number (+CCNNN...)")
    return number
