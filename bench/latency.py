#!/usr/bin/env python3
"""Benchmark 4: pickup latency p50/p99 at a steady load, and during a rolling restart.

    .venv/bin/python bench/latency.py [--lab bench] [--runs 3] [--rate 10] [--seconds 60]

Pickup latency = the worker's task-started event time - ops1's send time (same kernel clock).
ops1 sends `ops.probe` at --rate per second, in turn to the queues default, pricing and
notifications. Steady: --seconds of that. Rolling: the same load while `ansible-playbook
playbooks/rolling_restart.yml` restarts every worker host in turn (warm shutdown, health gate);
only the probes sent between the playbook's start and end count. Target: rolling p99 <= 2 x
steady p99.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from typing import Any

import common


def percentiles(samples: list[list[float]], since: float, until: float) -> dict[str, float]:
    waits = [w for sent, w in samples if since <= sent <= until]
    if len(waits) < 2:
        return {"n": len(waits), "p50_s": float("nan"), "p99_s": float("nan")}
    q = statistics.quantiles(waits, n=100, method="inclusive")
    return {"n": len(waits), "p50_s": round(q[49], 4), "p99_s": round(q[98], 4)}


def rolling(name: str, rate: float, seconds: float) -> dict[str, Any]:
    """The load for `seconds`; the rolling restart starts 10 s in."""
    argv = common.ssh_argv(
        name,
        "ops1",
        f"{common.APP_ENV} {common.PY} /root/loadgen.py steady --rate {rate} "
        f"--seconds {seconds} --timeout 120",
    )
    window: dict[str, Any] = {}

    def restart() -> None:
        time.sleep(10)
        window["since"] = time.time()
        window["playbook"] = common.playbook(name, "playbooks/rolling_restart.yml")
        window["until"] = time.time()

    t = threading.Thread(target=restart)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=common.env()) as gen:
        t.start()
        out, _ = gen.communicate(timeout=seconds + 300)
    t.join(timeout=900)
    result = json.loads(out.strip().splitlines()[-1])
    if window.get("until", float("inf")) > result["samples"][-1][0]:
        common.log("the rolling restart outlasted the load: raise --seconds")
    stats = percentiles(result["samples"], window["since"], window["until"])
    return {**stats, "restart_s": window["playbook"]["seconds"], "sent": result["sent"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", default="bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rolling-seconds", type=float, default=150.0)
    a = p.parse_args()
    common.prepare(a.lab)
    common.wait_nodes(a.lab)
    steady_p50: list[float] = []
    steady_p99: list[float] = []
    roll_p50: list[float] = []
    roll_p99: list[float] = []
    for run in range(1, min(a.runs, 10) + 1):
        common.drain_queues(a.lab)
        r = common.gen(a.lab, "steady", "--rate", str(a.rate), "--seconds", str(a.seconds))
        s = percentiles(r["samples"], 0, float("inf"))
        common.emit({"bench": "latency", "phase": "steady", "run": run, "rate": a.rate, **s})
        steady_p50.append(s["p50_s"])
        steady_p99.append(s["p99_s"])
        common.wait_nodes(a.lab)
        ro = rolling(a.lab, a.rate, a.rolling_seconds)
        common.emit({"bench": "latency", "phase": "rolling", "run": run, "rate": a.rate, **ro})
        roll_p50.append(ro["p50_s"])
        roll_p99.append(ro["p99_s"])
        common.wait_nodes(a.lab)
    summary = {
        "steady_p50_s": common.median(steady_p50),
        "rolling_p50_s": common.median(roll_p50),
        "steady_p99_s": common.median(steady_p99),
        "rolling_p99_s": common.median(roll_p99),
        "ratio": round(common.median(roll_p99) / common.median(steady_p99), 2),
        "runs": len(steady_p99),
    }
    print(json.dumps({"bench": "latency-summary", "load": common.load(), **summary}, indent=2))


if __name__ == "__main__":
    main()
