"""The data host serves the cluster: the broker and result store Redis (TLS) and PostgreSQL on its
cluster address."""

from __future__ import annotations

import re
from typing import Any

from conftest import INSPECT_STATS, address_of, app_python, other_host, run_playbook
from reliability import all_nodes

testinfra_hosts = ["data1"]


def test_data_ports_on_the_cluster_address(host: Any) -> None:
    address = address_of(host)
    for port in (6380, 6382, 5432):
        assert host.socket(f"tcp://{address}:{port}").is_listening, port
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening, port


def test_postgresql_sized_for_the_pool_processes_the_workers_start(host: Any) -> None:
    """max_connections is sized from the worker instances as the worker role resolves them (one
    definition, roles/celery_worker/filter_plugins/instances.py); the count written beside it
    equals the pool processes the running instances report to Celery's `inspect stats`."""
    conf = host.file("/etc/postgresql/15/main/conf.d/50-bundle.conf").content_string
    sized = int(re.search(r"^# (\d+) worker pool processes", conf, re.MULTILINE).group(1))
    stats = app_python(other_host("ops1"), INSPECT_STATS)
    assert sorted(stats) == sorted(all_nodes()), sorted(stats)
    started = sum(int(s["pool"]["max-concurrency"]) for s in stats.values())
    assert sized == started, (sized, {n: s["pool"]["max-concurrency"] for n, s in stats.items()})


BOUNDS = """
import json
from sqlalchemy import text
from app.db import get_engine
names = ["statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
         "tcp_keepalives_idle"]
with get_engine().connect() as c:
    print(json.dumps({n: c.execute(text("SELECT current_setting(:n)"), {"n": n}).scalar()
                      for n in names}))
"""


def keepalive_seconds(ss_lines: list[str]) -> list[int]:
    """The keepalive timers of `ss -o` lines, in seconds (e.g. timer:(keepalive,29sec,0))."""
    units = {"ms": 0.001, "sec": 1, "min": 60}
    found = (re.search(r"timer:\(keepalive,([\d.]+)(ms|sec|min)", line) for line in ss_lines)
    return [round(float(m.group(1)) * units[m.group(2)]) for m in found if m]


def test_the_apps_sessions_are_bounded(host: Any) -> None:
    """The app's role carries the postgresql role's session bounds (its defaults), and both ends
    of its connections probe a silent peer after 30 s (app) and 60 s (server) of quiet, not
    after TCP's two hours (ss shows the time left on each connection's keepalive timer)."""
    bounds = app_python(other_host("worker1"), BOUNDS)
    assert bounds == {
        "statement_timeout": "5min",
        "lock_timeout": "30s",
        "idle_in_transaction_session_timeout": "2min",
        "tcp_keepalives_idle": "60",
    }
    established = "ss -tnoH state established '( {} = :5432 )'"
    # Columns without a state: Recv-Q Send-Q Local Peer timer; the exporter uses the socket.
    server = host.check_output(established.format("sport")).splitlines()
    client = other_host("worker1").check_output(established.format("dport")).splitlines()
    server_timers = keepalive_seconds(server)
    client_timers = keepalive_seconds(client)
    assert server_timers and client_timers, (server, client)
    assert max(server_timers) <= 60, server
    assert max(client_timers) <= 30, client


REFUSED = """
import json
from sqlalchemy import text
from app.db import get_engine
out = {}
for statement in ("CREATE TABLE intruder (id int)", "DROP TABLE quotes", "TRUNCATE quotes",
                  "SET ROLE app_owner"):
    with get_engine().connect() as c:
        try:
            c.execute(text(statement))
            out[statement] = "allowed"
        except Exception as exc:
            out[statement] = str(exc.orig if hasattr(exc, "orig") else exc).splitlines()[0]
        c.rollback()
print(json.dumps(out))
"""


def test_the_tasks_role_owns_nothing_and_may_not_change_the_schema(host: Any) -> None:
    """The migrations ran as app_owner (taskctl db migrate --owner, its login on stdin): every
    table, sequence and function of the app is app_owner's; the workers' role is refused DDL."""
    owners = host.check_output(
        "runuser -u postgres -- psql -XAtq -d app -c "
        '"SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class'
        " WHERE relnamespace = 'public'::regnamespace"
        " UNION SELECT pg_get_userbyid(proowner) FROM pg_proc"
        " WHERE pronamespace = 'public'::regnamespace\""
    )
    assert owners.split() == ["app_owner"]
    refused = app_python(other_host("worker1"), REFUSED)
    assert refused == {
        "CREATE TABLE intruder (id int)": "permission denied for schema public",
        "DROP TABLE quotes": "must be owner of table quotes",
        "TRUNCATE quotes": "permission denied for table quotes",
        "SET ROLE app_owner": 'permission denied to set role "app_owner"',
    }, refused


TAMPER = (
    "REVOKE DELETE ON quotes FROM app; GRANT CREATE ON SCHEMA public TO PUBLIC; "
    "ALTER ROLE app SET statement_timeout = 0; ALTER ROLE app_migrator INHERIT"
)
TAMPERED = """SELECT has_table_privilege('app', 'quotes', 'DELETE'),
  has_schema_privilege('public', 'public', 'CREATE'),
  (SELECT setconfig::text FROM pg_db_role_setting
    WHERE setrole = 'app'::regrole AND setdatabase = 0),
  (SELECT rolinherit FROM pg_roles WHERE rolname = 'app_migrator')"""
REPAIR = (
    "GRANT DELETE ON quotes TO app; REVOKE CREATE ON SCHEMA public FROM PUBLIC; "
    "ALTER ROLE app SET statement_timeout = '5min'; ALTER ROLE app_migrator NOINHERIT"
)


def test_what_was_changed_by_hand_is_put_back(host: Any) -> None:
    """A second site.yml reads each host once (packages, accounts, units: playbooks/preflight.yml)
    and the database once (roles/postgresql/tasks/database_check.yml), and acts only where they
    differ from the inventory. What an operator changed by hand is still found and put back: a
    revoked grant, the schema opened to PUBLIC, a role setting and a role flag; a disabled
    exporter, the package's own exporter unit unmasked, the prometheus account given a shell; a
    file of bundle_files edited and opened to all (its action compares with the read)."""
    psql = "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d app -c "
    units = (
        "systemctl is-enabled prometheus-node-exporter.service prometheus-redis-exporter.service"
        " || true; getent passwd prometheus | cut -d: -f7"
        " && stat -c %a /etc/default/prometheus-node-exporter"
        " && sha256sum /etc/default/prometheus-node-exporter"
    )

    def state() -> tuple[str, str]:
        return host.check_output(psql + f'"{TAMPERED}"'), host.check_output(units)

    healthy = state()
    assert healthy[1].split()[:4] == ["enabled", "masked", "/usr/sbin/nologin", "600"], healthy
    host.check_output(psql + f'"{TAMPER}"')
    host.check_output(
        "systemctl disable --quiet prometheus-node-exporter.service"
        " && systemctl unmask --quiet prometheus-redis-exporter.service"
        " && usermod -s /bin/bash prometheus"
        " && echo '# by hand' >> /etc/default/prometheus-node-exporter"
        " && chmod 0644 /etc/default/prometheus-node-exporter"
    )
    try:
        assert state()[0] != healthy[0] and state()[1] != healthy[1]
        run = run_playbook("site.yml", "-v", "--tags", "postgresql_database,monitoring")
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
        for found in (
            "lack the rights of app",
            "PUBLIC may still CREATE",
            "statement_timeout",
            "role app_migrator: inherit is True",
        ):
            assert found in output, (found, output[-4000:])
        assert state() == healthy, output[-4000:]
    finally:
        if state()[0] != healthy[0]:
            host.check_output(psql + f'"{REPAIR}"')
        host.check_output(
            "systemctl enable --quiet prometheus-node-exporter.service"
            " && systemctl mask --quiet prometheus-redis-exporter.service"
            " && usermod -s /usr/sbin/nologin prometheus"
            " && sed -i '/^# by hand$/d' /etc/default/prometheus-node-exporter"
            " && chmod 0600 /etc/default/prometheus-node-exporter"
        )
