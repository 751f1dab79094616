"""The redis role on a real systemd host: the broker and the result store, their addresses,
authentication, ACL, persistence and memory policies."""

from __future__ import annotations

import os
import socket
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery_probe import run_probe
from conftest import lab_reboot

testinfra_hosts = ["redis_servers"]

PORT = 6379
TLS_PORT = 6380
RESULTS_PORT = 6381  # the result store, redis-server@results
RESULTS_TLS_PORT = 6382
UNITS = ["redis-server", "redis-server@results"]
CA = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "tls" / "ca.crt"


def client(
    address: str, user: str | None, password: str | None, db: int = 0, port: int = PORT
) -> redis.Redis:
    return redis.Redis(
        host=address, port=port, db=db, username=user, password=password, socket_timeout=5
    )


def admin(hostvars: dict[str, Any], address: str = "127.0.0.1", port: int = PORT) -> redis.Redis:
    return client(address, "admin", hostvars["redis_admin_password"], port=port)


def tls_client(address: str, user: str, password: str, ca: Path | None = CA) -> redis.Redis:
    """TLS as the app uses it: the server certificate verified against the CA, name included."""
    return redis.Redis(
        host=address,
        port=TLS_PORT,
        username=user,
        password=password,
        ssl=True,
        ssl_cert_reqs="required",
        ssl_ca_certs=str(ca) if ca else None,
        ssl_check_hostname=True,
        socket_timeout=5,
    )


def listening(host: Any, port: int) -> set[str]:
    return {s for s in host.socket.get_listening_sockets() if s.rsplit(":", 1)[-1] == str(port)}


@pytest.mark.parametrize("unit", UNITS)
def test_service_active_and_enabled(host: Any, unit: str) -> None:
    service = host.service(unit)
    assert service.is_running
    assert service.is_enabled


@pytest.mark.parametrize("port", [PORT, TLS_PORT, RESULTS_PORT, RESULTS_TLS_PORT])
def test_listens_on_localhost_and_cluster_address_only(
    host: Any, cluster_address: str, port: int
) -> None:
    assert listening(host, port) == {f"tcp://127.0.0.1:{port}", f"tcp://{cluster_address}:{port}"}


def test_tls_verified_login(cluster_address: str, hostvars: dict[str, Any]) -> None:
    assert tls_client(cluster_address, "celery", hostvars["redis_celery_password"]).ping()


def test_tls_refused_without_the_ca(cluster_address: str, hostvars: dict[str, Any]) -> None:
    """Against the system's trust store the lab's certificate does not verify."""
    r = tls_client(cluster_address, "celery", hostvars["redis_celery_password"], ca=None)
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        r.ping()


def test_tls_requires_a_password_too(cluster_address: str) -> None:
    context = ssl.create_default_context(cafile=str(CA))
    raw = socket.create_connection((cluster_address, TLS_PORT), timeout=5)
    with context.wrap_socket(raw, server_hostname=cluster_address) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(256).startswith(b"-NOAUTH")


def test_tls_key_readable_by_redis_only(host: Any) -> None:
    key = host.file("/etc/redis/tls/redis.key")
    assert (key.user, key.group, key.mode) == ("root", "redis", 0o640)
    assert host.file("/etc/redis/tls").mode == 0o750


def test_acl_file_holds_hashes_only(host: Any, hostvars: dict[str, Any]) -> None:
    acl = host.file("/etc/redis/users.acl")
    assert (acl.user, acl.group, acl.mode) == ("root", "redis", 0o640)
    content = acl.content_string
    assert hostvars["redis_celery_password"] not in content
    assert hostvars["redis_admin_password"] not in content
    assert "user default off" in content


def test_config_owned_by_root(host: Any) -> None:
    for path in ("/etc/redis/redis.conf", "/etc/redis/redis-results.conf"):
        conf = host.file(path)
        assert (conf.user, conf.group, conf.mode) == ("root", "redis", 0o640), path
    directory = host.file("/etc/redis")
    assert (directory.user, directory.group, directory.mode) == ("root", "redis", 0o750)
    overrides = host.check_output("dpkg-statoverride --list '/etc/redis*'").splitlines()
    assert sorted(overrides) == [
        "root redis 640 /etc/redis/redis-results.conf",
        "root redis 640 /etc/redis/redis.conf",
        "root redis 750 /etc/redis",
    ]


@pytest.mark.parametrize("command", ["ACL SAVE", "CONFIG REWRITE"])
def test_redis_cannot_rewrite_its_managed_files(
    hostvars: dict[str, Any], cluster_address: str, command: str
) -> None:
    """Ansible is the only writer of redis.conf and users.acl, even for the admin user."""
    with pytest.raises(redis.exceptions.ResponseError):
        admin(hostvars, cluster_address).execute_command(*command.split())


@pytest.mark.parametrize("command", [b"PING", b"GET x", b"KEYS *", b"SELECT 1"])
def test_unauthenticated_access_refused(cluster_address: str, command: bytes) -> None:
    """A client that does not log in (raw protocol, as any tool would speak it) gets NOAUTH."""
    with socket.create_connection((cluster_address, PORT), timeout=5) as sock:
        sock.sendall(command + b"\r\n")
        assert sock.recv(256).startswith(b"-NOAUTH")


def test_unauthenticated_client_library_refused(cluster_address: str) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        client(cluster_address, None, None).ping()


def test_unauthenticated_access_refused_on_localhost(host: Any) -> None:
    out = host.run("redis-cli -h 127.0.0.1 -p %s GET x", str(PORT))
    assert "NOAUTH" in out.stdout + out.stderr


@pytest.mark.parametrize("user", ["celery", "admin", "default"])
def test_wrong_password_refused(cluster_address: str, user: str) -> None:
    with pytest.raises(
        redis.exceptions.AuthenticationError, match="invalid username-password pair"
    ):
        client(cluster_address, user, "not-the-password").ping()


def test_default_user_disabled(cluster_address: str, hostvars: dict[str, Any]) -> None:
    # Even with a real password, `default` cannot log in.
    with pytest.raises(
        redis.exceptions.AuthenticationError, match="invalid username-password pair"
    ):
        client(cluster_address, "default", hostvars["redis_admin_password"]).ping()


@pytest.mark.parametrize(("port", "db"), [(PORT, 0), (PORT, 1), (RESULTS_PORT, 0)])
def test_celery_user_works_on_broker_and_results(
    cluster_address: str, hostvars: dict[str, Any], port: int, db: int
) -> None:
    r = client(cluster_address, "celery", hostvars["redis_celery_password"], db=db, port=port)
    assert r.ping()
    r.set(f"molecule-probe-{db}", "ok", ex=60)
    assert r.get(f"molecule-probe-{db}") == b"ok"
    # app/health.py finds every unacked:NAME hash and counts its messages.
    assert isinstance(list(r.scan_iter(match="unacked*", _type="HASH")), list)
    assert r.hlen("unacked:pricing") >= 0


@pytest.mark.parametrize(
    "command",
    [
        "FLUSHALL",
        "FLUSHDB",
        "CONFIG GET maxmemory",
        "CONFIG SET maxmemory 0",
        "SHUTDOWN NOSAVE",
        "KEYS *",
        "ACL LIST",
        "SAVE",
        "BGREWRITEAOF",
        "MONITOR",
        "CLIENT KILL ID 1",
        "REPLICAOF 127.0.0.1 1",
        "MODULE LIST",
        "EVAL return 1 0",
    ],
)
def test_celery_user_denied_admin_commands(
    cluster_address: str, hostvars: dict[str, Any], command: str
) -> None:
    r = client(cluster_address, "celery", hostvars["redis_celery_password"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.execute_command(*command.split())


def test_debug_command_disabled_for_everyone(
    cluster_address: str, hostvars: dict[str, Any]
) -> None:
    for user in ("celery", "admin"):
        password = hostvars[f"redis_{user}_password"]
        with pytest.raises(redis.exceptions.ResponseError, match="DEBUG command not allowed"):
            client(cluster_address, user, password).execute_command("DEBUG", "SLEEP", "0")


@pytest.mark.parametrize(("port", "db"), [(PORT, 2), (RESULTS_PORT, 1)])
def test_celery_user_only_the_databases_in_use(
    cluster_address: str, hostvars: dict[str, Any], port: int, db: int
) -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="DB index is out of range"):
        r = client(cluster_address, "celery", hostvars["redis_celery_password"], db=db, port=port)
        r.ping()


def test_persistence_and_memory_policy(hostvars: dict[str, Any], cluster_address: str) -> None:
    r = admin(hostvars, cluster_address)
    config = r.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "always"  # redis_appendfsync: no acknowledged write lost
    assert config["save"] == "3600 1 300 100 60 10000"
    assert config["maxmemory-policy"] == "noeviction"
    assert int(config["maxmemory"]) == 64 * 1024 * 1024  # redis_maxmemory of the scenario
    assert config["protected-mode"] == "yes"
    assert config["databases"] == "2"
    assert config["stop-writes-on-bgsave-error"] == "no"  # the AOF carries durability
    info = r.info("persistence")
    assert info["aof_enabled"] == 1
    assert info["aof_last_write_status"] == "ok"


def test_result_store_persistence_and_memory_policy(
    hostvars: dict[str, Any], cluster_address: str
) -> None:
    """Results: snapshots only, a memory limit of their own, evicting; a failed snapshot stops
    nothing."""
    config = admin(hostvars, cluster_address, port=RESULTS_PORT).config_get("*")
    assert config["appendonly"] == "no"
    assert config["save"] == "3600 1 300 100 60 10000"
    assert config["stop-writes-on-bgsave-error"] == "no"
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert int(config["maxmemory"]) == 32 * 1024 * 1024  # redis_results_maxmemory of the scenario
    assert config["databases"] == "1"
    assert config["dbfilename"] == "results.rdb"


def test_full_broker_refuses_writes_instead_of_evicting(
    hostvars: dict[str, Any], cluster_address: str
) -> None:
    """noeviction at work: past maxmemory a write fails with OOM and no key is evicted."""
    adm = admin(hostvars, cluster_address)
    celery = client(cluster_address, "celery", hostvars["redis_celery_password"])
    celery.set("molecule-keep", "1")
    limit = adm.config_get("maxmemory")["maxmemory"]
    used = adm.info("memory")["used_memory"]
    adm.config_set("maxmemory", str(used + 1024 * 1024))
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(64):
                celery.lpush("molecule-fill", "x" * 65536 + str(i))
        assert celery.get("molecule-keep") == b"1"
        assert adm.info("stats")["evicted_keys"] == 0
    finally:
        celery.delete("molecule-fill")
        adm.config_set("maxmemory", limit)


def test_full_result_store_evicts_instead_of_refusing(
    hostvars: dict[str, Any], cluster_address: str
) -> None:
    """allkeys-lru at work: past maxmemory a result write succeeds and old keys go."""
    adm = admin(hostvars, cluster_address, port=RESULTS_PORT)
    celery = client(cluster_address, "celery", hostvars["redis_celery_password"], port=RESULTS_PORT)
    limit = adm.config_get("maxmemory")["maxmemory"]
    evicted = adm.info("stats")["evicted_keys"]
    adm.config_set("maxmemory", str(adm.info("memory")["used_memory"] + 1024 * 1024))
    try:
        for i in range(64):  # 4 MiB into 1 MiB of room: never refused
            celery.set(f"molecule-result-{i}", "x" * 65536, ex=600)
        assert celery.get("molecule-result-63") is not None
        assert adm.info("stats")["evicted_keys"] > evicted
    finally:
        celery.delete(*[f"molecule-result-{i}" for i in range(64)])
        adm.config_set("maxmemory", limit)


def test_overcommit_configured(host: Any) -> None:
    assert "vm.overcommit_memory=1" in host.file("/etc/sysctl.d/60-redis.conf").content_string


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_celery_round_trip_as_acl_user(
    hostvars: dict[str, Any], cluster_address: str, scheme: str
) -> None:
    """A real worker: results, group, chord, remote control, events; nothing refused by the ACL."""
    adm = admin(hostvars, cluster_address)
    for server in (adm, admin(hostvars, cluster_address, port=RESULTS_PORT)):
        server.execute_command("ACL", "LOG", "RESET")
    password = hostvars["redis_celery_password"]
    port, query = (
        (PORT, "")
        if scheme == "redis"
        else (TLS_PORT, f"?ssl_cert_reqs=required&ssl_ca_certs={CA}")
    )
    results_port = RESULTS_PORT if scheme == "redis" else RESULTS_TLS_PORT
    base = f"{scheme}://celery:{password}@{cluster_address}"
    out = run_probe(f"{base}:{port}/0{query}", f"{base}:{results_port}/0{query}")
    assert out["single"] == 5
    assert out["group"] == [0, 2, 4, 6]
    assert out["chord"] == 10
    assert [next(iter(reply.values())) for reply in out["ping"]] == [{"ok": "pong"}]
    assert out["active_queues"]
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= set(out["events"])
    for server in (adm, admin(hostvars, cluster_address, port=RESULTS_PORT)):
        denied = server.execute_command("ACL", "LOG")
        assert denied == [], denied


def test_back_after_reboot_with_data(
    host: Any, hostvars: dict[str, Any], cluster_address: str
) -> None:
    """Last: reboot the host; Redis comes back by itself with the data written before (AOF)."""
    celery = client(cluster_address, "celery", hostvars["redis_celery_password"])
    celery.delete("molecule-queue")
    celery.lpush("molecule-queue", *[f"task-{i}" for i in range(100)])
    init_started = host.check_output("cut -d' ' -f22 /proc/1/stat")  # PID 1's start time
    lab_reboot(host.backend.get_hostname())
    assert host.run("systemctl is-system-running --wait").stdout.strip() == "running"
    assert host.check_output("cut -d' ' -f22 /proc/1/stat") != init_started
    for unit in UNITS:
        assert host.service(unit).is_running and host.service(unit).is_enabled, unit
    for port in (PORT, TLS_PORT, RESULTS_PORT, RESULTS_TLS_PORT):
        assert listening(host, port) == {
            f"tcp://127.0.0.1:{port}",
            f"tcp://{cluster_address}:{port}",
        }
    assert celery.llen("molecule-queue") == 100
    celery.delete("molecule-queue")


def test_transactions_survive_a_crash(
    host: Any, hostvars: dict[str, Any], cluster_address: str
) -> None:
    """A MULTI/EXEC write (kombu's acks, restores and unacked bookkeeping) is in the data after
    Redis is SIGKILLed and starts again from its AOF (appendfsync always). Redis 7.0 replays the
    AOF as the `default` user and drops the transactions that user may not run (redis#14541):
    the role keeps `default` off, passwordless and able to run them."""
    r = admin(hostvars, cluster_address)
    key = f"molecule-tx-{uuid.uuid4().hex[:8]}"
    with r.pipeline(transaction=True) as pipe:
        pipe.set(key, "in-a-transaction").lpush(f"{key}-list", "message").execute()
    r.set(f"{key}-plain", "outside")
    host.check_output("systemctl kill --signal=SIGKILL redis-server.service")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if admin(hostvars, cluster_address).ping():
                break
        except redis.exceptions.ConnectionError:
            time.sleep(1)
    after = admin(hostvars, cluster_address)
    assert after.get(f"{key}-plain") == b"outside"  # the restart did replay the AOF
    assert after.get(key) == b"in-a-transaction"
    assert after.lrange(f"{key}-list", 0, -1) == [b"message"]
    after.delete(key, f"{key}-list", f"{key}-plain")
