"""Migrations and demo data on the real PostgreSQL."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import psycopg
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
        assert context.get_current_revision() == "0002"
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
    assert json.loads(done.stdout) == {"before": "0002", "after": "0002"}


# The three roles of the postgresql role (roles/postgresql/tasks/database.yml), in a database of
# their own: an owner that cannot log in, a migrator that acts as it, the tasks' DML-only role.
SPLIT_SETUP = (
    "DROP DATABASE IF EXISTS split WITH (FORCE)",
    "DROP ROLE IF EXISTS split_migrator",
    "DROP ROLE IF EXISTS split_app",
    "DROP ROLE IF EXISTS split_owner",
    "CREATE ROLE split_owner NOLOGIN",
    "CREATE ROLE split_migrator LOGIN NOINHERIT PASSWORD '{migrator}' IN ROLE split_owner",
    "CREATE ROLE split_app LOGIN PASSWORD '{app}'",
    "CREATE DATABASE split OWNER split_owner",
    "REVOKE CONNECT, TEMPORARY ON DATABASE split FROM PUBLIC",
    "GRANT CONNECT ON DATABASE split TO split_app, split_migrator",
)
SPLIT_DEFAULTS = (
    "ALTER DEFAULT PRIVILEGES FOR ROLE split_owner IN SCHEMA public"
    " GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO split_app",
    "ALTER DEFAULT PRIVILEGES FOR ROLE split_owner IN SCHEMA public"
    " GRANT USAGE, SELECT ON SEQUENCES TO split_app",
)


def test_migrations_act_as_the_owner_and_the_tasks_get_rows_only(
    database: PostgresServer, tmp_path: Path
) -> None:
    """`taskctl db migrate --login-stdin --owner`: the migrator's login comes on stdin, what the
    migrations create belongs to the owner; the tasks' role seeds and reads rows, runs
    app_analyze(), and is refused CREATE, DROP and TRUNCATE."""
    pw = {"migrator": secrets.token_hex(12), "app": secrets.token_hex(12)}
    with psycopg.connect(database.admin_dsn, autocommit=True) as admin:
        for statement in SPLIT_SETUP:
            admin.execute(statement.format(**pw))
    split_admin = database.admin_dsn.replace("dbname=postgres", "dbname=split")
    with psycopg.connect(split_admin, autocommit=True) as admin:
        for statement in SPLIT_DEFAULTS:
            admin.execute(statement)
    runtime = f"postgresql+psycopg://split_app:{pw['app']}@127.0.0.1:{database.port}/split"
    env = {"APP_DATABASE_URL": runtime}
    migrate = ("db", "migrate", "--json", "--login-stdin", "--owner", "split_owner")

    refused = taskctl(*migrate, env=env, stdin="split_migrator\n")
    assert refused.returncode == 2 and "--login-stdin" in refused.stderr, refused.stderr
    # What the deployment reports (its task hides its own output, no_log): taskctl's error.
    wrong = taskctl(*migrate, env=env, stdin="split_migrator\nno\n")
    assert wrong.returncode == 1 and wrong.stdout == "", wrong.stdout
    assert wrong.stderr.startswith("taskctl: db failed: "), wrong.stderr
    assert "password authentication failed" in wrong.stderr, wrong.stderr
    done = taskctl(*migrate, env=env, stdin=f"split_migrator\n{pw['migrator']}\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"before": None, "after": "0002"}
    assert pw["migrator"] not in done.stdout + done.stderr + wrong.stdout + wrong.stderr

    with psycopg.connect(split_admin) as admin:
        owners = admin.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace"
            " UNION SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'app_analyze'"
        ).fetchall()
    assert owners == [("split_owner",)]

    seeded = taskctl("db", "seed", env=env)
    assert seeded.returncode == 0, seeded.stderr
    app_dsn = (
        f"host=127.0.0.1 port={database.port} dbname=split user=split_app password={pw['app']}"
    )
    with psycopg.connect(app_dsn, autocommit=True) as app:
        assert app.execute("SELECT count(*) FROM materials").fetchone()[0] >= 4  # type: ignore[index]
        app.execute("SELECT app_analyze()")
        for statement, error in (
            ("CREATE TABLE intruder (id int)", "permission denied for schema public"),
            ("DROP TABLE application_logs", "must be owner of table application_logs"),
            ("TRUNCATE application_logs", "permission denied for table application_logs"),
            ("SET ROLE split_owner", "permission denied to set role"),
        ):
            try:
                app.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                assert error in str(exc), (statement, exc)
            else:
                raise AssertionError(f"split_app may run: {statement}")
