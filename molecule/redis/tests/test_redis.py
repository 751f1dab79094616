"""The redis role on a real systemd host: service, addresses, authentication, ACL, persistence."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import redis
from celery_probe import run_probe
from conftest import lab_reboot

testinfra_hosts = ["redis_servers"]

PORT = 6379


def client(address: str, user: str | None, password: str | None, db: int = 0) -> redis.Redis:
    return redis.Redis(
        host=address, port=PORT, db=db, username=user, password=password, socket_timeout=5
    )


def admin(hostvars: dict[str, Any], address: str = "127.0.0.1") -> redis.Redis:
    return client(address, "admin", hostvars["redis_admin_password"])


def listening(host: Any, port: int) -> set[str]:
    return {s for s in host.socket.get_listening_sockets() if s.rsplit(":", 1)[-1] == str(port)}


def test_service_active_and_enabled(host: Any) -> None:
    service = host.service("redis-server")
    assert service.is_running
    assert service.is_enabled


def test_listens_on_localhost_and_cluster_address_only(host: Any, cluster_address: str) -> None:
    assert listening(host, PORT) == {f"tcp://127.0.0.1:{PORT}", f"tcp://{cluster_address}:{PORT}"}
    assert listening(host, 6380) == set()  # no TLS port unless redis_tls_enabled


def test_acl_file_holds_hashes_only(host: Any, hostvars: dict[str, Any]) -> None:
    acl = host.file("/etc/redis/users.acl")
    assert (acl.user, acl.group, acl.mode) == ("root", "redis", 0o640)
    content = acl.content_string
    assert hostvars["redis_celery_password"] not in content
    assert hostvars["redis_admin_password"] not in content
    assert "user default off" in content


def test_config_file_not_world_readable(host: Any) -> None:
    conf = host.file("/etc/redis/redis.conf")
    assert (conf.user, conf.group, conf.mode) == ("root", "redis", 0o640)


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


@pytest.mark.parametrize("db", [0, 1])
def test_celery_user_works_on_broker_and_results_db(
    cluster_address: str, hostvars: dict[str, Any], db: int
) -> None:
    r = client(cluster_address, "celery", hostvars["redis_celery_password"], db=db)
    assert r.ping()
    r.set(f"molecule-probe-{db}", "ok", ex=60)
    assert r.get(f"molecule-probe-{db}") == b"ok"


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


def test_celery_user_only_databases_0_and_1(cluster_address: str, hostvars: dict[str, Any]) -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="DB index is out of range"):
        client(cluster_address, "celery", hostvars["redis_celery_password"], db=2).ping()


def test_persistence_and_memory_policy(hostvars: dict[str, Any], cluster_address: str) -> None:
    r = admin(hostvars, cluster_address)
    config = r.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["save"] == "3600 1 300 100 60 10000"
    assert config["maxmemory-policy"] == "noeviction"
    assert int(config["maxmemory"]) == 64 * 1024 * 1024  # redis_maxmemory of the scenario
    assert config["protected-mode"] == "yes"
    assert config["databases"] == "2"
    info = r.info("persistence")
    assert info["aof_enabled"] == 1
    assert info["aof_last_write_status"] == "ok"


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


def test_overcommit_configured(host: Any) -> None:
    assert "vm.overcommit_memory=1" in host.file("/etc/sysctl.d/60-redis.conf").content_string


def test_celery_round_trip_as_acl_user(hostvars: dict[str, Any], cluster_address: str) -> None:
    """A real worker: results, group, chord, remote control, events; nothing refused by the ACL."""
    adm = admin(hostvars, cluster_address)
    adm.execute_command("ACL", "LOG", "RESET")
    password = hostvars["redis_celery_password"]
    base = f"redis://celery:{password}@{cluster_address}:{PORT}"
    out = run_probe(f"{base}/0", f"{base}/1")
    assert out["single"] == 5
    assert out["group"] == [0, 2, 4, 6]
    assert out["chord"] == 10
    assert [next(iter(reply.values())) for reply in out["ping"]] == [{"ok": "pong"}]
    assert out["active_queues"]
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= set(out["events"])
    denied = adm.execute_command("ACL", "LOG")
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
    service = host.service("redis-server")
    assert service.is_running
    assert service.is_enabled
    assert listening(host, PORT) == {f"tcp://127.0.0.1:{PORT}", f"tcp://{cluster_address}:{PORT}"}
    assert celery.llen("molecule-queue") == 100
    celery.delete("molecule-queue")
