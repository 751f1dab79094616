"""Alembic, driven from Python: the migrations ship inside the package (app/migrations)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL

from app.db import get_engine


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _connect(url: URL | None, owner: str | None) -> Iterator[Connection]:
    """The app's own connection, or one of its own for `url` (the migrations' login); with
    `owner`, acting as that role (SET ROLE), so that what the migrations create is the owner's
    and not the login's."""
    if owner and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", owner):
        raise ValueError(f"owner: {owner!r} is not a plain role name")
    engine = None
    if url is not None:
        engine = create_engine(
            url, connect_args={"connect_timeout": 5, "application_name": "migrate"}
        )
    try:
        with (engine or get_engine()).connect() as conn:
            if owner:
                conn.execute(text(f"SET ROLE {owner}"))
            yield conn
    finally:
        if engine is not None:
            engine.dispose()


def upgrade(
    revision: str = "head", url: URL | None = None, owner: str | None = None
) -> tuple[str | None, str | None]:
    """Upgrade to `revision`, logged in with `url` (else the app's URL), as `owner`; the revisions
    before and after, read on the same connection (one login, one TLS handshake)."""
    from alembic.runtime.migration import MigrationContext

    with _connect(url, owner) as conn:
        # The role's bounds are for the tasks. A migration may rewrite a large table, and hosts
        # migrating at once queue on an advisory lock (env.py) for as long as the first one takes.
        conn.execute(text("SET statement_timeout = 0"))
        conn.execute(text("SET lock_timeout = 0"))
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(config(conn), revision)
        return before, MigrationContext.configure(conn).get_current_revision()
