"""SMS senders. Pluggable: a sender is chosen by the scheme of APP_SMS_GATEWAY_URL.

The HTTP gateway backend POSTs JSON {"to", "message", "idempotency_key"} with a bearer token and
expects a 2xx reply, optionally JSON with an "id". 5xx, 408, 429 and network errors are temporary.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from app.errors import PermanentError, TemporaryError
from app.settings import get_settings


class SmsSender(Protocol):
    def send(self, to: str, message: str, idempotency_key: str) -> str:
        """Send one SMS; return the provider's id."""
        ...


class SmsNotConfigured(PermanentError):
    pass


class HttpGatewaySender:
    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url, self.token, self.timeout = url, token, timeout

    def send(self, to: str, message: str, idempotency_key: str) -> str:
        body = json.dumps({"to": to, "message": message, "idempotency_key": idempotency_key})
        request = urllib.request.Request(  # noqa: S310 - scheme checked in get_sender()
            self.url,
            data=body.encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": idempotency_key,
                **({"Authorization": f"Bearer {self.token}"} if self.token else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read(65536)
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace")
            if exc.code >= 500 or exc.code in (408, 429):
                raise TemporaryError(f"SMS gateway HTTP {exc.code}: {detail}") from exc
            raise PermanentError(f"SMS gateway refused HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise TemporaryError(f"SMS gateway unreachable: {exc}") from exc
        try:
            reply = json.loads(raw or b"{}")
        except ValueError:
            reply = {}
        return str(reply.get("id", "")) if isinstance(reply, dict) else ""


SENDERS: dict[str, Callable[[str, str], SmsSender]] = {
    "http": HttpGatewaySender,
    "https": HttpGatewaySender,
}


def configured() -> bool:
    return bool(get_settings().sms_gateway_url)


def get_sender() -> SmsSender:
    s = get_settings()
    if not s.sms_gateway_url:
        raise SmsNotConfigured("SMS gateway not configured: set APP_SMS_GATEWAY_URL")
    scheme = urlsplit(s.sms_gateway_url).scheme
    factory = SENDERS.get(scheme)
    if factory is None:
        raise SmsNotConfigured(
            f"APP_SMS_GATEWAY_URL: no SMS sender for scheme {scheme!r} ({', '.join(SENDERS)})"
        )
    return factory(s.sms_gateway_url, s.sms_gateway_token)
