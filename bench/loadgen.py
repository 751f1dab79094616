"""The load generator, run on the lab's ops1 by the bench commands (never on the controller).

    set -a; . /etc/celery/app.env; . /etc/celery/taskctl.env; set +a
    /opt/celery/current/bin/python loadgen.py MODE ...

Modes (one JSON object on stdout):
  burst --kind noop|probe|mix --count N   send N tasks at once, wait for their ends: tasks/s
        [--hold]                          (queue filled while the workers are stopped)
        [--timeline]                      and every task's end time ("ends": per task name)
  steady --rate R --seconds T             probes at R/s; pickup latency = task-started - send
  ping --nodes a@h,b@h                    wait until these worker nodes answer
  send --kind noop --count N [--queue Q]  only send N tasks (all to Q if given): {"sent": N, ...}

Task ends and starts come from Celery's events (the app sends them for Flower); the hosts of a
lab share the controller's kernel clock, so a worker's event time and ops1's send time compare.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import threading
import time
import uuid
from typing import Any

from app.celery_app import celery_app

SPEC = {
    "material": "AL6061",
    "quantity": 250,
    "dimensions": {"length_mm": 120, "width_mm": 60, "height_mm": 20},
    "finish": "anodized",
}
LOW_STOCK = [
    {"sku": "SKU-SS-PLATE", "name": "Stainless plate", "available": 8, "reorder_level": 20}
]
# kind -> cycle of (task name, args, kwargs, queue or None for the app's routing)
KINDS: dict[str, list[tuple[str, list[Any], dict[str, Any], str | None]]] = {
    "noop": [("celery.accumulate", [1], {}, "default")],
    "probe": [("ops.probe", ["TOKEN", 0], {}, "default")],
    # CPU-bound pricing (50 specifications priced) and I/O-bound mail (one message to SMTP).
    "mix": [
        ("pricing.calculate_bulk_pricing", [[SPEC] * 50], {}, None),
        ("notifications.send_low_stock_alerts", [LOW_STOCK], {}, None),
    ],
}


class Events:
    """Celery's task events in a thread: start and end times of the tasks we sent."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.failed: set[str] = set()
        self.retried = 0
        self.want: set[str] | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._recv: Any = None

    def _on(self, event: dict[str, Any]) -> None:
        uid, kind, ts = event.get("uuid", ""), event["type"], float(event["timestamp"])
        if kind == "task-started":
            self.started.setdefault(uid, ts)
        elif kind == "task-retried":
            self.retried += 1
        elif kind in ("task-succeeded", "task-failed"):
            self.ended[uid] = ts
            if kind == "task-failed":
                self.failed.add(uid)
            if self.want is not None and self.want <= self.ended.keys():
                self.done.set()

    def _run(self) -> None:
        with celery_app.connection_for_read() as conn:
            names = ("task-started", "task-succeeded", "task-failed", "task-retried")
            self._recv = celery_app.events.Receiver(conn, handlers=dict.fromkeys(names, self._on))
            with contextlib.suppress(OSError):  # TimeoutError is an OSError
                self._recv.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> None:
        self._thread.start()
        time.sleep(1.0)  # subscribed before the first send

    def stop(self) -> None:
        if self._recv is not None:
            self._recv.should_stop = True
        self._thread.join(timeout=5)


def send(
    kind: str,
    count: int,
    rate: float = 0.0,
    seconds: float = 0.0,
    only_queue: str = "",
    names: dict[str, str] | None = None,
) -> dict[str, float]:
    """Send tasks (all at once, or at `rate` per second for `seconds`); their send times (and
    their task names into `names`)."""
    sent: dict[str, float] = {}
    t0 = time.time()
    queues = itertools.cycle(["default", "pricing", "notifications"])
    for i, (name, args, kwargs, queue) in enumerate(itertools.cycle(KINDS[kind])):
        if i >= count or (seconds and time.time() - t0 >= seconds):
            break
        if rate:
            time.sleep(max(0.0, t0 + i / rate - time.time()))
        tid = str(uuid.uuid4())
        args = [f"bench-{tid}", 0] if name == "ops.probe" else args
        if kind == "probe" and rate:
            queue = next(queues)  # steady: every instance's queue in turn
        sent[tid] = time.time()
        if names is not None:
            names[tid] = name
        queue = only_queue or queue
        options = {"queue": queue} if queue else {}
        celery_app.send_task(name, args=args, kwargs=kwargs, task_id=tid, **options)
    return sent


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def by_name(ended: dict[str, float], names: dict[str, str]) -> dict[str, list[float]]:
    """The end times of the tasks we sent, sorted, per task name."""
    out: dict[str, list[float]] = {}
    for tid, name in names.items():
        if tid in ended:
            out.setdefault(name, []).append(round(ended[tid], 3))
    return {name: sorted(times) for name, times in out.items()}


def burst(
    kind: str, count: int, timeout: float, hold: bool, timeline: bool = False
) -> dict[str, Any]:
    """hold: the workers are stopped while we send (the queue fills), and started by the caller
    when it reads the line {"sent": N}; the rate then counts from the first task's start."""
    ev = Events()
    ev.start()
    t0 = time.time()
    names: dict[str, str] = {}
    sent = send(kind, count, names=names)
    if hold:
        print(json.dumps({"sent": len(sent)}), flush=True)
    ev.want = set(sent)
    if ev.want <= ev.ended.keys():
        ev.done.set()
    ev.done.wait(timeout)
    ev.stop()
    ends = [ev.ended[t] for t in sent if t in ev.ended]
    if hold and ev.started:
        t0 = min(ev.started[t] for t in sent if t in ev.started)
    seconds = (max(ends) - t0) if ends else float("nan")
    waits = [ev.started[t] - sent[t] for t in sent if t in ev.started]
    return {
        "kind": kind,
        "sent": len(sent),
        "ended": len(ends),
        "failed": len(ev.failed & set(sent)),
        "retried": ev.retried,
        "held": hold,
        "send_s": round(max(sent.values()) - min(sent.values()), 3),
        "seconds": round(seconds, 3),
        "tasks_per_s": round(len(ends) / seconds, 1) if ends else 0.0,
        "pickup_p50_s": round(pct(waits, 50), 4),
        **({"ends": by_name(ev.ended, names)} if timeline else {}),
    }


def steady(rate: float, seconds: float, drain: float) -> dict[str, Any]:
    ev = Events()
    ev.start()
    sent = send("probe", 10**7, rate=rate, seconds=seconds)
    ev.want = set(sent)
    ev.done.wait(drain)
    ev.stop()
    pairs = sorted((sent[t], ev.started[t] - sent[t]) for t in sent if t in ev.started)
    waits = [w for _, w in pairs]
    return {
        "rate": rate,
        "sent": len(sent),
        "started": len(pairs),
        "p50_s": round(pct(waits, 50), 4),
        "p99_s": round(pct(waits, 99), 4),
        "samples": [[round(s, 3), round(w, 4)] for s, w in pairs],
    }


def ping(nodes: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.time() + timeout
    seen: set[str] = set()
    while time.time() < deadline:
        for reply in celery_app.control.ping(destination=nodes, timeout=2.0) or []:
            seen.update(reply)
        if set(nodes) <= seen:
            break
        time.sleep(1)
    return {"nodes": sorted(seen), "missing": sorted(set(nodes) - seen)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["burst", "steady", "ping", "send"])
    p.add_argument("--kind", choices=sorted(KINDS), default="noop")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--nodes", default="")
    p.add_argument("--queue", default="", help="send: every task to this queue")
    p.add_argument("--hold", action="store_true", help="burst: workers start after the sends")
    p.add_argument("--timeline", action="store_true", help="burst: every task's end time too")
    a = p.parse_args()
    if a.mode == "burst":
        out = burst(a.kind, min(a.count, 100_000), min(a.timeout, 3600), a.hold, a.timeline)
    elif a.mode == "send":  # bench/decompose.py times the drain itself, without events
        sent = send(a.kind, min(a.count, 100_000), only_queue=a.queue)
        out = {"sent": len(sent), "send_s": round(max(sent.values()) - min(sent.values()), 3)}
    elif a.mode == "steady":
        out = steady(a.rate, min(a.seconds, 1800), drain=min(a.timeout, 600))
    else:
        out = ping([n for n in a.nodes.split(",") if n], min(a.timeout, 600))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
