"""structlog configuration: one JSON object per line (or console lines), stdlib logs included.

Inside a task, app.celery_app binds task_id, task_name, queue and worker into structlog's context
variables, so every line logged while the task runs carries them (Celery's own lines too).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import Any

import structlog

# Celery's logger of the "Task NAME[ID] received" line (celery.worker.strategy).
RECEIVED_LOGGER = "celery.worker.strategy"

_shared: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(fmt: str = "json", level: str | int = "INFO", logfile: str | None = None) -> None:
    """Log to one sink: the file given (Celery's --logfile, as the units run), else stderr.

    One, not both: a copy of every line in the journal cost the deployed workers 6-31 % of their
    no-op throughput (docs/BENCHMARKS.md). The journal still gets systemd's lines and whatever
    reaches stderr before logging is set up (an import error's traceback). WatchedFileHandler
    reopens the path when logrotate has moved the file (docs/DEPLOY.md).
    """
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler: logging.Handler = (
        logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
        if logfile
        else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One INFO line per task: its outcome ("succeeded in", "failed", "retry": name, id,
    # runtime). Celery's "received" line goes to DEBUG: a second line per task that says nothing
    # the outcome does not (what lines cost: docs/BENCHMARKS.md, "per-task feature").
    debug = root.getEffectiveLevel() <= logging.DEBUG
    logging.getLogger(RECEIVED_LOGGER).setLevel(logging.NOTSET if debug else logging.WARNING)
    structlog.configure(
        processors=[
            *_shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def flush() -> None:
    """Flush the root logger's handlers (before an os._exit, which skips it)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
