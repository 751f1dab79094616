"""The postgresql role on real systemd hosts: service, addresses, scram, pg_hba from both sides."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from conftest import address_of, lab_reboot

testinfra_hosts = ["postgresql_servers"]

PORT = 5432
UNIT = "postgresql@15-main"


def sql(host: Any, query: str, db: str = "postgres") -> str:
    """Run a query as the postgres superuser over the local socket (peer authentication)."""
    cmd = f"runuser -u postgres -- psql -XAtq -d {db} -c {shlex.quote(query)}"
    return str(host.check_output(cmd))


def app_login(
    client: Any,
    server: str,
    password: str,
    user: str = "app",
    db: str = "app",
    sslmode: str = "verify-full",
    query: str = "SELECT current_user",
) -> Any:
    """psql from a client host over TCP, password in the environment (never on a command line).

    verify-full: TLS, the server's certificate checked against the lab CA and its address.
    """
    env = f"PGSSLMODE={sslmode} PGCONNECT_TIMEOUT=5"
    if password:
        env += f" PGPASSWORD={shlex.quote(password)}"
    return client.run(
        f"{env} psql -XAtq -w -h {server} -p {PORT} -U {user} -d {db} -c {shlex.quote(query)}"
    )


def listening(host: Any) -> set[str]:
    return {
        s
        for s in host.socket.get_listening_sockets()
        if s.startswith("tcp") and s.endswith(f":{PORT}")
    }


def test_service_active_and_enabled(host: Any) -> None:
    cluster = host.service(UNIT)
    assert cluster.is_running
    assert cluster.is_enabled
    assert host.service("postgresql").is_enabled


def test_listens_on_localhost_and_cluster_address_only(host: Any, cluster_address: str) -> None:
    assert listening(host) == {f"tcp://127.0.0.1:{PORT}", f"tcp://{cluster_address}:{PORT}"}


def test_tls_on_with_the_role_certificate(host: Any) -> None:
    assert sql(host, "SHOW ssl") == "on"
    assert sql(host, "SHOW ssl_cert_file") == "/etc/postgresql/15/main/tls/server.crt"
    key = host.file("/etc/postgresql/15/main/tls/server.key")
    assert (key.user, key.mode) == ("postgres", 0o600)


def test_passwords_are_scram_hashes(host: Any) -> None:
    assert sql(host, "SHOW password_encryption") == "scram-sha-256"
    stored = sql(host, "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert stored.startswith("SCRAM-SHA-256$4096:")
    assert (
        sql(host, "SELECT count(*) FROM pg_authid WHERE rolpassword NOT LIKE 'SCRAM-SHA-256$%'")
        == "0"
    )


def test_app_role_is_unprivileged(host: Any) -> None:
    flags = sql(
        host,
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
        " FROM pg_roles WHERE rolname = 'app'",
    )
    assert flags == "t|f|f|f|f|f"


def test_monitor_role_reads_statistics_only(host: Any) -> None:
    """The metrics exporter's role: login by peer only (no password), member of pg_monitor alone."""
    flags = sql(
        host,
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,"
        " rolpassword IS NULL FROM pg_authid WHERE rolname = 'prometheus'",
    )
    assert flags == "t|f|f|f|f|f|t"
    groups = sql(
        host,
        "SELECT string_agg(g.rolname, ',') FROM pg_auth_members m"
        " JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member"
        " WHERE u.rolname = 'prometheus'",
    )
    assert groups == "pg_monitor"
    assert sql(host, "SELECT has_database_privilege('prometheus', 'app', 'CONNECT')") == "f"


def test_app_database_owned_by_app_owner_and_closed_to_public(host: Any) -> None:
    assert (
        sql(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'")
        == "app_owner"
    )
    assert sql(host, "SELECT has_database_privilege('public', 'app', 'CONNECT')") == "f"
    assert (
        sql(host, "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'app'")
        == "UTF8"
    )


def test_three_roles_owner_migrator_and_tasks(host: Any) -> None:
    """app_owner owns and cannot log in; app_migrator logs in and may only act as it (NOINHERIT);
    app, the tasks' role, is in no role and carries the session bounds."""
    flags = sql(
        host,
        "SELECT rolname, rolcanlogin, rolinherit FROM pg_roles"
        " WHERE rolname IN ('app_owner', 'app_migrator', 'app') ORDER BY rolname",
    )
    assert flags.splitlines() == ["app|t|t", "app_migrator|t|f", "app_owner|f|t"]
    members = sql(
        host,
        "SELECT string_agg(g.rolname || '>' || u.rolname, ',') FROM pg_auth_members m"
        " JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member"
        " WHERE u.rolname IN ('app', 'app_migrator')",
    )
    assert members == "app_owner>app_migrator"
    config = sql(host, "SELECT array_to_string(rolconfig, ',') FROM pg_roles WHERE rolname = 'app'")
    assert set(config.split(",")) == {
        "statement_timeout=5min",
        "lock_timeout=30s",
        "idle_in_transaction_session_timeout=2min",
    }


def test_the_tasks_role_gets_rows_of_the_owners_tables_and_nothing_else(
    host: Any, peer: Any, hostvars: dict[str, Any], cluster_address: str
) -> None:
    """A table the owner creates (as the migrations do) is readable and writable by app through
    the default privileges; app may not create, drop or truncate, nor act as the owner."""
    sql(host, "SET ROLE app_owner; CREATE TABLE IF NOT EXISTS role_probe (id serial, v int)", "app")
    try:

        def as_app(query: str) -> Any:
            return app_login(
                peer("worker1"), cluster_address, hostvars["postgresql_app_password"], query=query
            )

        wrote = as_app("INSERT INTO role_probe (v) VALUES (1) RETURNING id")
        assert wrote.rc == 0 and wrote.stdout.strip().isdigit(), wrote.stderr
        for query, error in (
            ("CREATE TABLE intruder (id int)", "permission denied for schema public"),
            ("DROP TABLE role_probe", "must be owner of table role_probe"),
            ("TRUNCATE role_probe", "permission denied for table role_probe"),
            ("SET ROLE app_owner", "permission denied to set role"),
        ):
            out = as_app(query)
            assert out.rc != 0 and error in out.stderr, (query, out.stderr)
    finally:
        sql(host, "DROP TABLE IF EXISTS role_probe", "app")


def test_pg_hba_scram_from_app_hosts_only(host: Any, peer: Any) -> None:
    worker = address_of(peer("worker1"))
    rules = sql(
        host,
        "SELECT type, array_to_string(database, ','), array_to_string(user_name, ','),"
        " coalesce(address, ''), coalesce(netmask, ''), auth_method FROM pg_hba_file_rules"
        " ORDER BY line_number",
    ).splitlines()
    assert rules == [
        "local|all|postgres|||peer",
        # The metrics exporter's role (postgresql_monitor_user): the postgres database, by peer.
        "local|postgres|prometheus|||peer",
        # The tasks' role and the migrations' login, from the app's hosts only.
        f"hostssl|app|app,app_migrator|{worker}|255.255.255.255|scram-sha-256",
    ]
    hba = host.file("/etc/postgresql/15/main/pg_hba.conf")
    assert (hba.user, hba.group, hba.mode) == ("postgres", "postgres", 0o640)


def test_max_connections_sized_from_worker_inventory(host: Any) -> None:
    # worker1: concurrency 3 + autoscale max 5 = 8 pool processes, + margin 20.
    assert sql(host, "SHOW max_connections") == "28"


def test_no_setting_pending(host: Any) -> None:
    assert sql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert sql(host, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"


def test_app_host_logs_in_with_the_password(
    host: Any, peer: Any, hostvars: dict[str, Any], cluster_address: str
) -> None:
    out = app_login(peer("worker1"), cluster_address, hostvars["postgresql_app_password"])
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() == "app"


def test_app_host_connection_is_tls(
    peer: Any, hostvars: dict[str, Any], cluster_address: str
) -> None:
    out = app_login(
        peer("worker1"),
        cluster_address,
        hostvars["postgresql_app_password"],
        query="SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() in ("t|TLSv1.3", "t|TLSv1.2")


def test_app_host_without_tls_refused(
    peer: Any, hostvars: dict[str, Any], cluster_address: str
) -> None:
    out = app_login(
        peer("worker1"), cluster_address, hostvars["postgresql_app_password"], sslmode="disable"
    )
    assert out.rc != 0
    assert "no pg_hba.conf entry" in out.stderr
    assert "no encryption" in out.stderr


def test_app_host_wrong_password_refused(peer: Any, cluster_address: str) -> None:
    out = app_login(peer("worker1"), cluster_address, "not-the-password")
    assert out.rc != 0
    assert 'password authentication failed for user "app"' in out.stderr


def test_app_host_without_password_refused(peer: Any, cluster_address: str) -> None:
    out = app_login(peer("worker1"), cluster_address, "")
    assert out.rc != 0
    assert "no password supplied" in out.stderr


@pytest.mark.parametrize(
    ("user", "db"), [("app", "postgres"), ("postgres", "postgres"), ("postgres", "app")]
)
def test_app_host_only_reaches_app_database_as_app(
    peer: Any, hostvars: dict[str, Any], cluster_address: str, user: str, db: str
) -> None:
    out = app_login(peer("worker1"), cluster_address, hostvars["postgresql_app_password"], user, db)
    assert out.rc != 0
    assert "no pg_hba.conf entry" in out.stderr


def test_outsider_refused_by_pg_hba(
    peer: Any, hostvars: dict[str, Any], cluster_address: str
) -> None:
    outsider = peer("outsider1")
    out = app_login(outsider, cluster_address, hostvars["postgresql_app_password"])
    assert out.rc != 0
    assert f'no pg_hba.conf entry for host "{address_of(outsider)}"' in out.stderr


def test_localhost_app_login_refused_on_a_data_only_host(
    host: Any, hostvars: dict[str, Any]
) -> None:
    out = app_login(host, "127.0.0.1", hostvars["postgresql_app_password"], sslmode="require")
    assert out.rc != 0
    assert "no pg_hba.conf entry" in out.stderr


def test_back_after_reboot(
    host: Any, peer: Any, hostvars: dict[str, Any], cluster_address: str
) -> None:
    """Last: reboot the host; PostgreSQL comes back by itself on both addresses, data kept."""
    sql(
        host,
        "CREATE TABLE IF NOT EXISTS molecule_probe (id int); INSERT INTO molecule_probe VALUES (1)",
        db="app",
    )
    init_started = host.check_output("cut -d' ' -f22 /proc/1/stat")  # PID 1's start time
    lab_reboot(host.backend.get_hostname())
    assert host.run("systemctl is-system-running --wait").stdout.strip() == "running"
    assert host.check_output("cut -d' ' -f22 /proc/1/stat") != init_started
    assert host.service(UNIT).is_running
    assert listening(host) == {f"tcp://127.0.0.1:{PORT}", f"tcp://{cluster_address}:{PORT}"}
    out = app_login(peer("worker1"), cluster_address, hostvars["postgresql_app_password"])
    assert out.rc == 0, out.stderr
    assert sql(host, "SELECT count(*) FROM molecule_probe", db="app") == "1"
    sql(host, "DROP TABLE molecule_probe", db="app")
