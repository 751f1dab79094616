"""The two kinds of failure a task knows: permanent (fail at once) and temporary (retry)."""

from __future__ import annotations

import smtplib

import redis.exceptions
import sqlalchemy.exc


class PermanentError(Exception):
    """Running the task again cannot help: bad input, unknown objects. Fails at once."""


class ValidationError(PermanentError):
    """The payload is malformed: wrong type, missing field, out of range, too large."""


class NotFoundError(PermanentError):
    """A customer, material, quote or item named by the payload does not exist."""


class PoisonMessageError(PermanentError):
    """The message was delivered too often without the task finishing (it kills its worker)."""


class TemporaryError(Exception):
    """A dependency is unavailable for now (SMTP, database, gateway). The task is retried."""


# Exceptions of the libraries that mean "try again later". SMTP 4xx replies are classified in
# app.mail; smtplib.SMTPResponseException is not listed because 5xx replies are permanent.
TEMPORARY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    TemporaryError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
    ConnectionError,
    TimeoutError,
)
