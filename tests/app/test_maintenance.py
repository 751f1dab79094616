"""Maintenance tasks: status-guarded updates (run twice, same state), health and alerts."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import POSTGRES, run
from services import SmtpServer, mail_part, wait_for
from sqlalchemy import func, select
from test_pricing import new_quote

from app.db import session_scope
from app.models import ApplicationLog, InventoryItem, Quote, StockReservation


def test_expire_old_quotes_twice(alive: Any) -> None:
    old, fresh = new_quote("AL6061"), new_quote("AL6061")
    with session_scope() as s:
        quote = s.get(Quote, old)
        assert quote is not None
        quote.valid_until = datetime.now(UTC) - timedelta(days=1)
    first = run("maintenance.expire_old_quotes").result
    second = run("maintenance.expire_old_quotes").result
    assert first["expired_quotes"] >= 1 and second["expired_quotes"] == 0
    with session_scope() as s:
        assert s.get(Quote, old).status == "expired"  # type: ignore[union-attr]
        assert s.get(Quote, fresh).status == "draft"  # type: ignore[union-attr]


def test_cleanup_expired_reservations_gives_stock_back_once(alive: Any) -> None:
    with session_scope() as s:
        item = InventoryItem(
            sku=f"R-{uuid.uuid4().hex[:6]}", name="r", quantity=50, reserved=12, reorder_level=1
        )
        s.add(item)
        s.flush()
        past = datetime.now(UTC) - timedelta(minutes=5)
        s.add_all(
            [
                StockReservation(item_id=item.id, quantity=5, expires_at=past),
                StockReservation(item_id=item.id, quantity=3, expires_at=past),
                StockReservation(item_id=item.id, quantity=4, expires_at=past + timedelta(hours=2)),
            ]
        )
        item_id = item.id
    first = run("maintenance.cleanup_expired_reservations").result
    second = run("maintenance.cleanup_expired_reservations").result
    assert first["cleaned_reservations"] >= 2 and second["cleaned_reservations"] == 0
    with session_scope() as s:
        assert s.get(InventoryItem, item_id).reserved == 4  # type: ignore[union-attr]
        states = s.scalars(
            select(StockReservation.status).where(StockReservation.item_id == item_id)
        ).all()
    assert sorted(states) == ["active", "expired", "expired"]


def test_database_maintenance_drops_old_logs(alive: Any) -> None:
    with session_scope() as s:
        s.add_all(
            [
                ApplicationLog(
                    level="INFO",
                    event="ancient",
                    data={},
                    created_at=datetime.now(UTC) - timedelta(days=45),
                ),
                ApplicationLog(level="INFO", event="recent", data={}),
            ]
        )
    result = run("maintenance.database_maintenance").result
    assert result["maintenance_results"]["deleted_logs"] >= 1
    assert result["maintenance_results"]["statistics_updated"] is True
    with session_scope() as s:
        events = s.scalars(select(ApplicationLog.event)).all()
    assert "ancient" not in events and "recent" in events


def test_healthy_system_sends_no_alert(alive: Any) -> None:
    out = run("maintenance.check_system_health").result
    assert out["health_status"]["healthy"], out
    assert out["alert_task_id"] is None
    checks = {"database", "redis", "results", "disk", "memory", "queues"}
    assert set(out["health_status"]["checks"]) == checks


def test_unhealthy_system_mails_once_per_incident(alive: Any, smtp_server: SmtpServer) -> None:
    """An incident mails the alert recipients when it opens and when it is over, not at every
    check in between (beat runs the check every 5 minutes)."""
    recipients = ("ops@bundle.test", "devops@bundle.test")

    def mails(r: str) -> list[Any]:
        return smtp_server.messages_to(r)

    before = {r: len(mails(r)) for r in recipients}
    out = run("maintenance.check_system_health", min_disk_free_percent=100).result
    assert not out["health_status"]["healthy"] and out["incident"] == "opened"
    assert any(p.startswith("disk:") for p in out["health_status"]["problems"])
    for r in recipients:  # one mail per recipient, sent one after the other
        wait_for(lambda r=r: len(mails(r)) > before[r], 30, f"alert mail to {r}")
        mail = mails(r)[-1]
        assert mail["X-Envelope-To"] == r
        assert mail["Subject"] == "System Alert - system_health"
        body = json.loads(mail_part(mail))
        assert body["alert_type"] == "system_health"
        assert "<li>disk: RuntimeError: free space below 100.0%" in mail_part(mail, "text/html")

    def logged() -> int:  # committed just after the mail went out
        with session_scope() as s:
            return s.scalar(select(func.count()).where(ApplicationLog.event == "system_alert")) or 0

    wait_for(logged, 10, "system_alert in application_logs")
    # The same failure at the next check: no new mail.
    again = run("maintenance.check_system_health", min_disk_free_percent=100).result
    assert again["incident"] == "ongoing" and again["alert_task_id"] is None
    # Healthy again: one more mail, saying so; then quiet.
    ok = run("maintenance.check_system_health").result
    assert ok["incident"] == "resolved" and ok["health_status"]["healthy"]
    for r in recipients:
        wait_for(lambda r=r: len(mails(r)) == before[r] + 2, 30, f"resolved mail to {r}")
        assert mails(r)[-1]["Subject"] == "System Alert - system_health_ok"
    assert run("maintenance.check_system_health").result["incident"] is None
    time.sleep(2)
    assert {r: len(mails(r)) for r in recipients} == {r: before[r] + 2 for r in recipients}


def test_database_down_is_mailed_while_it_is_down(alive: Any, smtp_server: SmtpServer) -> None:
    """PostgreSQL stopped: the health check opens an incident and its alert reaches the recipients
    before the database is back (the alert's ledger is in the broker); the application_logs record
    is skipped with a warning, not retried into a failure."""
    r, d = "ops@bundle.test", "devops@bundle.test"
    before = len(smtp_server.messages_to(r))
    before_d = len(smtp_server.messages_to(d))
    POSTGRES.pg_ctl("stop")
    try:
        out = run("maintenance.check_system_health", timeout=60).result
        assert out["incident"] == "opened", out
        assert any(p.startswith("database:") for p in out["health_status"]["problems"]), out
        mail = wait_for(lambda: smtp_server.messages_to(r)[before:], 30, "alert while PG is down")
        assert [m["Subject"] for m in mail] == ["System Alert - system_health"]
        assert "database: OperationalError" in mail_part(mail[0], "text/html")
        alert = run("maintenance.send_system_alert", {"alert_type": "pg-down"}, timeout=60)
        assert alert.state == "SUCCESS" and alert.result["recorded"] is False, alert.result
    finally:
        POSTGRES.pg_ctl("start")
    assert run("maintenance.check_system_health", timeout=60).result["incident"] == "resolved"
    wait_for(lambda: len(smtp_server.messages_to(r)) == before + 3, 30, "pg-down and resolved")
    # Each recipient is mailed in turn: the last one's mail too lands before the next test.
    wait_for(lambda: len(smtp_server.messages_to(d)) == before_d + 3, 30, f"all three to {d}")


def test_alert_retried_for_one_recipient_mails_the_others_once(
    alive: Any, smtp_server: SmtpServer
) -> None:
    """The relay refuses the second recipient once: the task retries, and the first recipient,
    whose delivery was committed on its own, is not mailed again."""
    alert_type = f"rcpt-{uuid.uuid4().hex[:6]}"
    smtp_server.inbox.refuse_to[("devops@bundle.test", alert_type)] = 1
    result = run("maintenance.send_system_alert", {"alert_type": alert_type}, timeout=90)
    assert result.state == "SUCCESS" and result.retries >= 1, result.result
    for r in ("ops@bundle.test", "devops@bundle.test"):
        got = [m for m in smtp_server.messages_to(r) if alert_type in m["Subject"]]
        assert len(got) == 1, (r, len(got))


def test_system_alert_refuses_bad_payload(alive: Any) -> None:
    result = run("maintenance.send_system_alert", {"no_type": 1})
    assert result.state == "FAILURE" and "alert_data.alert_type" in str(result.result)


def test_worker_health_check_names_the_worker(alive: Any) -> None:
    out = run("maintenance.worker_health_check").result
    assert out["worker_id"].startswith("testworker@") and out["healthy"], out


def test_database_maintenance_prunes_old_logs_and_analyzes(alive: Any) -> None:
    with session_scope() as s:
        old = ApplicationLog(level="INFO", event="old", data={})
        s.add(old)
        s.flush()
        old.created_at = datetime.now(UTC) - timedelta(days=40)
    out = run("maintenance.database_maintenance", 30)
    assert out.state == "SUCCESS", out.result
    assert out.result["maintenance_results"]["deleted_logs"] >= 1
    assert out.result["maintenance_results"]["statistics_updated"] is True
