"""The SQLAlchemy engine (one per process: prefork children must not share sockets) and sessions."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings

_engine: Engine | None = None
_engine_pid: int | None = None
_sessions: sessionmaker[Session] | None = None
# Connections the pool keeps open: one per thread that may hold one at a time (set_pool_size).
_pool_size = 2


def set_pool_size(size: int) -> None:
    """Keep `size` connections open (a threads worker: its concurrency).

    Connections beyond the pool size ("overflow") are closed when returned: a threads worker with
    more threads than that would connect (TLS, SCRAM) and disconnect once per task, and the
    closing backends still hold slots of max_connections for a moment (seen: "remaining
    connection slots are reserved" at 16 threads with max_connections sized for them).
    """
    global _pool_size
    _pool_size = max(1, int(size))


# The threads of a threads worker start their first tasks at once: one of them creates the engine.
_lock = threading.Lock()
# A child forked while another thread held the lock would wait on it for ever: a fresh one.
os.register_at_fork(after_in_child=lambda: globals().update(_lock=threading.Lock()))


def get_engine() -> Engine:
    if _engine is None or _engine_pid != os.getpid():
        with _lock:
            _create_engine()
    assert _engine is not None
    return _engine


def _create_engine() -> None:
    global _engine, _engine_pid, _sessions
    if _engine is None or _engine_pid != os.getpid():  # checked again, under the lock
        if _engine is not None:
            # Inherited from the parent across fork: drop its connections without closing them.
            _engine.dispose(close=False)
        _engine = create_engine(
            get_settings().database_url,
            pool_pre_ping=True,  # a restarted PostgreSQL leaves dead pooled connections
            # A task holds one connection at a time: a prefork child needs 1, a threads pool
            # one per thread (set_pool_size; overflow connections are closed when returned).
            pool_size=_pool_size,
            max_overflow=30,
            pool_recycle=1800,
            connect_args={
                "connect_timeout": 5,
                "application_name": "celery-app",
                # A database host gone silent is found within 60 s instead of TCP's two hours
                # (the server does the same for its clients: the postgresql role's keepalives).
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
        previous = get_settings().database_password_previous
        if previous:
            event.listen(_engine, "do_connect", _with_previous_password(previous))
        _sessions = sessionmaker(_engine, expire_on_commit=False)
        _engine_pid = os.getpid()


def _with_previous_password(previous: str) -> Callable[..., Any]:
    """A do_connect hook: connect with the URL's password, and when PostgreSQL refuses it, with
    the password before the rotation (APP_DATABASE_PASSWORD_PREVIOUS). During a rotation the
    workers get the new password first and the database later (docs/RUNBOOK.md): no connection
    fails in between. Any other error is raised as it is."""

    def connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except psycopg.OperationalError as exc:
            if "password authentication failed" not in str(exc):
                raise
        return dialect.connect(*cargs, **{**cparams, "password": previous})

    return connect


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
