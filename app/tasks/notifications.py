"""Notification tasks (queue `notifications`): quote e-mails with a PDF, alerts, SMS, batches."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import select

from app import mail, sms
from app.celery_app import celery_app
from app.db import session_scope
from app.deliveries import deliver_once, mail_each_once
from app.errors import NotFoundError, PermanentError, ValidationError
from app.jobs import Progress
from app.logs import get_logger
from app.models import InventoryItem, Quote
from app.settings import get_settings
from app.validation import (
    require_dict,
    require_email,
    require_int,
    require_list,
    require_phone,
    require_str,
    require_uuid,
)

log = get_logger(__name__)
MAX_TEMPLATE_BYTES = 10_000
MAX_SMS_CHARS = 1600
# Child task ids of a batch derive from the batch's id: a batch run twice re-sends the same ids.
BATCH_NAMESPACE = uuid.UUID("6f1c1d2e-4b0a-4d7e-9a55-0c7e2b1f9a10")


def _template_data(value: Any) -> dict[str, Any]:
    data = require_dict({} if value is None else value, "template_data")
    if len(json.dumps(data)) > MAX_TEMPLATE_BYTES:
        raise ValidationError(f"template_data: larger than {MAX_TEMPLATE_BYTES} bytes")
    return data


def _run_id(task: Any) -> str:
    return str(task.request.id or uuid.uuid4())


@celery_app.task(bind=True, name="notifications.send_quote_email")
def send_quote_email(
    self: Any, quote_id: str, customer_email: str, template_data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """E-mail the current version of a quote as PDF; once per (quote, version, address)."""
    qid = require_uuid(quote_id, "quote_id")
    address = require_email(customer_email, "customer_email")
    data = _template_data(template_data)
    message = data.get("message")
    if message is not None:
        message = require_str(message, "template_data.message", max_len=2000)
    with session_scope() as session:
        quote = session.get(Quote, qid)
        if quote is None:
            raise NotFoundError(f"unknown quote {qid}")
        if quote.status in ("expired", "rejected"):
            raise PermanentError(f"quote {quote.quote_number} is {quote.status}; not sending it")
        current = quote.versions[-1] if quote.versions else None
        details = {
            "quote_number": quote.quote_number,
            "customer_name": quote.customer.name,
            "valid_until": quote.valid_until.date().isoformat(),
            "version": quote.current_version,
            "specification": quote.specification,
            "pricing": {
                "unit_price": str(current.unit_price) if current else "",
                "total_price": str(quote.total_price),
            },
            "message": message,
        }
        number = quote.quote_number
        subject = f"Quote #{number}"
        body, html = mail.render(
            "quote_email",
            subject,
            customer_name=quote.customer.name,
            quote_number=number,
            version=quote.current_version,
            total_price=str(quote.total_price),
            valid_until=details["valid_until"],
            message=message,
        )
        key = f"quote:{qid}:v{quote.current_version}:{address.lower()}"
        domain = get_settings().mail_from.rpartition("@")[2] or "localhost"
        message_id = (
            f"<quote-{qid}-v{quote.current_version}.{uuid.uuid5(qid, address.lower())}@{domain}>"
        )

        def _send() -> str:
            from app.pdf import quote_pdf  # reportlab is slow to import; only this task needs it

            pdf = quote_pdf(details)
            msg = mail.build_message(
                [address],
                subject,
                body,
                [(f"quote_{number}.pdf", pdf, "application/pdf")],
                message_id=message_id,
                html=html,
            )
            return mail.send(msg)

        sent_now, provider_id = deliver_once(session, key, "email", address, _send)
        # Status-guarded: only a draft becomes sent; a run twice changes nothing more.
        if quote.status == "draft":
            quote.status = "sent"
        version = quote.current_version
    log.info("quote_email", quote=number, sent_now=sent_now)
    return {
        "quote_id": str(qid),
        "quote_number": number,
        "version": version,
        "customer_email": address,
        "email_sent": True,
        "message_id": provider_id,
        "status": "success" if sent_now else "already_sent",
    }


def _low_stock_from_db() -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = session.scalars(
            select(InventoryItem)
            .where(InventoryItem.quantity - InventoryItem.reserved <= InventoryItem.reorder_level)
            .order_by(InventoryItem.sku)
        ).all()
        return [
            {
                "sku": r.sku,
                "name": r.name,
                "available": r.quantity - r.reserved,
                "reorder_level": r.reorder_level,
            }
            for r in rows
        ]


@celery_app.task(bind=True, name="notifications.send_low_stock_alerts")
def send_low_stock_alerts(
    self: Any, low_stock_items: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Mail the low-stock list (given, or read from inventory) to APP_PROCUREMENT_RECIPIENTS."""
    invalid: list[dict[str, Any]] = []
    if low_stock_items is None:
        items = _low_stock_from_db()
    else:
        items = []
        for index, raw in enumerate(require_list(low_stock_items, "low_stock_items")):
            try:
                item = require_dict(raw, f"low_stock_items[{index}]")
                items.append(
                    {
                        "sku": require_str(item.get("sku"), f"low_stock_items[{index}].sku", 40),
                        "name": require_str(
                            item.get("name", item.get("sku")), f"low_stock_items[{index}].name", 200
                        ),
                        "available": require_int(
                            item.get("available", item.get("quantity")),
                            f"low_stock_items[{index}].available",
                            minimum=-(10**9),
                        ),
                        "reorder_level": require_int(
                            item.get("reorder_level"),
                            f"low_stock_items[{index}].reorder_level",
                            minimum=0,
                        ),
                    }
                )
            except PermanentError as exc:
                invalid.append({"index": index, "error": str(exc)})
    recipients = list(get_settings().procurement_recipients)
    result: dict[str, Any] = {
        "alerts_sent": 0,
        "recipients": recipients,
        "low_stock_count": len(items),
        "items": [i["sku"] for i in items],
        "invalid_items": invalid,
        "status": "success",
    }
    if not items:
        result["status"] = "nothing_to_report"
        return result
    if not recipients:
        log.warning("low_stock_no_recipients", items=result["items"])
        result["status"] = "no_recipients"
        return result
    subject = f"Low Stock Alert - {len(items)} items need attention"
    body, html = mail.render("low_stock_alert", subject, items=items)
    run = _run_id(self)
    mail_each_once(f"low-stock:{run}", recipients, subject, body, html)
    result["alerts_sent"] = len(recipients)
    return result


@celery_app.task(bind=True, name="notifications.send_sms")
def send_sms(
    self: Any, to: str, message: str, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Send one SMS through the configured gateway; once per idempotency key (default: task id)."""
    number = require_phone(to, "to")
    text = require_str(message, "message", max_len=MAX_SMS_CHARS)
    key = require_str(idempotency_key or _run_id(self), "idempotency_key", max_len=200)
    sender = sms.get_sender()
    with session_scope() as session:
        sent_now, provider_id = deliver_once(
            session, f"sms:{key}", "sms", number, lambda: sender.send(number, text, key)
        )
    return {
        "to": number,
        "sms_sent": True,
        "provider_id": provider_id,
        "status": "success" if sent_now else "already_sent",
    }


@celery_app.task(bind=True, name="notifications.send_bulk_notifications", track_started=True)
def send_bulk_notifications(self: Any, notifications: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate each notification and fan it out (e-mail -> send_quote_email, SMS -> send_sms)."""
    items = require_list(notifications, "notifications")
    run = _run_id(self)
    results: list[dict[str, Any]] = []
    progress = Progress(self, len(items))  # PROGRESS {done, total} while it runs (app.jobs)
    for index, raw in enumerate(items):
        progress.advance(index)
        where = f"notifications[{index}]"
        try:
            item = require_dict(raw, where)
            kind = item.get("type")
            child_id = str(uuid.uuid5(BATCH_NAMESPACE, f"{run}:{index}"))
            if kind == "email":
                args = (
                    str(require_uuid(item.get("quote_id"), f"{where}.quote_id")),
                    require_email(item.get("customer_email"), f"{where}.customer_email"),
                    _template_data(item.get("template_data")),
                )
                send_quote_email.apply_async(args, task_id=child_id)
            elif kind == "sms":
                if not sms.configured():
                    raise sms.SmsNotConfigured(
                        "SMS gateway not configured: set APP_SMS_GATEWAY_URL"
                    )
                send_sms.apply_async(
                    (
                        require_phone(item.get("phone"), f"{where}.phone"),
                        require_str(item.get("message"), f"{where}.message", MAX_SMS_CHARS),
                    ),
                    {"idempotency_key": f"{run}:{index}"},
                    task_id=child_id,
                )
            else:
                raise ValidationError(f"{where}.type: {kind!r} is not 'email' or 'sms'")
            results.append({"index": index, "type": kind, "task_id": child_id, "status": "queued"})
        except PermanentError as exc:
            results.append({"index": index, "status": "failed", "error": str(exc)})
    successful = sum(1 for r in results if r["status"] == "queued")
    return {
        "total_processed": len(items),
        "successful": successful,
        "failed": len(items) - successful,
        "results": results,
    }
