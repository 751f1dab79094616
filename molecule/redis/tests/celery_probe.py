"""A real Celery round trip through Redis as the ACL user `celery`: proves the ACL is sufficient.

Run by test_redis.py on the controller (which has Celery in .venv) against the lab's Redis.
Exercises what a deployment uses: task queues (LPUSH/BRPOP, unacked index), results with
pub/sub waiters, groups and chords (the backend's Lua scripts), remote control (pidbox: fanout
PUBLISH/PSUBSCRIBE and reply queues) and task events. Results go to the result store instance.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from celery import Celery, chord, group
from celery.contrib.testing.worker import start_worker


def run_probe(broker_url: str, backend_url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Run a worker in this process and drive it through every Redis feature Celery uses."""
    name = f"probe{uuid.uuid4().hex[:8]}"  # task names unique per run of this process
    app = Celery(name, broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(
        worker_send_task_events=True,
        task_send_sent_event=True,
        result_extended=True,
        broker_connection_retry_on_startup=False,
        broker_transport_options={"visibility_timeout": 3600},
    )

    @app.task(name=f"{name}.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name=f"{name}.total")
    def total(values: list[int]) -> int:
        return sum(values)

    events: list[str] = []
    conn = app.connection_for_read()
    receiver = app.events.Receiver(conn, handlers={"*": lambda e: events.append(e["type"])})
    listener = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
    listener.start()
    out: dict[str, Any] = {}
    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        loglevel="WARNING",
        task_events=True,
    ):
        out["single"] = add.delay(2, 3).get(timeout=timeout)
        out["group"] = group(add.s(i, i) for i in range(4))().get(timeout=timeout)
        out["chord"] = chord(add.s(i, 1) for i in range(4))(total.s()).get(timeout=timeout)
        out["ping"] = app.control.ping(timeout=2.0)
        out["active_queues"] = app.control.inspect(timeout=2.0).active_queues()
        time.sleep(1)  # let the last events arrive
    receiver.should_stop = True
    listener.join(timeout=5)
    conn.release()
    out["events"] = sorted(set(events))
    app.close()
    return out


if __name__ == "__main__":
    import sys

    print(run_probe(sys.argv[1], sys.argv[2]))
