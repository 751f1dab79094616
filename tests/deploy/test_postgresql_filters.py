"""The postgresql role's filters (plugins/filter/postgresql.py): SCRAM verifiers made by libpq
itself (psycopg's binding of PQencryptPasswordConn), and the comparison the role skips its
database steps on. The cluster test test_a_database_changed_by_hand_is_put_back runs both
against the lab's PostgreSQL."""

from __future__ import annotations

import base64
import copy
from typing import Any

import jinja2
import pytest
from adhoc import ROOT, load_plugin
from psycopg import pq

pg = load_plugin("plugins/filter/postgresql.py")


def libpq_verifier(password: str) -> str:
    conn = pq.PGconn.connect_start(b"host=/nonexistent")  # never connects: libpq hashes locally
    return conn.encrypt_password(password.encode(), b"app", b"scram-sha-256").decode()


@pytest.mark.parametrize("password", ["secret", "a" * 64, "p@ss:w/rd%$", " spaced "])
def test_scram_matches_the_password_libpq_hashed(password: str) -> None:
    verifier = libpq_verifier(password)
    assert pg.scram_sha256_matches(verifier, password)
    assert not pg.scram_sha256_matches(verifier, password + "x")


@pytest.mark.parametrize(
    "verifier", [None, "", "md5" + "0" * 32, "SCRAM-SHA-256$4096:!!$x:y", "plain text"]
)
def test_scram_never_matches_anything_else(verifier: Any) -> None:
    assert not pg.scram_sha256_matches(verifier, "secret")


def test_role_options() -> None:
    flags = {"login": True, "inherit": False, "superuser": False}
    assert pg.postgresql_role_options(flags) == "LOGIN NOINHERIT NOSUPERUSER"


FLAGS = {
    "login": True,
    "superuser": False,
    "createdb": False,
    "createrole": False,
    "replication": False,
    "bypassrls": False,
}
EXPECTED: dict[str, Any] = {
    "name": "app",
    "app": "app",
    "roles": {
        "app_owner": {"flags": {**FLAGS, "login": False}},
        "app": {"flags": FLAGS, "password": "tasks-pw", "config": {"lock_timeout": "30s"}},
        "app_migrator": {"flags": {**FLAGS, "inherit": False}, "password": "migrations-pw"},
    },
    "members": [["app_owner", "app_migrator"]],
    "database": {"owner": "app_owner", "encoding": "UTF8", "connect": ["app", "app_migrator"]},
    "default_privs": {"tables": ["SELECT", "DELETE"], "sequences": ["USAGE"]},
}


def role(flags: dict[str, bool], password: str | None = None, config: Any = None) -> Any:
    have = {**{name: False for name in pg._FLAGS}, "inherit": True, **flags}
    return {**have, "password": password and libpq_verifier(password), "config": config}


def in_order() -> dict[str, Any]:
    """A query row as the lab's server gives it when nothing differs."""
    row = {
        "roles": {
            "app_owner": role({"login": False}),
            "app": role({"login": True}, "tasks-pw", ["lock_timeout=30s"]),
            "app_migrator": role({"login": True, "inherit": False}, "migrations-pw"),
        },
        "members": [["app_owner", "app_migrator"]],
        "database": {
            "owner": "app_owner",
            "encoding": "UTF8",
            "connect": ["app", "app_migrator", "app_owner"],
        },
        "database_public": None,
        "schema_public": ["USAGE"],
        "app_owns": 0,
        "tables_short": 0,
        "sequences_short": 0,
        "default_privs": {
            "tables": ["INSERT", "SELECT", "UPDATE", "DELETE"],
            "sequences": ["SELECT", "USAGE"],
        },
    }
    return {"query_result": [row], "failed": False}


def test_nothing_differs() -> None:
    assert pg.postgresql_drift(in_order(), EXPECTED) == []


def changed(path: list[Any], value: Any) -> dict[str, Any]:
    result = copy.deepcopy(in_order())
    node = result["query_result"][0]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return result


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (["roles", "app"], None, "role app: missing"),
        (["roles", "app", "password"], libpq_verifier("old"), "role app: password differs"),
        (["roles", "app", "password"], "md5" + "0" * 32, "role app: password differs"),
        (["roles", "app", "config"], None, "role app: settings are []"),
        (["roles", "app_migrator", "inherit"], True, "role app_migrator: inherit is True"),
        (["roles", "app_owner", "login"], True, "role app_owner: login is True"),
        (["roles", "app", "superuser"], True, "role app: superuser is True"),
        (["members"], [], "role app_migrator is not a member of app_owner"),
        (["database"], None, "database app: owner is None"),
        (["database", "connect"], ["app_owner"], "database app: connect"),
        (["database_public"], "CONNECT,TEMPORARY", "PUBLIC may still CONNECT,TEMPORARY"),
        (["schema_public"], ["CREATE", "USAGE"], "PUBLIC may still CREATE"),
        (["app_owns"], 3, "role app still owns 3 objects"),
        (["tables_short"], 2, "2 tables lack the rights of app"),
        (["sequences_short"], 1, "1 sequences lack the rights of app"),
        (["default_privs"], None, "default privileges (tables)"),
        (["default_privs", "sequences"], ["SELECT"], "default privileges (sequences)"),
    ],
)
def test_each_difference_is_named(path: list[Any], value: Any, named: str) -> None:
    found = pg.postgresql_drift(changed(path, value), EXPECTED)
    assert any(line.startswith(named) for line in found), found


def test_a_server_that_could_not_be_read_differs() -> None:
    failed = {"failed": True, "msg": 'database "app" does not exist\nmore'}
    assert pg.postgresql_drift(failed, EXPECTED) == [
        'the server could not be read: database "app" does not exist'
    ]


@pytest.mark.parametrize("password", ["secret-password", "p@ss:w/rd%$'\" x"])
def test_the_verifier_sent_is_libpqs_for_the_same_salt(password: str) -> None:
    libpq = libpq_verifier(password)
    salt = base64.b64decode(libpq.split(":")[1].split("$")[0])
    assert pg.postgresql_scram_verifier(password, salt) == libpq
    fresh = pg.postgresql_scram_verifier(password)
    assert pg.scram_sha256_matches(fresh, password) and fresh != libpq  # a salt of its own
    assert password not in fresh


def test_a_password_that_is_not_ascii_is_refused() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        pg.postgresql_scram_verifier("pässwörter-lang")


def test_identifiers_and_strings_are_quoted() -> None:
    assert pg.postgresql_ident('app"; DROP ROLE x; --') == '"app""; DROP ROLE x; --"'
    assert pg.postgresql_literal("it's") == "'it''s'"
    with pytest.raises(ValueError, match="NUL"):
        pg.postgresql_literal("a\x00b")


def test_the_database_script_carries_verifiers_never_passwords() -> None:
    """templates/database.sql.j2 rendered with these filters and the role's expected state: each
    role's flags and verifier, its settings reset then set, the database, grants; no password."""
    expected = {
        "name": "app",
        "app": "app",
        "roles": {
            "app_owner": {"flags": {"login": False}},
            "app": {
                "flags": {"login": True, "superuser": False},
                "password": "tasks-password-1",
                "config": {"statement_timeout": "30s"},
            },
            "app_migrator": {"flags": {"login": True, "inherit": False}, "password": "migr-pw-22"},
        },
        "members": [["app_owner", "app_migrator"]],
        "database": {
            **{"owner": "app_owner", "encoding": "UTF8", "collate": "C.UTF-8", "ctype": "C.UTF-8"},
            "connect": ["app", "app_migrator"],
        },
        "default_privs": {"tables": ["SELECT", "INSERT"], "sequences": ["USAGE"]},
    }
    # As Ansible renders templates (trim_blocks); SQL, not HTML: nothing to escape.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)  # noqa: S701
    env.filters.update(pg.FilterModule().filters())
    template = (ROOT / "roles/postgresql/templates/database.sql.j2").read_text()
    sql = env.from_string(template).render(postgresql_database_expected=expected)
    assert "tasks-password-1" not in sql and "migr-pw-22" not in sql
    assert sql.count("PASSWORD 'SCRAM-SHA-256$4096:") == 2
    assert 'ALTER ROLE "app_migrator" LOGIN NOINHERIT PASSWORD' in sql
    assert 'ALTER ROLE "app" RESET ALL;\nALTER ROLE "app" SET "statement_timeout" = \'30s\';' in sql
    assert 'GRANT "app_owner" TO "app_migrator";' in sql
    assert 'REVOKE ALL ON DATABASE "app" FROM PUBLIC;' in sql
    assert 'GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO "app";' in sql
    assert "\\connect 'app'" in sql
