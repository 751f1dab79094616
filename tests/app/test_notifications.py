"""E-mail through a real SMTP server (PDF checked with pypdf), SMS through a real HTTP gateway."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pypdf
from conftest import SmsGateway, run, wait_state
from services import SmtpServer, mail_part
from sqlalchemy import select
from test_pricing import new_quote

from app.celery_app import celery_app
from app.db import session_scope
from app.models import Delivery, InventoryItem, Quote


def _pdf_text(message: Any) -> str:
    parts = [p for p in message.walk() if p.get_content_type() == "application/pdf"]
    assert len(parts) == 1
    reader = pypdf.PdfReader(io.BytesIO(parts[0].get_payload(decode=True)))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_quote_email_arrives_with_a_valid_pdf_and_is_sent_once(
    alive: Any, smtp_server: SmtpServer
) -> None:
    qid = new_quote("SS304")
    address = f"{uuid.uuid4().hex[:8]}@customer.test"
    note = "Thank you! <b>bold</b> & <script>alert(1)</script>"
    first = run("notifications.send_quote_email", str(qid), address, {"message": note})
    assert first.state == "SUCCESS", first.result
    assert first.result["status"] == "success" and first.result["email_sent"]
    [mail] = smtp_server.messages_to(address)
    with session_scope() as s:
        quote = s.get(Quote, qid)
        assert quote is not None and quote.status == "sent"
        number = quote.quote_number
    assert mail["Subject"] == f"Quote #{number}"
    assert mail["From"] == "quotes@bundle.test"
    text = _pdf_text(mail)
    assert number in text and "SS304" in text and str(quote.total_price) in text
    # HTML (templates/quote_email.html) with a plain-text alternative, then the PDF.
    assert mail.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in mail.walk()][1:] == [
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
    plain, html = mail_part(mail, "text/plain"), mail_part(mail, "text/html")
    assert number in plain and note in plain  # plain text as written
    assert number in html and str(quote.total_price) in html
    escaped = "Thank you! &lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in html and "<script>" not in html and "<b>bold" not in html
    # Run twice: the same state, no second e-mail.
    second = run("notifications.send_quote_email", str(qid), address, {"message": note})
    assert second.result["status"] == "already_sent"
    assert second.result["message_id"] == first.result["message_id"]
    assert len(smtp_server.messages_to(address)) == 1


def test_invalid_address_and_unknown_quote_fail_at_once(alive: Any) -> None:
    qid = new_quote("AL6061")
    bad = run("notifications.send_quote_email", str(qid), "not-an-address", {})
    assert bad.state == "FAILURE" and bad.retries == 0
    assert "not a valid e-mail address" in str(bad.result)
    missing = run("notifications.send_quote_email", str(uuid.uuid4()), "a@customer.test", {})
    assert missing.state == "FAILURE" and missing.retries == 0
    assert "unknown quote" in str(missing.result)


def test_smtp_temporary_refusal_is_retried_until_accepted(
    alive: Any, smtp_server: SmtpServer
) -> None:
    qid = new_quote("AL6061")
    address = f"{uuid.uuid4().hex[:8]}@customer.test"
    smtp_server.inbox.refuse_next = 2  # "451 try again later" twice
    result = run("notifications.send_quote_email", str(qid), address, {}, timeout=90)
    assert result.state == "SUCCESS", result.result
    assert result.retries == 2
    assert len(smtp_server.messages_to(address)) == 1


def test_smtp_server_down_is_retried_and_mail_sent_when_back(
    alive: Any, smtp_server: SmtpServer
) -> None:
    qid = new_quote("PA12")
    address = f"{uuid.uuid4().hex[:8]}@customer.test"
    smtp_server.stop()
    try:
        result = celery_app.send_task("notifications.send_quote_email", [str(qid), address, {}])
        wait_state(result, {"RETRY"}, timeout=30)
        assert "SMTP server" in str(result.result)
    finally:
        smtp_server.start()
    result.get(timeout=90, propagate=False)
    assert result.state == "SUCCESS", result.result
    assert result.retries >= 1
    assert len(smtp_server.messages_to(address)) == 1


def test_bulk_notifications_fan_out_and_bad_items_fail_alone(
    alive: Any, smtp_server: SmtpServer, sms_gateway: SmsGateway
) -> None:
    qid = new_quote("AL6061")
    address = f"{uuid.uuid4().hex[:8]}@customer.test"
    items: list[Any] = [
        {"type": "email", "quote_id": str(qid), "customer_email": address},
        {"type": "sms", "phone": "+4915112345678", "message": "Your quote is ready"},
        {"type": "email", "quote_id": str(qid), "customer_email": "broken@"},
        {"type": "sms", "phone": "12345", "message": "x"},
        {"type": "fax"},
        42,
    ]
    result = run("notifications.send_bulk_notifications", items)
    out = result.result
    assert (out["total_processed"], out["successful"], out["failed"]) == (6, 2, 4), out
    errors = {r["index"]: r.get("error", "") for r in out["results"]}
    assert "not a valid e-mail" in errors[2] and "E.164" in errors[3]
    assert "'fax'" in errors[4] and "expected an object" in errors[5]
    children = [celery_app.AsyncResult(r["task_id"]) for r in out["results"][:2]]
    for child in children:
        child.get(timeout=60, propagate=False)
        assert child.state == "SUCCESS", child.result
    assert len(smtp_server.messages_to(address)) == 1
    sms = [r for r in sms_gateway.requests if r["to"] == "+4915112345678"]
    assert len(sms) == 1 and sms[0]["message"] == "Your quote is ready"
    assert sms[0]["path"] == "/messages"


def test_sms_gateway_503_is_retried_and_sent_once(alive: Any, sms_gateway: SmsGateway) -> None:
    key = uuid.uuid4().hex
    sms_gateway.fail_next = 1
    result = run("notifications.send_sms", "+4915100000099", "hello", key, timeout=60)
    assert result.state == "SUCCESS", result.result
    assert result.retries == 1
    again = run("notifications.send_sms", "+4915100000099", "hello", key)
    assert again.result["status"] == "already_sent"
    assert sum(1 for r in sms_gateway.requests if r["idempotency_key"] == key) == 1


def test_low_stock_alerts_from_inventory(alive: Any, smtp_server: SmtpServer) -> None:
    sku = f"SKU-{uuid.uuid4().hex[:6]}"
    with session_scope() as s:
        s.add(InventoryItem(sku=sku, name="Almost gone", quantity=1, reorder_level=10))
    before = len(smtp_server.messages_to("procurement@bundle.test"))
    result = run("notifications.send_low_stock_alerts")
    assert result.state == "SUCCESS", result.result
    assert sku in result.result["items"] and result.result["alerts_sent"] == 1
    mails = smtp_server.messages_to("procurement@bundle.test")
    assert len(mails) == before + 1 and sku in mail_part(mails[-1])
    assert sku in mail_part(mails[-1], "text/html")
    given = run(
        "notifications.send_low_stock_alerts",
        [{"sku": "X1", "name": "Bolt <M8>", "available": 2, "reorder_level": 5}, {"sku": 7}],
    ).result
    assert given["low_stock_count"] == 1 and given["invalid_items"][0]["index"] == 1
    html = mail_part(smtp_server.messages_to("procurement@bundle.test")[-1], "text/html")
    assert "Bolt &lt;M8&gt;" in html and "<M8>" not in html
    with session_scope() as s:
        keys = s.scalars(select(Delivery.key).where(Delivery.key.like("low-stock:%"))).all()
    assert len(keys) == 2
