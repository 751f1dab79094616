"""At-most-once-per-key sending of e-mail and SMS, so that a task run twice sends once.

The delivery row is locked for the whole send: a concurrent duplicate waits, then sees `sent`.
A worker lost after the relay accepted but before the commit sends again on redelivery
(at least once, never silently lost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app import mail
from app.db import session_scope
from app.models import Delivery


def deliver_once(
    session: Session, key: str, channel: str, recipient: str, send: Callable[[], str]
) -> tuple[bool, str | None]:
    """Run send() unless `key` was sent already. Returns (sent_now, provider_id)."""
    session.execute(
        insert(Delivery)
        .values(key=key, channel=channel, recipient=recipient, status="sending", attempts=0)
        .on_conflict_do_nothing(index_elements=[Delivery.key])
    )
    row = session.scalars(select(Delivery).where(Delivery.key == key).with_for_update()).one()
    if row.status == "sent":
        return False, row.provider_id
    row.attempts += 1
    provider_id = send()
    row.status = "sent"
    row.provider_id = provider_id
    row.sent_at = func.now()
    return True, provider_id


def mail_each_once(
    key: str, recipients: Sequence[str], subject: str, body: str, html: str | None = None
) -> None:
    """Mail each recipient its own copy, once per `key`; each delivery in its own commit, so that
    a retry after a failure at recipient N skips the ones before it."""
    for address in recipients:
        msg = mail.build_message([address], subject, body, html=html)
        with session_scope() as session:
            deliver_once(session, f"{key}:{address}", "email", address, partial(mail.send, msg))
