"""Configuration without servers: settings, routing table, Celery settings, beat schedule."""

from __future__ import annotations

import pytest
from celery.schedules import crontab

from app.celery_app import celery_app, make_celery
from app.queues import QUEUES, queue_for
from app.settings import Settings, SettingsError

EXPECTED_TASKS = {
    "pricing.calculate_bulk_pricing": "pricing",
    "pricing.update_material_costs": "pricing",
    "pricing.recalculate_customer_quotes": "pricing",
    "notifications.send_quote_email": "notifications",
    "notifications.send_low_stock_alerts": "notifications",
    "notifications.send_bulk_notifications": "notifications",
    "data.generate_daily_reports": "data_processing",
    "data.backup_pricing_data": "data_processing",
    "maintenance.expire_old_quotes": "maintenance",
    "maintenance.cleanup_expired_reservations": "maintenance",
    "maintenance.check_system_health": "maintenance",
    "maintenance.database_maintenance": "maintenance",
    "maintenance.send_system_alert": "maintenance",
    "maintenance.worker_health_check": "maintenance",
    "ops.probe": "default",
}


def test_every_task_of_the_guide_is_registered_under_its_name() -> None:
    celery_app.loader.import_default_modules()
    missing = set(EXPECTED_TASKS) - set(celery_app.tasks)
    assert not missing


@pytest.mark.parametrize(("name", "queue"), sorted(EXPECTED_TASKS.items()))
def test_router_sends_each_task_to_its_queue(name: str, queue: str) -> None:
    assert queue_for(name) == queue
    route = celery_app.amqp.router.route({}, name)
    assert route["queue"].name == queue


def test_explicit_queue_beats_the_router() -> None:
    route = celery_app.amqp.router.route({"queue": "pricing"}, "ops.probe")
    assert route["queue"].name == "pricing"


def test_reliability_settings() -> None:
    conf = celery_app.conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.timezone == "UTC" and conf.enable_utc
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and not conf.task_track_started
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.result_expires == 3600 and conf.result_extended
    assert conf.broker_connection_retry_on_startup
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    # Limits are the worker instance's (command line), never a producer's: no message header.
    assert conf.task_soft_time_limit is None and conf.task_time_limit is None
    assert conf.broker_transport_options["unacked_restore_throttle"] == 1
    # Celery's own soft shutdown is off (it sleeps in the signal handler); app.liveness bounds the
    # warm shutdown instead (APP_WORKER_SOFT_SHUTDOWN_TIMEOUT).
    assert conf.worker_soft_shutdown_timeout == 0 and not conf.worker_enable_soft_shutdown_on_idle
    assert conf.broker_transport_options["unacked_key"] == "unacked"
    assert conf.broker_transport_options["unacked_index_key"] == "unacked_index"
    assert conf.beat_scheduler == "app.liveness:LivenessScheduler"
    assert {q.name for q in conf.task_queues} == set(QUEUES)


def test_beat_schedule_names_registered_tasks() -> None:
    celery_app.loader.import_default_modules()
    schedule = celery_app.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} <= set(celery_app.tasks)
    assert schedule["expire-old-quotes"]["schedule"] == 3600.0
    assert schedule["cleanup-expired-reservations"]["schedule"] == 1800.0
    daily = schedule["generate-daily-reports"]["schedule"]
    weekly = schedule["backup-pricing-data"]["schedule"]
    assert isinstance(daily, crontab) and daily.hour == {2} and daily.minute == {0}
    assert isinstance(weekly, crontab) and weekly.day_of_week == {0} and weekly.hour == {3}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("APP_SMTP_PORT", "smtp", "expected an integer"),
        ("APP_SMTP_STARTTLS", "maybe", "expected true or false"),
        ("APP_LOG_FORMAT", "xml", "expected one of"),
        ("APP_TASK_TIME_LIMIT", "10", "must be below"),
        ("APP_VISIBILITY_TIMEOUT", "30", "must be above"),
        ("APP_BROKER_URL", "amqp://x", "starting with redis"),
        ("APP_BACKUP_KEEP", "0", "at least 1"),
        ("APP_REDIS_USERNAME", "producer", "set both or neither"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message) as err:
        Settings.from_env()
    assert variable in str(err.value)


def test_a_service_login_replaces_the_app_login_in_both_redis_urls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "APP_BROKER_URL", "rediss://celery:old@10.0.0.1:6380/0?ssl_cert_reqs=required"
    )
    monkeypatch.setenv("APP_RESULT_BACKEND", "rediss://10.0.0.1:6382/0")
    monkeypatch.setenv("APP_REDIS_USERNAME", "producer")
    monkeypatch.setenv("APP_REDIS_PASSWORD", "p@ss/w:rd")
    s = Settings.from_env()
    assert (
        s.broker_url == "rediss://producer:p%40ss%2Fw%3Ard@10.0.0.1:6380/0?ssl_cert_reqs=required"
    )
    assert s.result_backend == "rediss://producer:p%40ss%2Fw%3Ard@10.0.0.1:6382/0"


def test_lists_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ALERT_RECIPIENTS", " a@x.test, ,b@x.test ")
    monkeypatch.setenv("APP_SMTP_PASSWORD", "s3cret")
    s = Settings.from_env()
    assert s.alert_recipients == ("a@x.test", "b@x.test")
    assert "s3cret" not in repr(s)


def test_beat_interval_override_shortens_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import settings

    monkeypatch.setenv("APP_BEAT_INTERVAL_OVERRIDE", "10")
    settings.get_settings.cache_clear()
    try:
        schedule = make_celery().conf.beat_schedule
    finally:
        monkeypatch.delenv("APP_BEAT_INTERVAL_OVERRIDE")
        settings.get_settings.cache_clear()
    assert {e["schedule"] for e in schedule.values()} == {10.0}
    assert len(schedule) == 6


def test_results_are_stored_where_they_are_read() -> None:
    """STARTED only for the long tasks callers poll; beat's entries store no result."""
    celery_app.loader.import_default_modules()  # the task modules (as a worker does)
    tracked = {name for name, task in celery_app.tasks.items() if task.track_started}
    assert tracked == {
        "pricing.calculate_bulk_pricing",
        "notifications.send_bulk_notifications",
        "data.generate_daily_reports",
        "data.backup_pricing_data",
        "maintenance.database_maintenance",
    }
    for name, entry in celery_app.conf.beat_schedule.items():
        assert entry["options"]["ignore_result"] is True, name


def test_every_periodic_entry_expires_and_health_runs_every_5_minutes() -> None:
    """A backlog after an outage is dropped, not run once per missed period."""
    schedule = celery_app.conf.beat_schedule
    for name, entry in schedule.items():
        expires = entry["options"]["expires"]
        assert 0 < expires <= 43200, name
    health = schedule["check-system-health"]
    assert health["task"] == "maintenance.check_system_health" and health["schedule"] == 300.0
    assert schedule["database-maintenance"]["task"] == "maintenance.database_maintenance"
