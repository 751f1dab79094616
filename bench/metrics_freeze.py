#!/usr/bin/env python3
"""Issue 14: what the metrics cost the tasks' throughput, interval by interval in long bursts.

    .venv/bin/python bench/metrics_freeze.py [--lab bench] [--runs 3] [--kinds noop,mix]
                                             [--period 6] [--scale 1] [--ops1-cpu 1]
                                             [--units 'celery-exporter*']   (one part alone)
    .venv/bin/python bench/metrics_freeze.py --from-log OUTPUT [OUTPUT...]   (pooled, no run)

Why another bench: bench/throughput.py's `systemd-nomonitoring` compares bursts a minute apart,
and this machine's speed drifts by ±10 % over such times (docs/BENCHMARKS.md): 20 pairs leave a
2 % cost unresolved. Here each run is one long held burst through the deployed units (as
throughput.py's `systemd` mode, with its `--kinds`), and every metrics unit of every host
(Prometheus, Alertmanager, the node, Redis, PostgreSQL and Celery exporters) is frozen (SIGSTOP)
or thawed (SIGCONT) every `--period` seconds in the order off, on, on, off, off, on, ... (so that
neither goes first in a pair), by signals sent from this machine straight to the units'
processes (common.signal_units: the lab's hosts share its kernel, so every host's units change
within milliseconds and nothing in the lab spends CPU on it; over SSH, as until the seventeenth
session, a fan-out took 2.5-3 s of each 6 s interval and its sessions' CPU fell on the
workers' cores). Tasks/s per interval comes from the tasks' end times (Celery's events, the
lab's one clock); each pair of intervals gives with/without. Left out: the first interval (the
workers' start), the first pair (their warm-up) and the intervals after the first of the
burst's queues ran dry.

Conservative: a frozen exporter's events wait in Redis and it reads them after the thaw, so an
interval with the metrics also pays for the event work of the interval before it. A frozen
Prometheus skips its scrapes (no backlog). The orders on,off and off,on alternate and weigh the
same in the estimate (over SSH the first interval of a pair ran 3 to 5 % slower than the second
in either state; with the local signals by 1 % on shared cores, 3-6 % either way round with
the metrics host apart). Printed per kind: that balanced ratio with ±2 standard errors, each
order's own geometric mean, and the median pair.

Where a cost goes: at each boundary the CPU time of every service of every host and of each CPU
is read from /proc (common.unit_ticks, ~30 ms, inside the boundary's excluded time); per state,
each service's CPU per task ended and each CPU's busy share are printed ("cpu_summary"; pooled
over runs in the summary as "KIND:cpu"). With the workers' CPU saturated, a throughput cost of x %
is x % more CPU per task there: the services whose CPU per task grows with the metrics on say
whose it is, and a cost spread evenly over all of them is the machine's (caches, the host),
not a service's work.

`--ops1-cpu 1`: ops1 on CPU 1, the other hosts on the rest (common.ops1_apart), the layout of real
servers, where Prometheus, Alertmanager and the Celery exporter run on a host of their own and
only a node exporter (and, on the data host, the Redis and PostgreSQL exporters) shares the
workers' and the data's CPUs.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import common
import throughput

# Long enough for ~20 intervals of 6 s at the lab's rates (no-op ~550/s, the mix ~125/s); the
# mix's 16,000 messages take ~90 MB of the broker's 512 MB.
COUNTS = {"noop": 60_000, "mix": 16_000}


def metrics_on(k: int) -> bool:
    """Interval k's state: 0 (the workers' start) on, then off, on, on, off, off, on, on..."""
    return k == 0 or (k % 4) in (2, 3)


# Per boundary between intervals: (when its signals began, when they ended, the state after it);
# the two times are one when the state did not change there.
Marks = list[tuple[float, float, bool]]


# Per boundary, after its signals: every service's CPU so far (common.unit_ticks) and each CPU's.
Snaps = list[tuple[dict[str, int], dict[str, tuple[int, int]]]]


def freeze_toggler(lab: str, period: float, marks: Marks, units: str, snaps: Snaps) -> Any:
    """While the burst runs: every `period` s the next interval's state of `units`, set on every
    host at once from this machine (common.signal_units: milliseconds, no SSH); each boundary
    appended to `marks`, the CPU read there (inside the boundary's excluded time) to `snaps`."""
    hosts, patterns = common.every_host(lab), shlex.split(units)

    def snap() -> None:
        snaps.append((common.unit_ticks(lab, hosts), common.cpu_times_each()))

    def run(p: subprocess.Popen[str]) -> None:
        state, k = True, 0
        now = time.time()
        snap()
        marks.append((now, time.time(), True))
        try:
            while p.poll() is None:
                time.sleep(max(0.0, marks[0][0] + (k + 1) * period - time.time()))
                k += 1
                want, began = metrics_on(k), time.time()
                if want != state:
                    sig = signal.SIGCONT if want else signal.SIGSTOP
                    if not common.signal_units(lab, hosts, patterns, sig):
                        raise RuntimeError(f"no process of {units} on {hosts}")
                    state = want
                snap()
                marks.append((began, time.time(), state))
        finally:
            common.signal_units(lab, hosts, patterns, signal.SIGCONT)

    return run


def intervals(marks: Marks, by_name: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Each whole interval from the fourth on (the first is the workers' start, the next pair
    their warm-up), each without the signalling at its ends (milliseconds: common.signal_units),
    while every kind of task still had some queued (the mix's two queues empty at different
    times, and the rate changes then): k, state, seconds, tasks/s, and for the mix the tasks
    ended per task name (each name has its queue and worker instance)."""
    last = min(max(times) for times in by_name.values()) - 1.0
    out = []
    for k in range(3, len(marks) - 1):
        t0, t1, state = marks[k][1], marks[k + 1][0], marks[k][2]
        if t1 > last:
            break
        ended = {name: sum(1 for e in times if t0 <= e < t1) for name, times in by_name.items()}
        n = sum(ended.values())
        out.append(
            {"k": k, "on": state, "s": round(t1 - t0, 3), "tasks_per_s": round(n / (t1 - t0), 2)}
            | ({"ended": ended} if len(ended) > 1 else {})
        )
    return out


def cpu_by_state(rows: list[dict[str, Any]], snaps: Snaps) -> dict[str, Any]:
    """Over the kept intervals, per state ([on, off]): the tasks ended, each service's CPU
    (jiffies, "HOST/UNIT") and each CPU's [busy, total] jiffies. Where the throughput's cost
    goes: a service whose CPU per task differs between the states, or a CPU that is not busy."""
    out: dict[str, Any] = {"tasks": [0, 0], "ticks": {}, "busy": {}}
    for row in rows:
        k, i = row["k"], 0 if row["on"] else 1
        (u0, c0), (u1, c1) = snaps[k], snaps[k + 1]
        out["tasks"][i] += round(row["tasks_per_s"] * row["s"])
        for key in u0.keys() | u1.keys():
            out["ticks"].setdefault(key, [0, 0])[i] += u1.get(key, 0) - u0.get(key, 0)
        for cpu in c1:
            busy = out["busy"].setdefault(cpu, [[0, 0], [0, 0]])[i]
            busy[0] += c1[cpu][0] - c0[cpu][0]
            busy[1] += c1[cpu][1] - c0[cpu][1]
    return out


def cpu_summary(cpus: list[dict[str, Any]]) -> dict[str, Any]:
    """cpu_by_state of one or more runs pooled: each service's CPU per task, ms [on, off] and
    on - off, the largest differences first (those of ≥ 0.02 ms either way), their total; each
    CPU's busy share [on, off]."""
    hz = os.sysconf("SC_CLK_TCK")
    tasks = [sum(c["tasks"][i] for c in cpus) for i in (0, 1)]
    if not min(tasks):
        return {}
    ticks: dict[str, list[int]] = {}
    busy: dict[str, list[list[int]]] = {}
    for c in cpus:
        for key, (on, off) in c["ticks"].items():
            t = ticks.setdefault(key, [0, 0])
            t[0], t[1] = t[0] + on, t[1] + off
        for cpu, states in c["busy"].items():
            b = busy.setdefault(cpu, [[0, 0], [0, 0]])
            for i in (0, 1):
                b[i] = [b[i][0] + states[i][0], b[i][1] + states[i][1]]
    ms = {k: [1000 * t[i] / hz / tasks[i] for i in (0, 1)] for k, t in ticks.items()}
    per_task = {k: v for k, v in ms.items() if max(v) >= 0.02}
    return {
        "tasks": tasks,
        "ms_per_task_all": [round(sum(v[i] for v in ms.values()), 3) for i in (0, 1)],
        "ms_per_task": {
            k: [round(v[0], 3), round(v[1], 3), round(v[0] - v[1], 3)]
            for k, v in sorted(per_task.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))
        },
        "busy": {
            cpu: [round(b[i][0] / b[i][1], 3) if b[i][1] else None for i in (0, 1)]
            for cpu, b in sorted(busy.items())
        },
    }


def pairs(rows: list[dict[str, Any]], name: str = "") -> list[tuple[str, float]]:
    """Per pair of neighbouring intervals (3,4), (5,6)...: its order ("on,off" or "off,on", in
    turn: metrics_on) and with/without; of every task, or of one task name's (the mix's)."""

    def rate(row: dict[str, Any]) -> float:
        return row["ended"][name] / row["s"] if name else float(row["tasks_per_s"])

    out = []
    for a, b in zip(rows[0::2], rows[1::2], strict=False):
        if a["on"] != b["on"] and a["k"] + 1 == b["k"] and min(rate(a), rate(b)):
            on, off = (a, b) if a["on"] else (b, a)
            out.append(("on,off" if a["on"] else "off,on", rate(on) / rate(off)))
    return out


def by_name(rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """The mix's pairs per task name ("mix:pricing", "mix:notifications"): each has its queue
    and worker instance, so which of the two the metrics slow shows apart."""
    names = rows[0].get("ended", {}) if rows else {}
    return {f"mix:{n.split('.')[0]}": pairs(rows, n) for n in names}


# Per kind (and "mix:NAME"), the pairs of each run; per kind, the CPU of each run (cpu_by_state).
Ratios = dict[str, list[list[tuple[str, float]]]]
Cpus = dict[str, list[dict[str, Any]]]


def add_run(ratios: Ratios, kind: str, rows: list[dict[str, Any]], got: list[Any]) -> None:
    ratios.setdefault(kind, []).append([(o, x) for o, x in got])
    for key, named in by_name(rows).items():
        ratios.setdefault(key, []).append(named)


def from_log(paths: list[str], cpus: Cpus) -> Ratios:
    """The pairs of earlier runs: every run's line in these outputs (and its CPU, if read)."""
    ratios: Ratios = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line) if line.startswith('{"bench": "metrics_freeze"') else {}
            if r.get("bench") == "metrics_freeze":
                add_run(ratios, r["kind"], r["intervals"], r["pairs"])
                if "cpu" in r:
                    cpus.setdefault(r["kind"], []).append(r["cpu"])
    return ratios


def summary(per_run: list[list[tuple[str, float]]]) -> dict[str, Any]:
    """Every run's pairs pooled (balanced(), ±2 standard errors of the pairs), and each run's
    own estimate with their mean ±2 standard errors of the runs: runs differ by more than their
    pairs say (one run of the exporter alone read x1.040 with 1.007-1.074), so the runs' bounds
    are the honest ones."""
    out = balanced([p for run in per_run for p in run])
    out["per_run"] = [x for run in per_run if (x := balanced(run).get("balanced"))]
    logs = [math.log(x) for x in out["per_run"]]
    if len(logs) >= 3:
        mean, se = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
        out["runs_mean"] = round(math.exp(mean), 4)
        out["runs_ci95"] = [round(math.exp(mean - 2 * se), 4), round(math.exp(mean + 2 * se), 4)]
    return out


def balanced(got: list[tuple[str, float]]) -> dict[str, Any]:
    """The mean of the two orders' mean log ratios (what goes first in a pair weighs the same
    either way), ±2 standard errors; and each order's own, whose gap is the order's effect."""
    by_order = {o: [math.log(r) for g, r in got if g == o] for o in ("on,off", "off,on")}
    if min(len(v) for v in by_order.values()) < 2:
        return {"pairs": len(got), "too_few": True}
    means = {o: statistics.fmean(v) for o, v in by_order.items()}
    se = 0.5 * math.sqrt(sum(statistics.variance(v) / len(v) for v in by_order.values()))
    mean = statistics.fmean(means.values())
    return {
        "pairs": len(got),
        "balanced": round(math.exp(mean), 4),
        "ci95": [round(math.exp(mean - 2 * se), 4), round(math.exp(mean + 2 * se), 4)],
        "median_pair": round(statistics.median(r for _, r in got), 4),
        **{f"{o}_pairs": len(v) for o, v in by_order.items()},
        **{f"{o}_geomean": round(math.exp(m), 4) for o, m in means.items()},
    }


def main() -> None:
    p = common.burst_parser(__doc__, "noop,mix")
    p.add_argument("--period", type=float, default=6.0, help="seconds per interval")
    p.add_argument("--ops1-cpu", default="", help="ops1 on this CPU, the other hosts on the rest")
    p.add_argument(
        "--units",
        default=throughput.MONITORING_UNITS,
        help="the services frozen and thawed (fnmatch on NAME.service, e.g. 'prometheus-node*')",
    )
    p.add_argument("--from-log", nargs="+", default=[], help="no run: the summary of these")
    a = p.parse_args()
    common.exit_on_hangup()  # the toggler's final thaw runs
    cpus: Cpus = {}
    ratios = from_log(a.from_log, cpus)
    if not a.from_log:
        common.ready_for_bursts(a.lab)
        with common.ops1_apart(a.lab, a.ops1_cpu):
            runs(a, ratios, cpus)
    out = {kind: summary(got) for kind, got in ratios.items()}
    out |= {f"{kind}:cpu": cpu_summary(got) for kind, got in cpus.items()}
    print(json.dumps({"bench": "metrics_freeze-summary", "load": common.load(), **out}, indent=2))


def runs(a: Any, ratios: Ratios, cpus: Cpus) -> None:
    """The runs, each kind's pairs added to `ratios` and CPU to `cpus`, a JSON line per run and
    kind."""
    for run in range(1, min(a.runs, 10) + 1):
        for kind in a.kinds.split(","):
            marks: Marks = []
            snaps: Snaps = []
            r = common.held_burst(
                a.lab,
                kind,
                int(COUNTS[kind] * a.scale),
                throughput.UNITS_STOP,
                throughput.UNITS_START,
                while_running=freeze_toggler(a.lab, a.period, marks, a.units, snaps),
                timeline=True,
            )
            rows = intervals(marks, r.pop("ends"))
            got = pairs(rows)
            add_run(ratios, kind, rows, got)
            cpu = cpu_by_state(rows, snaps)
            cpus.setdefault(kind, []).append(cpu)
            common.emit(
                {"bench": "metrics_freeze", "run": run, **r, "period_s": a.period}
                | {"signals": "local"}
                | ({"ops1_cpu": a.ops1_cpu} if a.ops1_cpu else {})
                | ({"units": a.units} if a.units != throughput.MONITORING_UNITS else {})
                | {"intervals": rows, "pairs": [[o, round(x, 4)] for o, x in got]}
                | {"cpu_summary": cpu_summary([cpu]), "cpu": cpu}
            )


if __name__ == "__main__":
    main()
