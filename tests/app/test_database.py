"""Migrations and demo data on the real PostgreSQL."""

from __future__ import annotations

import json

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import taskctl
from services import PostgresServer
from sqlalchemy import func, select

from app.db import get_engine, session_scope
from app.models import Base, Customer, InventoryItem, Material, Quote, QuoteVersion


def test_migrations_create_exactly_the_models(database: PostgresServer) -> None:
    with get_engine().connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert context.get_current_revision() == "0001"
        assert compare_metadata(context, Base.metadata) == []


def test_migrate_and_seed_twice_change_nothing(database: PostgresServer) -> None:
    def counts() -> tuple[int, ...]:
        with session_scope() as s:
            return tuple(
                s.scalar(select(func.count()).select_from(m)) or 0
                for m in (Material, Customer, InventoryItem, Quote, QuoteVersion)
            )

    before = counts()
    for command in (("db", "migrate"), ("db", "seed")):
        done = taskctl(*command)
        assert done.returncode == 0, done.stderr
    assert counts() == before
    assert before[0] >= 4 and before[3] >= 2


def test_migrate_json_says_before_and_after(database: PostgresServer) -> None:
    """What the deployment's migrate task reads (changed when they differ)."""
    done = taskctl("db", "migrate", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"before": "0001", "after": "0001"}
