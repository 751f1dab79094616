"""The SQLAlchemy engine (one per process: prefork children must not share sockets) and sessions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings

_engine: Engine | None = None
_engine_pid: int | None = None
_sessions: sessionmaker[Session] | None = None


def get_engine() -> Engine:
    global _engine, _engine_pid, _sessions
    if _engine is None or _engine_pid != os.getpid():
        if _engine is not None:
            # Inherited from the parent across fork: drop its connections without closing them.
            _engine.dispose(close=False)
        _engine = create_engine(
            get_settings().database_url,
            pool_pre_ping=True,  # a restarted PostgreSQL leaves dead pooled connections
            # A task holds one connection at a time: a prefork child needs 1, a threads pool
            # one per thread (overflow connections are closed when returned).
            pool_size=2,
            max_overflow=30,
            pool_recycle=1800,
            connect_args={"connect_timeout": 5, "application_name": "celery-app"},
        )
        _engine_pid = os.getpid()
        _sessions = sessionmaker(_engine, expire_on_commit=False)
    return _engine


@contextmanager
def session_scope() -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back on an exception."""
    get_engine()
    assert _sessions is not None
    with _sessions() as session, session.begin():
        yield session


def dispose() -> None:
    global _engine, _engine_pid
    if _engine is not None:
        _engine.dispose()
    _engine = None
    _engine_pid = None
