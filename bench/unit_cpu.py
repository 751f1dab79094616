#!/usr/bin/env python3
"""Issue 14: where the CPU of a burst goes, unit by unit (the metrics units against the rest).

    .venv/bin/python bench/unit_cpu.py [--lab bench] [--runs 2] [--kinds noop,mix] [--scale 1]

The lab must be deployed (bench/converge.py --keep). Each run and kind: every unit's CPU on every
host is read (from /proc: every process of its cgroup, and the children they reaped), one held
burst runs through the deployed units (as bench/throughput.py's `systemd` mode), and the CPU is
read again when the workers start and after the last task. Per burst: the whole (the sends, a
task-sent event each, then the run) and `running_*`, from the workers' start (what tasks/s
pays): µs per task per group (workers, Redis, PostgreSQL, the metrics units, Flower, the rest);
then the medians over the runs, and the metrics units' CPU on the worker and data hosts against
the workers' own.
On this lab every host shares the same 2 cores: a metrics unit's CPU is CPU the workers do not
get; on real servers only what runs on the worker and data hosts would be.

`--without-metrics` adds, beside each burst, one with every metrics unit of every host stopped
(bench/throughput.py's `systemd-nomonitoring`), in alternating order: what the rest of the cluster
(Redis above all, which publishes each event to one subscriber less) spends per task without them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import common
import throughput

# Unit name patterns per group, the first match wins (systemctl list-units globs).
GROUPS = {
    "workers": ["celery-worker@*"],
    "redis": ["redis-server*"],
    "postgresql": ["postgresql@*"],
    "celery-exporter": ["celery-exporter*"],
    "prometheus": ["prometheus.service"],
    "alertmanager": ["prometheus-alertmanager*"],
    "node-exporter": ["prometheus-node-exporter*"],
    "redis-exporter": ["prometheus-redis-exporter@*"],
    "postgres-exporter": ["prometheus-postgres-exporter*"],
    "flower": ["flower*"],
    "beat": ["celery-beat*"],
    "api": ["celery-api*"],
}
METRICS = (
    "celery-exporter",
    "prometheus",
    "alertmanager",
    "node-exporter",
    "redis-exporter",
    "postgres-exporter",
)
# Per active unit: its name, invocation and the CPU ticks (utime+stime, and the reaped children's
# cutime+cstime) of every process in its cgroup. From /proc: this lab's hosts have cgroup v1
# controllers (../shared/LAB-FACTS.md), where systemd keeps no CPUUsageNSec.
READ = r"""
for u in $(systemctl list-units --state=active --plain --no-legend --type=service {patterns} \
           | awk '{{print $1}}'); do
  cg=/sys/fs/cgroup/systemd$(systemctl show --property=ControlGroup --value "$u")
  t=0
  for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do
    s=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{{print $12+$13+$14+$15}}') && t=$((t+s))
  done
  echo "$u $(systemctl show --property=InvocationID --value "$u") $t"
done
"""
TICK_NS = 10_000_000  # USER_HZ 100
Cpu = dict[tuple[str, str], tuple[str, int]]


def read_cpu(lab: str) -> Cpu:
    """(host, unit) -> (its invocation, CPU ns of it so far), for every unit of GROUPS active on
    every host. A unit started again (the workers, by the burst) counts from 0 in a new
    invocation."""
    patterns = " ".join(f"'{p}'" for ps in GROUPS.values() for p in ps)
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for host in common.every_host(lab):
        for line in common.ssh(lab, host, READ.format(patterns=patterns)).splitlines():
            unit, invocation, ticks = line.split()
            out[host, unit] = (invocation, int(ticks) * TICK_NS)
    return out


def group_of(unit: str) -> str:
    for name, patterns in GROUPS.items():
        for p in patterns:
            stem = p.rstrip("*")
            if unit == p or (p.endswith("*") and unit.startswith(stem)):
                return name
    return "other"


def burst(
    lab: str, kind: str, count: int, metrics: bool
) -> tuple[dict[str, Any], list[Cpu], float]:
    """One held burst: its figures; the CPU read before the sends, when the workers start and
    after the last task; its wall time."""
    hosts = common.every_host(lab)
    for host in hosts if not metrics else []:
        common.ssh(lab, host, throughput.MONITORING_STOP)
    try:
        reads, t0 = [read_cpu(lab)], time.monotonic()
        r = common.held_burst(
            lab,
            kind,
            count,
            throughput.UNITS_STOP,
            throughput.UNITS_START,
            at_start=lambda: reads.append(read_cpu(lab)),
        )
        return r, [*reads, read_cpu(lab)], time.monotonic() - t0
    finally:
        for host in hosts if not metrics else []:
            common.ssh(lab, host, throughput.MONITORING_START)
        if not metrics:
            time.sleep(throughput.MONITORING_WARMUP_S)


def spent(before: Cpu, after: Cpu) -> tuple[dict[str, float], float]:
    """CPU ms per group between two reads, and the metrics units' on the worker and data hosts."""
    groups: dict[str, float] = {}
    metrics_off_ops1 = 0.0
    for key, (invocation, ns) in after.items():
        was, ns_before = before.get(key, ("", 0))
        ms = (ns - (ns_before if was == invocation else 0)) / 1e6
        name = group_of(key[1])
        groups[name] = groups.get(name, 0.0) + ms
        if name in METRICS and key[0] != "ops1":
            metrics_off_ops1 += ms
    return groups, metrics_off_ops1


def share(groups: dict[str, float]) -> float:
    return round(sum(groups.get(g, 0.0) for g in METRICS) / max(sum(groups.values()), 1e-9), 3)


def per_task(groups: dict[str, float], count: int) -> dict[str, float]:
    """Each group's CPU in µs per task, by group name."""
    return {g: ms * 1000 / count for g, ms in sorted(groups.items())}


def main() -> None:
    p = common.burst_parser(__doc__, "noop,mix")
    p.add_argument("--without-metrics", action="store_true", help="also bursts without them")
    a = p.parse_args()
    common.ready_for_bursts(a.lab)
    per_group: dict[tuple[str, str], list[float]] = {}
    modes = [True, False] if a.without_metrics else [True]
    plan = [
        (n, kind, metrics)
        for n in range(1, min(a.runs, 20) + 1)
        for kind in a.kinds.split(",")
        for metrics in modes[:: 1 if n % 2 else -1]  # no mode always goes first
    ]
    for run, kind, metrics in plan:
        count = int(throughput.COUNTS[kind] * a.scale)
        r, (before, at_start, after), wall = burst(a.lab, kind, count, metrics)
        kind_key = kind if metrics else f"{kind} without metrics"
        groups, metrics_off_ops1 = spent(before, after)
        # While the tasks run (from the workers' start): what the burst's tasks/s pays. The
        # sends before it publish a task-sent event per task, one message each, that the
        # exporter and Flower read then.
        running, _ = spent(at_start, after)
        burst_us, running_us = per_task(groups, count), per_task(running, count)
        record = {
            "bench": "unit_cpu",
            "run": run,
            "kind": kind,
            "metrics": metrics,
            "tasks": count,
            "tasks_per_s": r["tasks_per_s"],
            "wall_s": round(wall, 1),
            "cpu_ms": {g: round(ms) for g, ms in sorted(groups.items())},
            "us_per_task": {g: round(us) for g, us in burst_us.items()},
            "metrics_share": share(groups),
            "running_us_per_task": {g: round(us) for g, us in running_us.items()},
            "running_metrics_share": share(running),
            # Against the workers' own CPU: what the metrics add where the tasks run and the
            # broker lives (on real servers ops1's Prometheus and exporter use other CPUs).
            "metrics_off_ops1_over_workers": round(
                metrics_off_ops1 / max(groups.get("workers", 0.0), 1e-9), 4
            ),
        }
        common.emit(record)
        for g, us in burst_us.items():
            per_group.setdefault((kind_key, g), []).append(us)
        per_group.setdefault((kind_key, "metrics off ops1"), []).append(
            metrics_off_ops1 * 1000 / count
        )
        per_group.setdefault((kind_key, "tasks/s"), []).append(r["tasks_per_s"])
        per_group.setdefault((kind_key, "running: metrics share ‰"), []).append(
            share(running) * 1000
        )
        for g, us in running_us.items():
            per_group.setdefault((kind_key, f"running: {g}"), []).append(us)
    summary = {
        key: {g: round(common.median(v)) for (k, g), v in sorted(per_group.items()) if k == key}
        for key in dict.fromkeys(k for k, _ in per_group)
    }
    print(json.dumps({"bench": "unit_cpu-summary", "us_per_task_median": summary}, indent=2))


if __name__ == "__main__":
    main()
