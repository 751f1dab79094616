#!/usr/bin/env python3
"""The ceiling: redis-benchmark for the broker's raw rate on data1, and how close the fleet gets.

    .venv/bin/python bench/ceiling.py [--lab bench] [--runs 3] [--count 2000]

redis-benchmark runs on data1 against the deployed Redis (its TLS port, the CA, ACL user admin;
-c 50, -n 100000, PING/SET/GET/LPUSH/RPOP). Then a burst of `celery.accumulate` no-op tasks runs
through the fleet while Redis's `total_commands_processed` is read before and after it (redis-cli,
the password on stdin): Redis commands per task, the fleet's Redis commands/s, and that rate as a
fraction of redis-benchmark's SET rate.
"""

from __future__ import annotations

import argparse
import csv
import io
import json

import common

TLS = f"{common.REDIS_ADMIN} -p {common.BROKER_PORT}"
BENCH = (
    f'read -r pw; redis-benchmark {TLS} -a "$pw" -c 50 -n 100000 -t ping,set,get,lpush,rpop --csv'
)


def redis_benchmark(name: str) -> dict[str, float]:
    out = common.ssh(name, "data1", BENCH, stdin=common.redis_admin_password() + "\n", timeout=600)
    rows = csv.reader(io.StringIO(out))
    return {r[0]: float(r[1]) for r in rows if len(r) > 1 and r[0] != "test"}


def commands(name: str) -> int:
    out = common.redis_admin(name, common.BROKER_PORT, "INFO stats")
    line = next(x for x in out.splitlines() if x.startswith("total_commands_processed:"))
    return int(line.split(":")[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", default="bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--count", type=int, default=2000)
    a = p.parse_args()
    common.prepare(a.lab)
    common.wait_nodes(a.lab)
    sets: list[float] = []
    fleet: list[float] = []
    per_task: list[float] = []
    for run in range(1, min(a.runs, 10) + 1):
        rb = redis_benchmark(a.lab)
        common.emit({"bench": "redis-benchmark", "run": run, **rb})
        common.drain_queues(a.lab)
        before = commands(a.lab)
        r = common.gen(a.lab, "burst", "--kind", "noop", "--count", str(a.count))
        used = commands(a.lab) - before
        row = {
            "bench": "ceiling-fleet",
            "run": run,
            "tasks_per_s": r["tasks_per_s"],
            "redis_commands": used,
            "commands_per_task": round(used / r["ended"], 1),
            "redis_commands_per_s": round(used / r["seconds"]),
        }
        common.emit(row)
        sets.append(rb.get("SET", 0.0))
        fleet.append(row["redis_commands_per_s"])
        per_task.append(row["commands_per_task"])
    summary = {
        "redis_set_per_s": common.median(sets),
        "fleet_redis_commands_per_s": common.median(fleet),
        "commands_per_task": common.median(per_task),
        "fleet_over_ceiling": round(common.median(fleet) / common.median(sets), 3),
        "task_ceiling_per_s": round(common.median(sets) / common.median(per_task), 1),
    }
    print(json.dumps({"bench": "ceiling-summary", "load": common.load(), **summary}, indent=2))


if __name__ == "__main__":
    main()
