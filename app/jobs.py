"""Jobs as their callers see them: a task's state read back (the HTTP API, `taskctl status`), the
progress the long tasks report while they run, and the checks a submission passes before it is
queued (which tasks may be sent by name, their arguments, their delay).

One place for each, shared by app.api and app.cli.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from app.errors import ValidationError
from app.settings import get_settings
from app.validation import (
    require_dict,
    require_email,
    require_list,
    require_phone,
    require_str,
    require_uuid,
)

# The custom state of a task that reports how far it got (meta {"done": n, "total": N}).
PROGRESS = "PROGRESS"
# Tasks never sent by name from outside: Celery's own, and the probe of the tests and the gate
# (its fault hooks make a worker process kill itself).
INTERNAL_TASKS = ("ops.probe",)

# Celery state -> the job status of the API (docs/API.md, "Status").
_STATUS = {
    "PENDING": "pending",
    "RECEIVED": "pending",
    "STARTED": "started",
    PROGRESS: "progress",
    "RETRY": "retrying",
    "SUCCESS": "completed",
    "FAILURE": "failed",
    "REVOKED": "failed",
    "REJECTED": "failed",
    "IGNORED": "failed",
}
MAX_ERROR_CHARS = 1000


def readable_error(value: Any) -> str:
    """'ExceptionName: message' of a stored failure: never its traceback."""
    if isinstance(value, BaseException):
        text = f"{type(value).__name__}: {value}".rstrip(": ")
    elif isinstance(value, dict) and "exc_type" in value:  # an exception Celery could not rebuild
        text = f"{value.get('exc_type')}: {value.get('exc_message')}"
    else:
        text = str(value)
    return text[:MAX_ERROR_CHARS]


def job_status(job_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The job's status from its result meta (one read of the result store).

    `meta` is what `backend.get_task_meta(id)` returns. An id the store does not hold reads
    `pending`: queued, unknown or expired (result_expires) look the same, as in Celery.
    """
    state = str(meta.get("status") or "PENDING")
    result = meta.get("result")
    status = _STATUS.get(state, "started")  # another custom state: running
    info: dict[str, Any] = {"job_id": job_id, "status": status}
    if status == "completed":
        info["result"] = result
    elif status == "failed":
        info["error"] = "revoked" if state == "REVOKED" else readable_error(result)
    elif status == "retrying":
        info["error"] = readable_error(result)
    elif status == "progress" and isinstance(result, dict):
        info["done"] = result.get("done")
        info["total"] = result.get("total")
    return info


# --- progress ------------------------------------------------------------------------------

PROGRESS_INTERVAL = 0.5  # seconds between two reports, at most (plus the 5 % steps)
PROGRESS_STEP = 0.05  # of the total


class Progress:
    """A task's {done, total} in the result store while it runs, throttled: after the first item
    (so even a small batch reports once), then whenever PROGRESS_INTERVAL has passed or another
    PROGRESS_STEP of the total is done; never for the last item (SUCCESS follows). At most about
    1/PROGRESS_STEP + 2/s writes per run. Nothing in eager runs or without a task id."""

    def __init__(self, task: Any, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.task = task
        self.total = total
        self.clock = clock
        self.reported = 0
        self.last_at = clock()
        request = getattr(task, "request", None)
        self.enabled = bool(request is not None and request.id and not request.is_eager)
        self.writes = 0

    def due(self, done: int) -> bool:
        if done >= self.total or done <= self.reported:
            return False
        return (
            self.reported == 0
            or done - self.reported >= max(1, self.total * PROGRESS_STEP)
            or self.clock() - self.last_at >= PROGRESS_INTERVAL
        )

    def advance(self, done: int) -> None:
        if not self.enabled or not self.due(done):
            return
        self.reported, self.last_at = done, self.clock()
        self.writes += 1
        self.task.update_state(state=PROGRESS, meta={"done": done, "total": self.total})


# --- submissions ---------------------------------------------------------------------------


def callable_tasks(app: Any) -> dict[str, Any]:
    """The tasks that may be sent by name from outside: registered, not Celery's, not internal."""
    app.loader.import_default_modules()
    return {
        name: task
        for name, task in app.tasks.items()
        if not name.startswith("celery.") and name not in INTERNAL_TASKS
    }


def check_delay(seconds: float, what: str) -> None:
    """Refuse a delay the broker cannot hold (Settings.max_countdown, kombu #337)."""
    limit = get_settings().max_countdown()
    if seconds > limit:
        raise ValidationError(
            f"{what}: {seconds:g} s from now is beyond the longest accepted delay of {limit:g} s "
            "(APP_VISIBILITY_TIMEOUT - APP_TASK_TIME_LIMIT: a message delayed past the broker's "
            "visibility timeout is delivered again and again)"
        )


def _bulk_pricing(specifications: Any) -> None:
    # Each item is priced (or refused) alone by the task; the door checks the batch's shape.
    for index, item in enumerate(require_list(specifications, "specifications")):
        require_dict(item, f"specifications[{index}]")


def _bulk_notifications(notifications: Any) -> None:
    for index, item in enumerate(require_list(notifications, "notifications")):
        require_dict(item, f"notifications[{index}]")


def _quote_email(quote_id: Any, customer_email: Any, template_data: Any = None) -> None:
    require_uuid(quote_id, "quote_id")
    require_email(customer_email, "customer_email")
    if template_data is not None:
        require_dict(template_data, "template_data")


def _sms(to: Any, message: Any, idempotency_key: Any = None) -> None:
    require_phone(to, "to")
    require_str(message, "message", max_len=1600)


def _material_costs(material_updates: Any) -> None:
    require_dict(material_updates, "material_updates")


def _customer_quotes(customer_id: Any, material_code: Any) -> None:
    require_uuid(customer_id, "customer_id")
    require_str(material_code, "material_code", max_len=40)


# Cheap checks (no database) of the tasks that have them: the same app.validation calls the tasks
# make first, so what they would refuse at once is refused before it is queued.
ARGUMENT_CHECKS: dict[str, Callable[..., None]] = {
    "pricing.calculate_bulk_pricing": _bulk_pricing,
    "notifications.send_bulk_notifications": _bulk_notifications,
    "notifications.send_quote_email": _quote_email,
    "notifications.send_sms": _sms,
    "pricing.update_material_costs": _material_costs,
    "pricing.recalculate_customer_quotes": _customer_quotes,
}


def check_arguments(task: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    """ValidationError ("field: what is wrong") unless args/kwargs fit the task's signature and
    pass its cheap checks."""
    try:
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError(f"args: {exc}") from None
    check = ARGUMENT_CHECKS.get(task.name)
    if check is not None:
        check(*args, **kwargs)
