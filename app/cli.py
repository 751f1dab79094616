"""taskctl: the operator CLI. Exit codes: 0 ok, 1 failed/unhealthy, 2 bad usage or input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.queues import QUEUES, queue_for

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _json_arg(raw: str | None, what: str, kind: type) -> Any:
    if raw is None:
        return kind()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise UsageError(f"{what}: expected a JSON {'array' if kind is list else 'object'}")
    return value


def _app() -> Any:
    from app.celery_app import celery_app

    celery_app.loader.import_default_modules()
    return celery_app


def cmd_submit(args: argparse.Namespace) -> int:
    app = _app()
    task_args = _json_arg(args.args, "--args", list)
    task_kwargs = _json_arg(args.kwargs, "--kwargs", dict)
    if args.name not in app.tasks:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        raise UsageError(f"unknown task {args.name!r}; known tasks: {', '.join(known)}")
    options: dict[str, Any] = {}
    if args.queue:
        if args.queue not in QUEUES:
            raise UsageError(f"--queue: {args.queue!r} is not one of {', '.join(QUEUES)}")
        options["queue"] = args.queue
    if args.countdown:
        from app.errors import ValidationError
        from app.jobs import check_delay

        try:
            check_delay(args.countdown, "--countdown")
        except ValidationError as exc:
            raise UsageError(str(exc)) from None
        options["countdown"] = args.countdown
    # send_task: the worker validates the arguments, the CLI does not need the signature.
    result = app.send_task(args.name, args=task_args, kwargs=task_kwargs, **options)
    print(result.id)
    return EXIT_OK


def _describe(result: Any) -> dict[str, Any]:
    from app.jobs import job_status

    meta = result.backend.get_task_meta(result.id)  # one read: state and result agree
    state = meta.get("status") or "PENDING"
    info: dict[str, Any] = {"id": result.id, "state": state}
    for key in ("name", "queue", "worker", "retries", "date_done"):
        if meta.get(key) is not None:
            info[key] = meta[key]
    # The HTTP API's status (app.jobs.job_status): status, and result, error or done/total.
    job = job_status(result.id, meta)
    info["status"] = job["status"]
    for key in ("result", "error", "done", "total"):
        if key in job:
            info[key] = job[key]
    if state == "STARTED" and isinstance(meta.get("result"), dict):
        info["started"] = meta["result"]
    return info


def cmd_status(args: argparse.Namespace) -> int:
    app = _app()
    info = _describe(app.AsyncResult(args.id))
    if info["state"] == "PENDING":
        info["note"] = "unknown, queued or expired: PENDING is all a result backend can say"
    _print(info)
    return EXIT_FAILED if info["state"] == "FAILURE" else EXIT_OK


def cmd_result(args: argparse.Namespace) -> int:
    app = _app()
    result = app.AsyncResult(args.id)
    if args.wait:
        try:
            result.get(timeout=args.timeout, propagate=False, interval=0.2)
        except Exception as exc:  # celery's TimeoutError and backend errors
            print(f"taskctl: no result after {args.timeout}s: {exc}", file=sys.stderr)
            return EXIT_FAILED
    info = _describe(result)
    if info["state"] == "SUCCESS":
        _print(info["result"])
        return EXIT_OK
    _print(info)
    return EXIT_FAILED


def cmd_queues(args: argparse.Namespace) -> int:
    from app import health

    lengths = health.queue_lengths()
    unacked = health.unacked_count()
    if args.json:
        _print({"queues": lengths, "unacked": unacked})
    else:
        for queue, length in lengths.items():
            print(f"{queue:<16} {length}")
        print(f"{'(unacked)':<16} {unacked}")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from app import health

    status = health.run_checks(
        max_queue_length=args.max_queue_length,
        min_disk_free_percent=args.min_disk_free_percent,
        max_memory_percent=args.max_memory_percent,
    )
    _print(status)
    return EXIT_OK if status["healthy"] else EXIT_FAILED


def cmd_ping(args: argparse.Namespace) -> int:
    app = _app()
    replies = app.control.ping(timeout=args.timeout) or []
    workers = sorted(name for reply in replies for name in reply)
    if args.json:
        _print({"workers": workers})
    else:
        for name in workers:
            print(name)
    if not workers:
        print("taskctl: no worker answered", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_drain(args: argparse.Namespace) -> int:
    """Stop local instances taking messages, then wait (bounded) until they hold no reserved one.

    Before a restart (playbooks/rolling_restart.yml): the prefetched messages run here now instead
    of waiting out the warm shutdown to be requeued; the host's other instances and the other
    hosts take the new ones. Only a restart resumes consuming (cancel_consumer is not persisted).
    """
    import socket
    import time

    app = _app()
    nodes = [n if "@" in n else f"{n}@{socket.gethostname()}" for n in args.instances]
    inspect = app.control.inspect(destination=nodes, timeout=args.reply_timeout)
    consuming = {n: [q["name"] for q in qs] for n, qs in (inspect.active_queues() or {}).items()}
    for node, queues in consuming.items():
        for queue in queues:
            app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=2.0)
    deadline = time.monotonic() + args.timeout
    left: dict[str, int | None] = {}
    while consuming:  # never an inspect without destination: that would ask every worker
        inspect = app.control.inspect(destination=list(consuming), timeout=args.reply_timeout)
        replies = inspect.reserved() or {}
        left = {n: len(replies[n]) if n in replies else None for n in consuming}
        if all(v == 0 for v in left.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    _print(
        {
            "drained": consuming,
            "not_answering": sorted(set(nodes) - set(consuming)),
            "reserved_left": left,  # None: no reply at the deadline
        }
    )
    return EXIT_OK


def cmd_gate(args: argparse.Namespace) -> int:
    """The health gate of this host's instances (playbooks/tasks/worker_gate.yml): each NAME@HOST
    answers and consumes every queue it is configured for, then a probe sent to each of those
    queues completes. Exit 1 (and what is missing) until then: the caller retries."""
    import socket
    import time

    want: dict[str, set[str]] = {}
    for spec in args.instances:
        name, _, listed = spec.partition("=")
        queues = set(listed.split(",")) if listed else set()
        if not name or not queues:
            raise UsageError(f"instance {spec!r}: expected NAME=QUEUE[,QUEUE...]")
        unknown = sorted(queues - set(QUEUES))
        if unknown:
            raise UsageError(f"instance {name}: unknown queue(s) {', '.join(unknown)}")
        want[name if "@" in name else f"{name}@{socket.gethostname()}"] = queues
    app = _app()
    inspect = app.control.inspect(destination=list(want), timeout=args.reply_timeout)
    replies = inspect.active_queues() or {}
    missing = {n: sorted(q - {x["name"] for x in replies.get(n) or []}) for n, q in want.items()}
    missing = {n: q for n, q in missing.items() if q or n not in replies}
    if missing:
        _print({"not_consuming": missing})
        return EXIT_FAILED
    token = f"gate-{socket.gethostname()}-{time.time():.0f}"
    probed = sorted(set().union(*want.values()))
    sent = {q: app.send_task("ops.probe", args=[f"{token}-{q}"], queue=q) for q in probed}
    try:
        served = {q: r.get(timeout=args.probe_timeout)["worker"] for q, r in sent.items()}
    except Exception as exc:  # a probe not served in time: not open yet
        _print({"probe_failed": f"{type(exc).__name__}: {exc}"[:300]})
        return EXIT_FAILED
    _print({"answered": sorted(replies), "probes": served})
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    app = _app()
    # Broadcast: every running worker drops the task when it comes (or kills it, --terminate).
    # Workers keep the list in memory only: one started after this would still run it.
    app.control.revoke(args.id, terminate=args.terminate, signal="SIGTERM")
    _print({"revoked": args.id, "terminate": args.terminate})
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    if args.queue not in QUEUES:
        raise UsageError(f"unknown queue {args.queue!r}; queues: {', '.join(QUEUES)}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("purge deletes messages for good: confirm with --yes")
        from app.health import queue_lengths

        waiting = queue_lengths()[args.queue]
        answer = input(f"Delete the {waiting} message(s) waiting in {args.queue}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("taskctl: nothing purged", file=sys.stderr)
            return EXIT_FAILED
    app = _app()
    with app.connection_for_write() as conn:
        # kombu's Redis transport deletes the queue's list and its priority sub-lists; messages
        # already delivered (unacked) are not waiting and stay.
        purged = conn.default_channel.queue_purge(args.queue)
    _print({"queue": args.queue, "purged": purged})
    return EXIT_OK


def cmd_failed(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from app.db import session_scope
    from app.models import ApplicationLog

    since = datetime.now(UTC) - timedelta(hours=args.hours)
    with session_scope() as session:
        rows = session.execute(
            select(ApplicationLog.created_at, ApplicationLog.data)
            .where(ApplicationLog.event == "task_failed", ApplicationLog.created_at >= since)
            .order_by(ApplicationLog.created_at.desc())
            .limit(args.limit)
        ).all()
    failures = [
        {
            "at": at.isoformat(timespec="seconds"),
            "task": data.get("task_name"),
            "id": data.get("task_id"),
            "retries": data.get("retries"),
            "error": data.get("error"),
        }
        for at, data in rows
    ]
    if args.json:
        _print(failures)
    else:
        for f in failures:
            print(f"{f['at']}  {f['task']:<40} {f['id']}  {(f['error'] or '')[:120]}")
        print(f"{len(failures)} failure(s) in the last {args.hours:g} h", file=sys.stderr)
    return EXIT_OK


def cmd_tasks(args: argparse.Namespace) -> int:

    app = _app()
    for name in sorted(n for n in app.tasks if not n.startswith("celery.")):
        print(f"{name:<45} {queue_for(name)}")
    return EXIT_OK


def _migration_login(raw: str) -> Any:
    """The app's database URL with the login read from stdin (user, then password, one a line):
    the migrations' password reaches the process without touching a file or an argument."""
    from sqlalchemy.engine import make_url

    from app.settings import get_settings

    lines = raw.splitlines()
    if len(lines) < 2 or not lines[0].strip() or not lines[1]:
        raise UsageError("--login-stdin: expected the user on the first line, its password next")
    return make_url(get_settings().database_url).set(username=lines[0].strip(), password=lines[1])


def cmd_db(args: argparse.Namespace) -> int:
    from app import migrate
    from app.db import session_scope

    if args.db_command == "migrate":
        url = _migration_login(sys.stdin.read()) if args.login_stdin else None
        before, after = migrate.upgrade(args.revision, url=url, owner=args.owner)
        result: dict[str, Any] = {"before": before, "after": after}
        if args.json:  # the deployment's changed_when: before != after
            _print(result)
        else:
            print(f"database at revision {result['after']}")
    elif args.db_command == "seed":
        from app.seed import seed

        with session_scope() as session:
            _print(seed(session))
    elif args.db_command == "restore-pricing":
        from app.backup import restore

        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        with session_scope() as session:
            _print(restore(session, path))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskctl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="send a task by name; prints its id")
    s.add_argument("name")
    s.add_argument("--args", help="JSON array of positional arguments")
    s.add_argument("--kwargs", help="JSON object of keyword arguments")
    s.add_argument("--queue", help="override the queue the name routes to")
    s.add_argument(
        "--countdown",
        type=float,
        help="seconds before it may run (at most APP_VISIBILITY_TIMEOUT - APP_TASK_TIME_LIMIT)",
    )
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("status", help="state, worker, queue and result of a task")
    s.add_argument("id")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("result", help="print a task's result (exit 1 unless it succeeded)")
    s.add_argument("id")
    s.add_argument("--wait", action="store_true", help="wait until the task is done")
    s.add_argument("--timeout", type=float, default=60.0)
    s.set_defaults(func=cmd_result)

    s = sub.add_parser("queues", help="messages waiting per queue (Redis LLEN)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_queues)

    s = sub.add_parser("health", help="database, Redis, disk, memory, queues (exit 1 unhealthy)")
    s.add_argument("--max-queue-length", type=int, default=10_000)
    s.add_argument("--min-disk-free-percent", type=float, default=10.0)
    s.add_argument("--max-memory-percent", type=float, default=95.0)
    s.set_defaults(func=cmd_health)

    for name, text in (("ping", "workers that answer"), ("workers", "alias of ping")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--timeout", type=float, default=2.0)
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=cmd_ping)

    s = sub.add_parser("drain", help="instances stop consuming and run what they reserved")
    s.add_argument("instances", nargs="+", help="NAME (of this host) or NAME@HOST")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for reserved")
    s.add_argument("--reply-timeout", type=float, default=2.0, help="seconds per inspect call")
    s.set_defaults(func=cmd_drain)

    s = sub.add_parser("gate", help="exit 0 once instances consume their queues and serve probes")
    s.add_argument("instances", nargs="+", help="NAME=QUEUE[,QUEUE...] (NAME of this host)")
    s.add_argument("--reply-timeout", type=float, default=5.0, help="seconds for the inspect")
    s.add_argument("--probe-timeout", type=float, default=60.0, help="seconds for the probes")
    s.set_defaults(func=cmd_gate)

    s = sub.add_parser("revoke", help="workers drop a task (or stop it: --terminate)")
    s.add_argument("id")
    s.add_argument("--terminate", action="store_true", help="SIGTERM it if already running")
    s.set_defaults(func=cmd_revoke)

    s = sub.add_parser("purge", help="delete the messages waiting in a queue (asks first)")
    s.add_argument("queue")
    s.add_argument("--yes", action="store_true", help="do not ask")
    s.set_defaults(func=cmd_purge)

    s = sub.add_parser("failed", help="recent final failures: time, task, id, error")
    s.add_argument("--hours", type=float, default=24.0, help="how far back (default 24)")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_failed)

    s = sub.add_parser("tasks", help="registered tasks and their queue")
    s.set_defaults(func=cmd_tasks)

    s = sub.add_parser("db", help="database: migrate, seed, restore-pricing")
    db = s.add_subparsers(dest="db_command", required=True)
    m = db.add_parser("migrate", help="apply the Alembic migrations")
    m.add_argument("--revision", default="head")
    m.add_argument("--json", action="store_true", help='print {"before": REV, "after": REV}')
    m.add_argument(
        "--login-stdin", action="store_true", help="log in as the user and password read from stdin"
    )
    m.add_argument("--owner", help="act as this role (SET ROLE): the owner of what is created")
    db.add_parser("seed", help="insert demo data (idempotent)")
    r = db.add_parser("restore-pricing", help="restore a data.backup_pricing_data file")
    r.add_argument("file")
    s.set_defaults(func=cmd_db)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from app import logs
    from app.errors import PermanentError
    from app.settings import SettingsError, get_settings

    try:
        settings = get_settings()
        logs.configure(settings.log_format, "WARNING")
        return int(args.func(args))
    except (UsageError, SettingsError, PermanentError) as exc:
        print(f"taskctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # connection errors and the like: one clear line, no traceback
        from app.broker import explain_refusal

        reason = explain_refusal(exc) or f"{type(exc).__name__}: {exc}"
        print(f"taskctl: {args.command} failed: {reason}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
