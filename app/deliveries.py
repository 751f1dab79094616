"""At-most-once-per-key sending of e-mail and SMS, so that a task run twice sends once.

The delivery row is locked for the whole send: a concurrent duplicate waits, then sees `sent`.
A worker lost after the relay accepted but before the commit sends again on redelivery
(at least once, never silently lost).

System alerts keep their ledger in the broker's Redis instead (`mail_each_once_via_broker`): the
alert that PostgreSQL is down must go out while it is down. No task runs without the broker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app import mail
from app.celery_app import broker_redis
from app.db import session_scope
from app.errors import TemporaryError
from app.models import Delivery

# Broker ledger: `delivered:KEY:ADDRESS` is "sending" during a send (expiring, so that a run that
# died mid-send is retried: at least once) and then "sent" for a week (a rerun skips it).
LEDGER_PREFIX = "delivered:"
LEDGER_SENDING_SECONDS = 120  # above mail.send's 30 s SMTP timeout
LEDGER_SENT_SECONDS = 7 * 86400


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


def mail_each_once_via_broker(
    key: str, recipients: Sequence[str], subject: str, body: str, html: str | None = None
) -> None:
    """mail_each_once with its ledger in the broker's Redis, not in PostgreSQL."""
    client = broker_redis()
    for address in recipients:
        ledger = f"{LEDGER_PREFIX}{key}:{address}"
        if not client.set(ledger, "sending", nx=True, ex=LEDGER_SENDING_SECONDS):
            if client.get(ledger) == b"sent":
                continue
            raise TemporaryError(f"{ledger}: being sent by another run of this task")
        try:
            mail.send(mail.build_message([address], subject, body, html=html))
        except BaseException:
            client.delete(ledger)  # not sent: the retry sends it
            raise
        client.set(ledger, "sent", ex=LEDGER_SENT_SECONDS)
