"""E-mail: bodies rendered from the templates in app/templates (HTML with a plain-text
alternative, every value escaped in the HTML), sent over SMTP; failures sorted into temporary
(4xx, no connection) and permanent."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import lru_cache
from typing import Any

import jinja2

from app.errors import PermanentError, TemporaryError
from app.settings import get_settings

Attachment = tuple[str, bytes, str]  # filename, content, MIME type "type/subtype"


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    # .html autoescaped (a customer name "<b>" arrives as text), .txt as is; a missing value is
    # an error, never an empty string in a customer's mail.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("app", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render(name: str, subject: str, **context: Any) -> tuple[str, str]:
    """The plain-text and HTML bodies of mail `name` (templates/NAME.txt and NAME.html)."""
    env = _templates()
    values = {"subject": subject, "sent_at": datetime.now(UTC).isoformat(timespec="seconds")}
    values.update(context)
    text = env.get_template(f"{name}.txt").render(values)
    return text, env.get_template(f"{name}.html").render(values)


def build_message(
    to: Sequence[str],
    subject: str,
    body: str,
    attachments: Sequence[Attachment] = (),
    message_id: str | None = None,
    html: str | None = None,
) -> EmailMessage:
    """A message with `body` as text/plain and, given `html`, a text/html alternative; the
    attachments after them (multipart/mixed)."""
    settings = get_settings()
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    domain = settings.mail_from.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = message_id or make_msgid(domain=domain)
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, content, mime in attachments:
        maintype, _, subtype = mime.partition("/")
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def _classify(code: int, text: object) -> Exception:
    detail = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    if 400 <= code < 500:
        return TemporaryError(f"SMTP temporary failure {code}: {detail}")
    return PermanentError(f"SMTP refused {code}: {detail}")


def send(msg: EmailMessage) -> str:
    """Deliver msg to the relay; returns its Message-ID."""
    s = get_settings()
    try:
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=30) as smtp:
            smtp.ehlo()
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        code = min(codes) if all(400 <= c < 500 for c in codes) else max(codes)
        raise _classify(code, exc.recipients) from exc
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as exc:
        raise TemporaryError(f"SMTP server {s.smtp_host}:{s.smtp_port}: {exc}") from exc
    except smtplib.SMTPResponseException as exc:
        raise _classify(exc.smtp_code, exc.smtp_error) from exc
    except OSError as exc:  # refused, unreachable, timed out
        raise TemporaryError(f"SMTP server {s.smtp_host}:{s.smtp_port}: {exc}") from exc
    return str(msg["Message-ID"])
