"""Alembic environment: migrations run with `taskctl db migrate` (app.migrate.upgrade)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from app.models import Base
from app.settings import get_settings

# Any number of hosts may run `taskctl db migrate` at once: they queue on this lock.
MIGRATION_LOCK_ID = 7_204_611


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = create_engine(get_settings().database_url)
        with engine.connect() as conn:
            _run(conn)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=Base.metadata,
        compare_type=True,
    )
    connection.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))  # type: ignore[attr-defined]
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))  # type: ignore[attr-defined]
        connection.commit()  # type: ignore[attr-defined]


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run `taskctl db migrate`")
run_migrations_online()
