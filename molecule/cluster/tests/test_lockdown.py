"""The lockdown: TLS between hosts, the host firewall seen from outsider1 (a lab host in none of
the app's groups), and no secret in a unit file, a command line, a world-readable file or the
Ansible output. The units' sandbox: test_hosts.py."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest
from conftest import address, app_python, other_host
from reliability import BROKER_PORT, RESULTS_PORT, broker_admin

testinfra_hosts = ["outsider1"]

CLUSTER = ["data1", "worker1", "worker2", "ops1"]
EVERY_HOST = [*CLUSTER, "outsider1"]
# The services the firewall closes to outsiders: (host, port, what).
SERVICES = [
    ("data1", 6380, "Redis broker (TLS)"),
    ("data1", 6382, "Redis results (TLS)"),
    ("data1", 5432, "PostgreSQL"),
    ("ops1", 5555, "Flower"),
    ("ops1", 9090, "Prometheus"),
    ("ops1", 9093, "Alertmanager"),
    ("ops1", 9808, "Celery exporter"),
    ("ops1", 8443, "job API"),
    ("data1", 9100, "node exporter"),
    ("worker1", 9100, "node exporter"),
    ("data1", 9121, "Redis exporter (broker)"),
    ("data1", 9122, "Redis exporter (results)"),
    ("data1", 9187, "PostgreSQL exporter"),
]
# Where a leaked secret would be: configuration, the app, its data and logs, the data services.
LEAK_DIRS = (
    "/etc /opt/celery /var/lib/celery /var/log/celery /var/lib/redis /var/log/redis "
    "/var/lib/postgresql /var/log/postgresql /run /tmp /var/tmp /root /home /usr/local"
)


def reachable(client: Any, targets: list[tuple[str, int]]) -> dict[tuple[str, int], bool]:
    """Whether a TCP connection from `client` opens within 5 s, per target; the targets probed
    side by side (a dropped port costs its 5 s timeout once, not once per port)."""
    probes = " ".join(
        f"(timeout 5 bash -c {shlex.quote(f'exec 3<>/dev/tcp/{a}/{p}')} && echo {a}:{p}) &"
        for a, p in targets
    )
    opened = set(client.run(f"{probes} wait").stdout.split())
    return {(a, p): f"{a}:{p}" in opened for a, p in targets}


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    """The lab's secrets, read on the controller (inventories/lab/group_vars/all/secrets.yml)."""
    root = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / ".lab" / "secrets"
    found = {p.name: p.read_text().split()[0] for p in root.iterdir() if p.read_text().strip()}
    assert {
        "redis_celery_password",
        "postgresql_app_password",
        "postgresql_migrator_password",
        "flower_basic_auth_password",
    } <= set(found), f"secrets missing in {root}: {sorted(found)}"
    assert all(len(v) >= 12 for v in found.values())
    return found


def test_firewall_loaded_on_every_host() -> None:
    for name in EVERY_HOST:
        h = other_host(name)
        ruleset = h.check_output("nft list chain inet firewall input")
        assert "policy drop" in ruleset, name
        assert h.service("nftables").is_enabled, name


def test_services_unreachable_from_outside(host: Any) -> None:
    # The probe works from here: SSH of the same hosts answers.
    ssh = [(address(name), 22) for name in ("data1", "ops1")]
    found = reachable(host, ssh + [(address(name), port) for name, port, _ in SERVICES])
    for target in ssh:
        assert found[target], f"outsider1 cannot reach SSH at {target}"
    for name, port, what in SERVICES:
        assert not found[address(name), port], f"{what} on {name}:{port} open to outsider1"


def test_services_reachable_from_a_worker() -> None:
    found = reachable(other_host("worker1"), [(address(name), port) for name, port, _ in SERVICES])
    for name, port, what in SERVICES:
        assert found[address(name), port], f"{what} on {name}:{port} closed to worker1"


def test_redis_plain_port_closed() -> None:
    data = other_host("data1")
    plain = (6379, 6381)  # the broker's and the result store's plain ports
    for port in plain:
        assert not data.socket(f"tcp://0.0.0.0:{port}").is_listening, port
        assert not data.socket(f"tcp://127.0.0.1:{port}").is_listening, port
    # From worker1, with the TLS port beside them: the probe itself works.
    seen = reachable(other_host("worker1"), [(address("data1"), p) for p in (*plain, 6380)])
    assert seen == {(address("data1"), p): p == 6380 for p in (*plain, 6380)}, seen


def test_app_settings_use_tls() -> None:
    env = other_host("worker1").check_output("cat /etc/celery/app.env")
    urls = dict(line.split("=", 1) for line in env.splitlines() if line.startswith("APP_"))
    data = address("data1")
    for key, port in (("APP_BROKER_URL", 6380), ("APP_RESULT_BACKEND", 6382)):
        assert urls[key].startswith('"rediss://') and f"@{data}:{port}/0?" in urls[key], key
        assert "ssl_cert_reqs=required&ssl_ca_certs=/etc/celery/ca.pem" in urls[key], key
    assert "sslmode=verify-full&sslrootcert=/etc/celery/ca.pem" in urls["APP_DATABASE_URL"]


@pytest.mark.parametrize("port", [6380, 6382], ids=["broker", "results"])
def test_redis_certificate_verified_against_the_ca(port: int) -> None:
    worker, data = other_host("worker1"), address("data1")
    s_client = (
        f"openssl s_client -connect {data}:{port} -verify_return_error -verify_ip {data} -brief"
    )
    ok = worker.run(f"timeout 20 {s_client} -CAfile /etc/celery/ca.pem </dev/null")
    assert ok.rc == 0 and "Verification: OK" in ok.stderr, ok.stderr
    # Another CA (the system's public ones) does not vouch for it: the check can fail.
    bad = worker.run(f"timeout 20 {s_client} -CAfile /etc/ssl/certs/ca-certificates.crt </dev/null")
    assert bad.rc != 0


def test_app_connections_are_tls() -> None:
    got = app_python(
        other_host("worker1"),
        "import json, os, redis, sqlalchemy as sa\n"
        "r = redis.Redis.from_url(os.environ['APP_BROKER_URL'])\n"
        "r.ping()\n"
        "e = sa.create_engine(os.environ['APP_DATABASE_URL'])\n"
        "with e.connect() as c:\n"
        "    q = 'select ssl from pg_stat_ssl where pid = pg_backend_pid()'\n"
        "    ssl = c.execute(sa.text(q)).scalar()\n"
        "plain = os.environ['APP_DATABASE_URL'].replace('sslmode=verify-full', 'sslmode=disable')\n"
        "try:\n"
        "    sa.create_engine(plain).connect()\n"
        "    refused = ''\n"
        "except Exception as exc:\n"
        "    refused = str(exc)\n"
        "conn = type(r.connection_pool.get_connection('ping')).__name__\n"
        "print(json.dumps([conn, ssl, refused]))",
    )
    redis_conn, pg_ssl, refused = got
    assert redis_conn == "SSLConnection"
    assert pg_ssl is True
    assert "no pg_hba.conf entry" in refused and "no encryption" in refused, refused


# Both logins of the database from a host, with a wrong password: what PostgreSQL answers each.
PG_LOGIN_PROBE = """
import json, psycopg
out = {}
for user in ("app", "app_migrator"):
    try:
        psycopg.connect(host=%(host)r, dbname="app", user=user, password="not-the-password",
                        sslmode="verify-full", sslrootcert="/etc/celery/ca.pem",
                        connect_timeout=10).close()
        out[user] = "connected"
    except psycopg.OperationalError as exc:
        text = str(exc)
        out[user] = ("no entry" if "no pg_hba.conf entry" in text
                     else "wrong password" if "password authentication failed" in text else text)
print(json.dumps(out))
"""


def test_each_database_login_only_from_the_hosts_that_use_it() -> None:
    """PostgreSQL's pg_hba decides before any password: ops1 (beat, Flower, the API; no task)
    finds no entry for `app`, only for `app_migrator` (site.yml may migrate from any app host),
    whose wrong password is then refused; worker1 finds both. No real password is sent."""
    probe = PG_LOGIN_PROBE % {"host": address("data1")}
    seen = {name: app_python(other_host(name), probe) for name in ("ops1", "worker1")}
    assert seen == {
        "ops1": {"app": "no entry", "app_migrator": "wrong password"},
        "worker1": {"app": "wrong password", "app_migrator": "wrong password"},
    }, seen


def test_no_secret_in_a_command_line(secrets: dict[str, str]) -> None:
    for name in EVERY_HOST:
        # The command lines come to the controller: the secrets are never sent to a host for this.
        lines = other_host(name).check_output(
            "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done"
        )
        assert "celery" in lines or name in ("data1", "outsider1")
        for key, value in secrets.items():
            assert value not in lines, f"{key} in a command line on {name}"


def test_no_secret_in_a_unit_or_a_world_readable_file(secrets: dict[str, str]) -> None:
    patterns = " ".join(f"-e {shlex.quote(v)}" for v in secrets.values())
    for name in EVERY_HOST:
        h = other_host(name)
        units = h.run(f"grep -rlF {patterns} /etc/systemd /usr/lib/systemd/system /run/systemd")
        assert units.rc == 1, f"a secret in a unit file on {name}: {units.stdout}{units.stderr}"
        files = h.run(
            f"find {LEAK_DIRS} -xdev -type f -perm -o+r -size -20M -print0 2>/dev/null"
            f" | xargs -0 -r grep -lF {patterns}"
        )
        assert files.stdout.strip() == "", (
            f"a secret in a world-readable file on {name}: {files.stdout}"
        )
        # The check can fail: app.env holds the secrets (not world-readable).
        if name == "worker1":
            assert h.run(f"grep -qF {patterns} /etc/celery/app.env").rc == 0


def test_the_migrations_password_is_on_no_host(secrets: dict[str, str]) -> None:
    """The migrations' login reaches `taskctl db migrate` on stdin (roles/celery_app/tasks/
    migrate.yml): no file of any host holds it, whatever its mode."""
    value = shlex.quote(secrets["postgresql_migrator_password"])
    for name in EVERY_HOST:
        found = other_host(name).run(
            f"grep -rlF -e {value} /etc /var/lib /opt /root /run /tmp /var/tmp /var/log 2>/dev/null"
        )
        assert found.stdout.strip() == "", f"the migrations' password on {name}: {found.stdout}"


def test_hosts_that_run_no_task_hold_no_task_secret(secrets: dict[str, str]) -> None:
    """ops1 (beat, Flower, the exporter, the API) runs no task: its app.env has the database's
    address without the tasks' password, and no SMTP password or SMS token line; no file of ops1
    holds that password. worker1 has all three (what the check looks for is there to find). The
    workers' Redis password is on ops1 only in taskctl's root-only login, which no service reads."""
    redis = shlex.quote(secrets["redis_celery_password"])
    ops1 = other_host("ops1")
    holders = ops1.run(f"grep -rlF -e {redis} {LEAK_DIRS} 2>/dev/null").stdout.split()
    assert holders == ["/etc/celery/taskctl.env"], holders
    login = ops1.file("/etc/celery/taskctl.env")
    assert (login.user, login.group, login.mode) == ("root", "root", 0o600)
    for unit in ("celery-beat", "flower", "celery-exporter", "celery-api"):
        files = ops1.check_output(f"systemctl show -P EnvironmentFiles {unit}")
        assert "taskctl.env" not in files, (unit, files)
    value = shlex.quote(secrets["postgresql_app_password"])
    keys = ("APP_DATABASE_URL", "APP_SMTP_PASSWORD", "APP_SMS_GATEWAY_TOKEN")
    for name, runs_tasks in (("worker1", True), ("ops1", False)):
        h = other_host(name)
        env = h.check_output("cat /etc/celery/app.env")
        present = {k for k in keys if f"\n{k}=" in f"\n{env}"}
        assert "APP_DATABASE_URL" in present, (name, present)
        assert (present == set(keys)) == runs_tasks, (name, present)
        found = h.run(f"grep -rlF -e {value} {LEAK_DIRS} 2>/dev/null").stdout.split()
        assert bool(found) == runs_tasks, f"the tasks' database password on {name}: {found}"


# Per service on ops1: its unit, its Redis user, a command the user may run, and commands it may
# not (ACL DRYRUN: Redis's own verdict, nothing runs). None may pop, delete or flush.
REFUSED_TO_ALL = ["BRPOP pricing 1", "DEL default", "HGETALL unacked:pricing", "FLUSHDB"]
OWN_LOGINS = [
    ("celery-beat.service", "beat", "LPUSH default x", ["GET celery-task-meta-x"]),
    ("celery-exporter.service", "celery_exporter", "LLEN default", ["LPUSH default x"]),
    ("flower.service", "flower", "GET celery-task-meta-x", ["LPUSH default x"]),
    ("celery-api.service", "producer", "LPUSH default x", ["PUBLISH /0.celery.pidbox x"]),
]
SERVICE_USERS = ["beat", "celery_exporter", "flower", "producer"]


@pytest.mark.parametrize(("unit", "user", "allowed", "refused"), OWN_LOGINS)
def test_a_service_logs_in_to_redis_as_its_own_user(
    unit: str, user: str, allowed: str, refused: list[str]
) -> None:
    """The service's broker connections (found by its main PID's sockets on ops1) are its own
    ACL user's, which may not pop, delete or read results (roles/redis/README.md)."""
    ops1 = other_host("ops1")
    pid = ops1.check_output(f"systemctl show -P MainPID {unit}")
    sockets = ops1.check_output("ss -tnpH state established '( dport = :6380 )'").splitlines()
    ports = {line.split()[2].rsplit(":", 1)[1] for line in sockets if f"pid={pid}," in line}
    assert ports, f"{unit} (pid {pid}) holds no broker connection: {sockets}"
    clients = broker_admin("CLIENT LIST").splitlines()
    users = {
        part.split("=", 1)[1]
        for line in clients
        if any(f"addr={address('ops1')}:{port} " in line for port in ports)
        for part in line.split()
        if part.startswith("user=")
    }
    assert users == {user}, (users, ports)
    assert broker_admin(f"ACL DRYRUN {user} {allowed}") == "OK"
    for command in [*refused, *REFUSED_TO_ALL]:
        verdict = broker_admin(f"ACL DRYRUN {user} {command}", check=False)
        assert "no permissions" in verdict, (user, command, verdict)


@pytest.mark.parametrize("port", [BROKER_PORT, RESULTS_PORT], ids=["broker", "results"])
def test_no_command_of_a_service_was_refused(port: int) -> None:
    """After the end-to-end, API and browser tests (run before this module): Redis refused no
    command of beat, the exporter, Flower or the API (ACL LOG since Redis started), so each
    service's rules are enough for what it did."""
    log = broker_admin("ACL LOG 100", port=port)
    refused = [user for user in SERVICE_USERS if f"\n{user}\n" in f"\n{log}\n"]
    assert not refused, log[-3000:]


def test_no_secret_in_the_ansible_output(secrets: dict[str, str]) -> None:
    log = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.log"
    text = log.read_text(errors="replace")
    # Converge ran and logged (the redis and app roles touched every secret).
    assert "Write the app settings" in text and "PLAY RECAP" in text
    for key, value in secrets.items():
        assert value not in text, f"{key} in the Ansible output ({log})"
