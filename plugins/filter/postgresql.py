"""Filters of the postgresql role (loaded with plugins/filter/bundle.py, same paths).

- `postgresql_drift`: what the running server's database part differs in from the inventory, as a
  list of readable strings (empty: nothing to do). The server's side is the one row of
  roles/postgresql/tasks/database_check.yml's query; the inventory's side is
  `postgresql_database_expected` (roles/postgresql/vars/main.yml). The role runs its database
  steps (one psql run of templates/database.sql.j2) only when the list is not empty, so a second
  run reads the server once and changes nothing. The check is at least
  as strict as those modules: anything it cannot confirm counts as a difference.
- `postgresql_role_options`: a role's flags `{'login': true, 'inherit': false}` as the options
  of ALTER ROLE, `LOGIN NOINHERIT` (templates/database.sql.j2).
- `scram_sha256_matches`: whether a password gives a stored SCRAM-SHA-256 verifier (RFC 5802 /
  7677, PostgreSQL's `rolpassword`). ASCII passwords only (the preflight requires printable
  ASCII: no SASLprep to reproduce).
- `postgresql_scram_verifier`: the verifier ALTER ROLE ... PASSWORD sends instead of the password.
- `postgresql_ident`, `postgresql_literal`: an identifier and a string quoted for SQL
  (templates/database.sql.j2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Any

_SCRAM = re.compile(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)")
SCRAM_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
_FLAGS = ("login", "inherit", "superuser", "createdb", "createrole", "replication", "bypassrls")


def scram_sha256_matches(verifier: Any, password: Any) -> bool:
    match = _SCRAM.fullmatch(str(verifier or ""))
    if not match or not str(password).isascii():
        return False
    try:
        salt, stored, server = (base64.b64decode(match[i], validate=True) for i in (2, 3, 4))
    except ValueError:
        return False
    want_stored, want_server = _scram_keys(str(password), salt, int(match[1]))
    return hmac.compare_digest(want_stored, stored) and hmac.compare_digest(want_server, server)


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """The StoredKey and ServerKey of a password (RFC 5802)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def postgresql_scram_verifier(password: Any, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier of a password, as the server stores it (a random salt), for
    ALTER ROLE ... PASSWORD: the plaintext never reaches the server, nor its log."""
    text = str(password)
    if not text.isascii():  # the preflight refuses it: the server would SASLprep it first
        raise ValueError("a PostgreSQL password must be printable ASCII")
    salt = salt or os.urandom(16)
    stored, server = _scram_keys(text, salt, SCRAM_ITERATIONS)
    b64 = [base64.b64encode(raw).decode() for raw in (salt, stored, server)]
    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64[0]}${b64[1]}:{b64[2]}"


def postgresql_ident(name: Any) -> str:
    """An SQL identifier, double-quoted (a role, a database, a setting's name)."""
    return '"' + str(name).replace('"', '""') + '"'


def postgresql_literal(value: Any) -> str:
    """An SQL string literal (standard_conforming_strings: PostgreSQL's default)."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("an SQL string cannot hold a NUL character")
    return "'" + text.replace("'", "''") + "'"


def _role_drift(name: str, want: Mapping[str, Any], have: Mapping[str, Any] | None) -> list[str]:
    if have is None:
        return [f"role {name}: missing"]
    out = [
        f"role {name}: {flag} is {have.get(flag)}, not {want['flags'][flag]}"
        for flag in _FLAGS
        if flag in want["flags"] and have.get(flag) is not want["flags"][flag]
    ]
    if "password" in want and not scram_sha256_matches(have.get("password"), want["password"]):
        out.append(f"role {name}: password differs (or is not SCRAM-SHA-256)")
    config = sorted(f"{key}={value}" for key, value in (want.get("config") or {}).items())
    if sorted(have.get("config") or []) != config:
        out.append(f"role {name}: settings are {have.get('config') or []}, not {config}")
    return out


def postgresql_drift(result: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """`result` is the registered postgresql_query result; `expected` as in vars/main.yml."""
    rows = result.get("query_result") or []
    if result.get("failed") or len(rows) != 1:
        reason = str(result.get("msg") or "no row").splitlines()[0]
        return [f"the server could not be read: {reason}"]
    state = rows[0]
    roles = state.get("roles") or {}
    out: list[str] = []
    for name, want in expected["roles"].items():
        out += _role_drift(name, want, roles.get(name))
    members = {tuple(pair) for pair in state.get("members") or []}
    out += [
        f"role {m} is not a member of {g}" for g, m in expected["members"] if (g, m) not in members
    ]
    database = state.get("database") or {}
    for key, want in expected["database"].items():
        have = database.get(key)
        # A list is what must be there at least (the owner's own rights come on top).
        if (not set(want) <= set(have or [])) if isinstance(want, list) else have != want:
            out.append(f"database {expected['name']}: {key} is {have}, not {want}")
    if state.get("database_public"):
        out.append(f"PUBLIC may still {state['database_public']} on the database")
    if "CREATE" in (state.get("schema_public") or []):
        out.append("PUBLIC may still CREATE in the schema public")
    if state.get("app_owns"):
        out.append(f"role {expected['app']} still owns {state['app_owns']} objects")
    for kind in ("tables", "sequences"):
        if state.get(f"{kind}_short"):
            out.append(f"{state[f'{kind}_short']} {kind} lack the rights of {expected['app']}")
    defaults = state.get("default_privs") or {}
    for kind, privileges in expected["default_privs"].items():
        if not set(privileges) <= set(defaults.get(kind) or []):
            out.append(f"default privileges ({kind}) are {defaults.get(kind)}, not {privileges}")
    return out


def postgresql_role_options(flags: Mapping[str, bool]) -> str:
    """`{'login': True, 'inherit': False}` -> `LOGIN NOINHERIT` (ALTER ROLE's options)."""
    return " ".join(("" if on else "NO") + name.upper() for name, on in flags.items())


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "postgresql_drift": postgresql_drift,
            "scram_sha256_matches": scram_sha256_matches,
            "postgresql_role_options": postgresql_role_options,
            "postgresql_scram_verifier": postgresql_scram_verifier,
            "postgresql_ident": postgresql_ident,
            "postgresql_literal": postgresql_literal,
        }
