"""Every setting of the application, read once from APP_* environment variables.

The names and defaults are the contract of docs/DESIGN.md (the deploy roles render them into
/etc/celery/app.env); docs/APP.md describes each one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from urllib.parse import quote


class SettingsError(ValueError):
    """An APP_* variable holds a value the application cannot use."""


def _str(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value}: must be at least {minimum}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _list(name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in os.environ.get(name, "").split(",") if p.strip())


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _str(name, default)
    if value.lower() not in {c.lower() for c in choices}:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Settings:
    broker_url: str
    result_backend: str
    database_url: str
    smtp_host: str
    smtp_port: int
    smtp_user: str
    smtp_password: str = field(repr=False)
    smtp_starttls: bool
    mail_from: str
    alert_recipients: tuple[str, ...]
    procurement_recipients: tuple[str, ...]
    sms_gateway_url: str
    sms_gateway_token: str = field(repr=False)
    report_dir: str
    backup_dir: str
    backup_keep: int
    log_format: str
    log_level: str
    task_soft_time_limit: int
    task_time_limit: int
    visibility_timeout: int
    unacked_key: str
    worker_soft_shutdown_timeout: int
    task_max_deliveries: int
    beat_interval_override: int
    probe_faults: bool
    exporter_address: str
    exporter_port: int
    exporter_user: str
    exporter_password: str = field(repr=False)
    exporter_poll_interval: int
    exporter_forget_after: int
    exporter_tls_cert: str
    exporter_tls_key: str
    exporter_tls_client_ca: str
    api_address: str = "127.0.0.1"
    api_port: int = 8443
    api_tls_cert: str = ""
    api_tls_key: str = ""
    api_clients_file: str = "/etc/celery/api-clients.json"
    api_max_body_bytes: int = 1_048_576
    # The database password before a rotation, tried when the URL's is refused (app.db): a
    # worker rolled out with the new password keeps connecting until PostgreSQL has it.
    database_password_previous: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> Settings:
        s = cls(
            broker_url=_str("APP_BROKER_URL", "redis://localhost:6379/0"),
            result_backend=_str("APP_RESULT_BACKEND", "redis://localhost:6381/0"),
            database_url=_str("APP_DATABASE_URL", "postgresql+psycopg://app@localhost/app"),
            smtp_host=_str("APP_SMTP_HOST", "localhost"),
            smtp_port=_int("APP_SMTP_PORT", 25, minimum=1),
            smtp_user=_str("APP_SMTP_USER", ""),
            smtp_password=os.environ.get("APP_SMTP_PASSWORD", ""),
            smtp_starttls=_bool("APP_SMTP_STARTTLS", False),
            mail_from=_str("APP_MAIL_FROM", "noreply@localhost"),
            alert_recipients=_list("APP_ALERT_RECIPIENTS"),
            procurement_recipients=_list("APP_PROCUREMENT_RECIPIENTS"),
            sms_gateway_url=_str("APP_SMS_GATEWAY_URL", ""),
            sms_gateway_token=os.environ.get("APP_SMS_GATEWAY_TOKEN", ""),
            report_dir=_str("APP_REPORT_DIR", "/var/lib/celery/reports"),
            backup_dir=_str("APP_BACKUP_DIR", "/var/lib/celery/backups"),
            backup_keep=_int("APP_BACKUP_KEEP", 8, minimum=1),
            log_format=_choice("APP_LOG_FORMAT", "json", ("json", "console")).lower(),
            log_level=_choice(
                "APP_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
            ).upper(),
            task_soft_time_limit=_int("APP_TASK_SOFT_TIME_LIMIT", 300, minimum=1),
            task_time_limit=_int("APP_TASK_TIME_LIMIT", 360, minimum=1),
            visibility_timeout=_int("APP_VISIBILITY_TIMEOUT", 3600, minimum=1),
            # A worker instance's own unacked bookkeeping (kombu's unacked_key), swept with its
            # own visibility timeout: unacked:NAME per instance (roles/celery_worker).
            unacked_key=_str("APP_UNACKED_KEY", "unacked"),
            worker_soft_shutdown_timeout=_int("APP_WORKER_SOFT_SHUTDOWN_TIMEOUT", 30),
            task_max_deliveries=_int("APP_TASK_MAX_DELIVERIES", 3, minimum=1),
            # 0: the real schedule; N: every beat entry every N seconds (lab and tests only).
            beat_interval_override=_int("APP_BEAT_INTERVAL_OVERRIDE", 0),
            # ops.probe's fault hooks (fail_times, crash_times): test scenarios only. Off, a
            # producer cannot have a worker process SIGKILL itself.
            probe_faults=_bool("APP_PROBE_FAULTS", False),
            # The Prometheus exporter (python -m app.exporter, docs/METRICS.md): where it listens,
            # the basic-auth pair of /metrics (no password: it refuses to start), and how often it
            # asks the workers which queues they consume.
            exporter_address=_str("APP_EXPORTER_ADDRESS", "127.0.0.1"),
            exporter_port=_int("APP_EXPORTER_PORT", 9808, minimum=1),
            exporter_user=_str("APP_EXPORTER_USER", "prometheus"),
            exporter_password=os.environ.get("APP_EXPORTER_PASSWORD", ""),
            exporter_poll_interval=_int("APP_EXPORTER_POLL_INTERVAL", 15, minimum=1),
            # Seconds after its clean stop (worker-offline) that an instance is forgotten: taken
            # out of the inventory, it stops being reported (and alerted on) as down.
            exporter_forget_after=_int("APP_EXPORTER_FORGET_AFTER", 600, minimum=1),
            # HTTPS: the certificate and key it serves; with a client CA, a client certificate
            # it signed is required too (Prometheus's). Empty: plain HTTP (tests, loopback).
            exporter_tls_cert=_str("APP_EXPORTER_TLS_CERT", ""),
            exporter_tls_key=_str("APP_EXPORTER_TLS_KEY", ""),
            exporter_tls_client_ca=_str("APP_EXPORTER_TLS_CLIENT_CA", ""),
            # The HTTP job API (python -m app.api, docs/API.md): where it listens, its certificate
            # and key (both or neither; neither: plain HTTP, for loopback only), the clients file
            # (names, token hashes, allowed tasks; read once at start) and the largest request.
            api_address=_str("APP_API_ADDRESS", "127.0.0.1"),
            api_port=_int("APP_API_PORT", 8443, minimum=1),
            api_tls_cert=_str("APP_API_TLS_CERT", ""),
            api_tls_key=_str("APP_API_TLS_KEY", ""),
            api_clients_file=_str("APP_API_CLIENTS_FILE", "/etc/celery/api-clients.json"),
            api_max_body_bytes=_int("APP_API_MAX_BODY_BYTES", 1_048_576, minimum=1024),
            database_password_previous=os.environ.get("APP_DATABASE_PASSWORD_PREVIOUS", ""),
        )
        s.check()
        return s.with_redis_login(
            _str("APP_REDIS_USERNAME", ""), os.environ.get("APP_REDIS_PASSWORD", "")
        )

    def with_redis_login(self, username: str, password: str) -> Settings:
        """The settings with APP_REDIS_USERNAME/APP_REDIS_PASSWORD as the login of both Redis URLs:
        a service with a Redis identity of its own (the job API's `producer`, redis role) reads
        the app's URLs from app.env and its own login from its env file. Neither: unchanged."""
        if not username and not password:
            return self
        if not username or not password or ":" in username:
            raise SettingsError(
                "APP_REDIS_USERNAME and APP_REDIS_PASSWORD: set both or neither "
                "(no ':' in the name)"
            )
        login = f"{quote(username, safe='')}:{quote(password, safe='')}@"

        def relogin(url: str) -> str:
            scheme, sep, rest = url.partition("://")
            return scheme + sep + login + rest.rpartition("@")[2]

        return replace(
            self, broker_url=relogin(self.broker_url), result_backend=relogin(self.result_backend)
        )

    def check(self) -> None:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise SettingsError(
                f"APP_TASK_SOFT_TIME_LIMIT={self.task_soft_time_limit} must be below "
                f"APP_TASK_TIME_LIMIT={self.task_time_limit}"
            )
        # A message invisible for less than the longest task would be handed to a second worker.
        if self.visibility_timeout <= self.task_time_limit:
            raise SettingsError(
                f"APP_VISIBILITY_TIMEOUT={self.visibility_timeout} must be above "
                f"APP_TASK_TIME_LIMIT={self.task_time_limit}"
            )
        if not re.fullmatch(r"[A-Za-z0-9:_.-]{1,100}", self.unacked_key):
            raise SettingsError(f"APP_UNACKED_KEY={self.unacked_key!r}: letters, digits, :_.- only")
        if self.exporter_port > 65535:
            raise SettingsError(f"APP_EXPORTER_PORT={self.exporter_port}: must be at most 65535")
        if not self.exporter_address:
            raise SettingsError("APP_EXPORTER_ADDRESS: must not be empty")
        if bool(self.exporter_tls_cert) != bool(self.exporter_tls_key) or (
            self.exporter_tls_client_ca and not self.exporter_tls_cert
        ):
            raise SettingsError(
                "APP_EXPORTER_TLS_CERT and APP_EXPORTER_TLS_KEY: set both or neither "
                "(APP_EXPORTER_TLS_CLIENT_CA needs them)"
            )
        if not self.exporter_user or ":" in self.exporter_user:
            raise SettingsError(
                f"APP_EXPORTER_USER={self.exporter_user!r}: must be non-empty, without ':'"
            )
        if self.api_port > 65535:
            raise SettingsError(f"APP_API_PORT={self.api_port}: must be at most 65535")
        if not self.api_address:
            raise SettingsError("APP_API_ADDRESS: must not be empty")
        if bool(self.api_tls_cert) != bool(self.api_tls_key):
            raise SettingsError("APP_API_TLS_CERT and APP_API_TLS_KEY: set both or neither")
        if not self.api_clients_file:
            raise SettingsError("APP_API_CLIENTS_FILE: must not be empty")
        if self.api_max_body_bytes > 64 * 1_048_576:
            raise SettingsError(
                f"APP_API_MAX_BODY_BYTES={self.api_max_body_bytes}: at most 67108864 (64 MiB)"
            )
        for name, url, schemes in (
            ("APP_BROKER_URL", self.broker_url, ("redis://", "rediss://")),
            ("APP_RESULT_BACKEND", self.result_backend, ("redis://", "rediss://")),
            ("APP_DATABASE_URL", self.database_url, ("postgresql",)),
        ):
            if not url.startswith(schemes):
                raise SettingsError(f"{name}: expected a URL starting with {' or '.join(schemes)}")

    def max_countdown(self) -> float:
        """The longest delay (countdown or ETA, seconds from now) a task message may be given.

        kombu's Redis transport hands a delayed message to a worker at once; the worker holds it
        unacked until its ETA, and once it has been unacked longer than the visibility timeout
        the transport restores it and delivers it again, and again (kombu #337). Whatever is
        delayed must still run and end (task_time_limit) within the visibility timeout the
        workers use. The API, `taskctl submit --countdown` and the retry backoff keep to it.
        """
        return float(self.visibility_timeout - self.task_time_limit)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
