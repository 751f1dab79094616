"""A threads worker keeps one database connection per thread open (app.db.set_pool_size, from
Celery's worker_init): with fewer, the extra threads would connect and disconnect once per task,
and the closing backends would hold slots of PostgreSQL's max_connections (docs/BENCHMARKS.md)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import uuid
from typing import Any

import pytest
from celery import Celery
from conftest import ENV, ROOT, WORK, run, worker_argv
from services import RedisServer, wait_for
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app import db
from app.celery_app import celery_app
from app.settings import get_settings


def test_threads_worker_keeps_a_connection_per_thread(
    alive: Any, database: Any, redis_server: RedisServer
) -> None:
    # The session's prefork worker: one task at a time per child, the default pool.
    assert run("ops.probe", uuid.uuid4().hex).result["db_pool_size"] == 2
    broker, backend = redis_server.url(6), redis_server.url(7)  # a broker of its own
    argv = ["threads" if a == "prefork" else a for a in worker_argv("threads", 6)]
    log_path = WORK / "threads-worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ENV, "APP_BROKER_URL": broker, "APP_RESULT_BACKEND": backend},
            cwd=ROOT,
        )
    try:
        wait_for(
            lambda: re.search(r"threads@\S* ready\.", log_path.read_text(errors="replace")),
            90,
            "threads worker",
            interval=0.3,
        )
        with celery_app.connection_for_write(broker) as conn:
            sent = celery_app.send_task("ops.probe", [uuid.uuid4().hex], connection=conn)
        result = Celery(backend=backend).AsyncResult(sent.id).get(timeout=60)
        assert result["worker"].startswith("threads@"), result
        assert result["db_pool_size"] == 6, result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_threads_starting_at_once_share_one_engine(database: Any) -> None:
    """16 threads asking for the engine at the same moment (a threads worker's first tasks) get
    one engine, hence one pool; unguarded, several were created, each with its own connections."""
    saved = db._engine, db._engine_pid, db._sessions
    db._engine = db._engine_pid = db._sessions = None
    start = threading.Barrier(16)
    engines: list[Any] = []

    def first_task() -> None:
        start.wait()
        engines.append(db.get_engine())

    threads = [threading.Thread(target=first_task) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(engines) == 16
        assert len({id(e) for e in engines}) == 1, f"{len({id(e) for e in engines})} engines"
        with db.session_scope() as session:  # and it works
            assert session.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        for engine in {id(e): e for e in engines}.values():
            engine.dispose()
        db._engine, db._engine_pid, db._sessions = saved


def test_a_rotation_loses_no_connection(database: Any) -> None:
    """APP_DATABASE_PASSWORD_PREVIOUS (a rotation, docs/RUNBOOK.md): the process has the new
    password before PostgreSQL does and connects with the previous one; once PostgreSQL has the
    new one, with it. Without the previous password the same moment fails, naming the cause; a
    wrong database is not retried with the previous password (only a refused password is)."""
    import psycopg
    from sqlalchemy.engine import make_url

    role, old, new = f"rotate_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex, uuid.uuid4().hex
    with psycopg.connect(database.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{old}'")
        admin.execute(f"GRANT CONNECT ON DATABASE app TO {role}")
    url = make_url(ENV["APP_DATABASE_URL"]).set(username=role, password=new)
    url_text = url.render_as_string(hide_password=False)
    saved = db._engine, db._engine_pid, db._sessions, dict(os.environ)

    def who(previous: str, target: str = url_text) -> str:
        db._engine = db._engine_pid = db._sessions = None
        os.environ.update(APP_DATABASE_URL=target, APP_DATABASE_PASSWORD_PREVIOUS=previous)
        get_settings.cache_clear()
        try:
            with db.get_engine().connect() as conn:
                return str(conn.execute(text("SELECT current_user")).scalar())
        finally:
            db.dispose()

    try:
        # The new password reached the process first: refused alone, accepted with the previous.
        with pytest.raises(OperationalError, match="password authentication failed"):
            who("")
        assert who(old) == role
        with psycopg.connect(database.admin_dsn, autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {role} PASSWORD '{new}'")
        assert who(old) == role  # the new one now, the previous one unused
        assert who("") == role
        missing = make_url(url_text).set(database="no_such_db").render_as_string(False)
        with pytest.raises(OperationalError, match="no_such_db"):
            who(old, missing)
    finally:
        db._engine, db._engine_pid, db._sessions = saved[:3]
        os.environ.clear()
        os.environ.update(saved[3])
        get_settings.cache_clear()
        with psycopg.connect(database.admin_dsn, autocommit=True) as admin:
            admin.execute(f"REVOKE CONNECT ON DATABASE app FROM {role}")
            admin.execute(f"DROP ROLE {role}")
