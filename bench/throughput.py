#!/usr/bin/env python3
"""Benchmark 3a: throughput through the deployed fleet, systemd units versus workers by hand.

    .venv/bin/python bench/throughput.py [--lab bench] [--runs 3] [--kinds noop,probe,mix]

The lab must be deployed (bench/converge.py --keep, or lab.py up + site.yml with
bench/inventory/bench.yml). Each run, for each kind: a burst from ops1 through the
`celery-worker@NAME` units; then the units are stopped and the same command line (ExecStart of
celery-worker@.service, with /etc/celery/app.env and worker-NAME.env, as user celery, in
/var/lib/celery) is started by hand on the same hosts, without systemd and its sandbox, and the
same burst runs again. Ratio = by systemd / by hand (target >= 0.95).
"""

from __future__ import annotations

import argparse
import json

import common

COUNTS = {"noop": 4000, "probe": 2000, "mix": 1000}
# Started by hand: the unit's ExecStart, its environment files, user, directory and umask.
HAND_START = """
cd /var/lib/celery
for i in {instances}; do
  (set -a; . /etc/celery/app.env; . /etc/celery/worker-$i.env; set +a; umask 0027
   exec setsid timeout 3600 runuser -u celery -- /opt/celery/current/bin/celery \
     --app=app.celery_app worker --hostname=$i@%h --queues=$CELERY_WORKER_QUEUES \
     --logfile=/var/log/celery/$i.log $CELERY_WORKER_OPTS) </dev/null >/dev/null 2>&1 &
  echo $! > /run/bench-hand-$i.pid
done
"""
HAND_STOP = """
for i in {instances}; do
  pid=$(cat /run/bench-hand-$i.pid 2>/dev/null) || continue
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f /run/bench-hand-$i.pid
done
"""


def units(name: str, action: str) -> None:
    names = " ".join(f"celery-worker@{i}.service" for i in common.INSTANCES)
    for host in common.workers(name):
        common.ssh(name, host, f"systemctl {action} {names}")


def by_hand(name: str, start: bool) -> None:
    script = HAND_START if start else HAND_STOP
    for host in common.workers(name):
        common.ssh(name, host, script.format(instances=" ".join(common.INSTANCES)))


def burst(name: str, kind: str, count: int) -> dict[str, float]:
    common.drain_queues(name)
    return common.gen(name, "burst", "--kind", kind, "--count", str(count), "--timeout", "900")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", default="bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--kinds", default="noop,probe,mix")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the task counts")
    a = p.parse_args()
    kinds = a.kinds.split(",")
    common.prepare(a.lab)
    common.wait_nodes(a.lab)
    rates: dict[tuple[str, str], list[float]] = {}
    for run in range(1, min(a.runs, 10) + 1):
        for mode in ("systemd", "hand"):
            if mode == "hand":
                units(a.lab, "stop")
                by_hand(a.lab, start=True)
            try:
                common.wait_nodes(a.lab)
                for kind in kinds:
                    r = burst(a.lab, kind, int(COUNTS[kind] * a.scale))
                    common.emit({"bench": "throughput", "run": run, "mode": mode, **r})
                    rates.setdefault((kind, mode), []).append(r["tasks_per_s"])
            finally:
                if mode == "hand":
                    by_hand(a.lab, start=False)
                    units(a.lab, "start")
    common.wait_nodes(a.lab)
    summary = {}
    for kind in kinds:
        sysd, hand = common.median(rates[kind, "systemd"]), common.median(rates[kind, "hand"])
        summary[kind] = {
            "systemd_tasks_per_s": sysd,
            "hand_tasks_per_s": hand,
            "ratio": round(sysd / hand, 3),
            "runs": len(rates[kind, "systemd"]),
        }
    print(json.dumps({"bench": "throughput-summary", "load": common.load(), **summary}, indent=2))


if __name__ == "__main__":
    main()
