"""Real Redis, PostgreSQL and SMTP servers for the tests, on free ports in a temp directory."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiosmtpd.controller import Controller

REDIS_ROLE_DEFAULTS = Path(__file__).resolve().parents[2] / "roles/redis/defaults/main.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # retried until the deadline
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s (last error: {last})")


def apply_role_acl(admin: Any, user: str, password: str) -> None:
    """The redis role's rules for `user` (`redis_USER_acl` in its defaults) applied to a real
    Redis with `password`, its ACL LOG emptied: a test then sees every refusal of that user."""
    rules = yaml.safe_load(REDIS_ROLE_DEFAULTS.read_text())[f"redis_{user}_acl"]
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
    admin.execute_command("ACL", "LOG", "RESET")


def acl_refusals(admin: Any, user: str) -> list[dict[str, Any]]:
    """The commands Redis refused to `user` since the log was emptied (ACL LOG)."""
    return [e for e in admin.acl_log() if e.get("username") == user]


def assert_refused(client: Any, *commands: tuple[str, ...]) -> None:
    """Each command is refused to the client's ACL user (NOPERM), none runs."""
    for command in commands:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)


def _binary(name: str, pattern: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(pattern), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} not found: run `make deps` (Debian packages)")
    return found


@dataclass
class RedisServer:
    directory: Path
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = _binary("redis-server", "/usr/bin/redis-server")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--requirepass",
                self.password,
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra_args,
            ],
        )
        wait_for(lambda: redis.Redis(port=self.port, password=self.password).ping(), 20, "redis")

    def url(self, db: int) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class PostgresServer:
    directory: Path
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    user: str | None = None

    def __post_init__(self) -> None:
        self.bindir = Path(_binary("pg_ctl", "/usr/lib/postgresql/*/bin/pg_ctl")).parent
        # PostgreSQL refuses to run as root: run it as `nobody` then.
        self.user = "nobody" if os.geteuid() == 0 else None
        self.data = self.directory / "pgdata"
        self.superpass = secrets.token_hex(16)

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, user=self.user, capture_output=True, timeout=120)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
        if not self.data.exists():
            pwfile = self.directory / "pwfile"
            pwfile.write_text(self.superpass + "\n")
            if self.user:
                os.chown(pwfile, pwd.getpwnam(self.user).pw_uid, -1)
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            )
        self.pg_ctl("start")
        wait_for(self._ready, 30, "postgresql")

    def pg_ctl(self, action: str) -> None:
        opts = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        args = [
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.directory / "postgres.log"),
        ]
        if action == "start":
            args += ["-o", opts]
        else:
            args += ["-m", "fast"]
        self._run(*args, action)

    def _ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.admin_dsn, connect_timeout=2):
            return True

    @property
    def admin_dsn(self) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user=postgres "
            f"password={self.superpass} dbname=postgres"
        )

    def create_app_database(self, name: str = "app") -> str:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'app'").fetchone()
            if not exists:
                conn.execute(f"CREATE ROLE app LOGIN PASSWORD '{self.password}'")
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name} OWNER app")
        return f"postgresql+psycopg://app:{self.password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.pg_ctl("stop")


class _Inbox:
    """aiosmtpd handler: keeps every message; can refuse the next N, or the next N to one
    recipient whose subject holds a marker (so a mail still in flight from an earlier test
    does not use the refusal up), with a 4xx reply."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse_next = 0
        # (recipient, subject marker) -> messages still to refuse
        self.refuse_to: dict[tuple[str, str], int] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse_next > 0:
            self.refuse_next -= 1
            return "451 4.3.0 try again later (test)"
        msg = message_from_bytes(envelope.content)
        for rcpt in envelope.rcpt_tos:
            for (to, marker), left in self.refuse_to.items():
                if to == rcpt and left > 0 and marker in str(msg.get("Subject", "")):
                    self.refuse_to[(to, marker)] -= 1
                    return f"451 4.3.0 {rcpt}: try again later (test)"
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(msg)
        return "250 OK"


def mail_part(message: Message, content_type: str = "text/plain") -> str:
    """The decoded body part of that type (not an attachment): exactly one must be there."""
    parts = [
        p
        for p in message.walk()
        if p.get_content_type() == content_type and p.get_content_disposition() != "attachment"
    ]
    assert len(parts) == 1, [p.get_content_type() for p in message.walk()]
    payload = parts[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(parts[0].get_content_charset() or "utf-8")


class SmtpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = _Inbox()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()
            self.controller = None

    def messages_to(self, address: str) -> list[Message]:
        """Messages whose envelope names this exact address ("ops@" is not in "devops@")."""
        return [m for m in self.inbox.messages if address in m.get("X-Envelope-To", "").split(", ")]


def certificates(tmp: Any, addresses: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, str]:
    """Files in `tmp`: a CA (ca.crt), and NAME.crt with NAME.key for a server certificate for
    `addresses` (server), a client certificate (prometheus: clientAuth, as roles/pki gives the
    Prometheus hosts) and another host's certificate (worker: serverAuth only)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": str(tmp / "ca.crt")}
    (tmp / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, usages in (
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("prometheus", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("worker", [ExtendedKeyUsageOID.SERVER_AUTH]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (tmp / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files[name] = name
    return files
