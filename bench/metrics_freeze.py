#!/usr/bin/env python3
"""Issue 14: what the metrics cost the tasks' throughput, interval by interval in long bursts.

    .venv/bin/python bench/metrics_freeze.py [--lab bench] [--runs 3] [--kinds noop,mix]
                                             [--period 6] [--scale 1]

Why another bench: bench/throughput.py's `systemd-nomonitoring` compares bursts a minute apart,
and this machine's speed drifts by ±10 % over such times (docs/BENCHMARKS.md): 20 pairs leave a
2 % cost unresolved. Here each run is one long held burst through the deployed units (as
throughput.py's `systemd` mode, with its `--kinds`), and every metrics unit of every host
(Prometheus, Alertmanager, the node, Redis, PostgreSQL and Celery exporters) is frozen (SIGSTOP)
or thawed (SIGCONT) every `--period` seconds in the order off, on, on, off, off, on, ... (so that
neither goes first in a pair). Tasks/s per interval comes from the tasks' end times (Celery's
events, the lab's one clock); each pair of intervals gives with/without. The first interval
(the workers' start) and those after the first of its queues ran dry are left out.

Conservative: a frozen exporter's events wait in Redis and it reads them after the thaw, so an
interval with the metrics also pays for the event work of the interval before it. A frozen
Prometheus skips its scrapes (no backlog). Printed per kind: the pairs' median ratio, their
geometric mean with a 95 % interval, and the ratio of the summed rates.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common
import throughput

# Long enough for ~20 intervals of 6 s at the lab's rates (no-op ~550/s, the mix ~125/s); the
# mix's 16,000 messages take ~90 MB of the broker's 512 MB.
COUNTS = {"noop": 60_000, "mix": 16_000}
SIGNAL = (
    "systemctl list-units --state=active --type=service --plain --no-legend"
    f" {throughput.MONITORING_UNITS} | awk '{{print $1}}' | xargs -r systemctl kill --signal="
)
FREEZE, THAW = SIGNAL + "SIGSTOP\n", SIGNAL + "SIGCONT\n"


def metrics_on(k: int) -> bool:
    """Interval k's state: 0 (the workers' start) on, then off, on, on, off, off, on, on..."""
    return k == 0 or (k % 4) in (2, 3)


def freeze_toggler(lab: str, period: float, timeline: list[tuple[float, bool]]) -> Any:
    """While the burst runs: every `period` s the next interval's state, set on every host at
    once; (time the state holds from, state) appended to `timeline`."""
    hosts = throughput.every_host(lab)

    def run(p: subprocess.Popen[str]) -> None:
        state, k = True, 0
        timeline.append((time.time(), True))
        with ThreadPoolExecutor(len(hosts)) as pool:
            try:
                while p.poll() is None:
                    time.sleep(max(0.0, timeline[0][0] + (k + 1) * period - time.time()))
                    k += 1
                    want = metrics_on(k)
                    if want != state:
                        command = THAW if want else FREEZE
                        list(pool.map(lambda h, c=command: common.ssh(lab, h, c), hosts))
                        state = want
                    timeline.append((time.time(), state))
            finally:
                list(pool.map(lambda h: common.ssh(lab, h, THAW), hosts))

    return run


def intervals(
    timeline: list[tuple[float, bool]], by_name: dict[str, list[float]]
) -> list[dict[str, Any]]:
    """Each whole interval after the first, while every kind of task still had some queued (the
    mix's two queues empty at different times, and the rate changes then): state, seconds,
    tasks/s."""
    last = min(max(times) for times in by_name.values()) - 1.0
    ends = [e for times in by_name.values() for e in times]
    out = []
    for (t0, state), (t1, _) in itertools.pairwise(timeline[1:]):
        if t1 > last:
            break
        n = sum(1 for e in ends if t0 <= e < t1)
        out.append({"on": state, "s": round(t1 - t0, 3), "tasks_per_s": round(n / (t1 - t0), 2)})
    return out


def pairs(rows: list[dict[str, Any]]) -> list[float]:
    """with/without per pair of neighbouring intervals (off,on or on,off: metrics_on's order)."""
    out = []
    for a, b in zip(rows[0::2], rows[1::2], strict=False):
        if a["on"] != b["on"]:
            on, off = (a, b) if a["on"] else (b, a)
            out.append(on["tasks_per_s"] / off["tasks_per_s"])
    return out


def summary(ratios: list[float]) -> dict[str, Any]:
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = 2.0 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("nan")
    return {
        "pairs": len(ratios),
        "median_pair": round(statistics.median(ratios), 4),
        "geomean": round(math.exp(mean), 4),
        "ci95": [round(math.exp(mean - half), 4), round(math.exp(mean + half), 4)],
    }


def main() -> None:
    p = common.burst_parser(__doc__, "noop,mix")
    p.add_argument("--period", type=float, default=6.0, help="seconds per interval")
    a = p.parse_args()
    common.ready_for_bursts(a.lab)
    ratios: dict[str, list[float]] = {}
    sums: dict[tuple[str, bool], list[float]] = {}
    for run in range(1, min(a.runs, 10) + 1):
        for kind in a.kinds.split(","):
            timeline: list[tuple[float, bool]] = []
            r = common.held_burst(
                a.lab,
                kind,
                int(COUNTS[kind] * a.scale),
                throughput.UNITS_STOP,
                throughput.UNITS_START,
                while_running=freeze_toggler(a.lab, a.period, timeline),
                timeline=True,
            )
            ends = r.pop("ends")
            rows = intervals(timeline, ends)
            got = pairs(rows)
            ratios.setdefault(kind, []).extend(got)
            for row in rows:
                sums.setdefault((kind, row["on"]), []).append(row["tasks_per_s"])
            common.emit(
                {"bench": "metrics_freeze", "run": run, **r, "period_s": a.period}
                | {"intervals": rows, "pair_ratios": [round(x, 4) for x in got]}
            )
    out = {
        kind: {
            **summary(got),
            "mean_on_over_off": round(
                statistics.fmean(sums[kind, True]) / statistics.fmean(sums[kind, False]), 4
            ),
        }
        for kind, got in ratios.items()
    }
    print(json.dumps({"bench": "metrics_freeze-summary", "load": common.load(), **out}, indent=2))


if __name__ == "__main__":
    main()
