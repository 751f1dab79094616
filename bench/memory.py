#!/usr/bin/env python3
"""Benchmark 5: worker memory, idle and after 10,000 tasks, and what the per-child limits do.

    .venv/bin/python bench/memory.py [--lab bench] [--tasks 10000] [--configs shipped,...]

For each configuration (bench/configs/shipped.yml: max_tasks_per_child 1000, max_memory_per_child
256 MiB; mem-unlimited, mem-tasks100, mem-mem128), deployed with playbooks/workers.yml:
batch@worker2 is stopped, so that batch@worker1 (prefork, 2 children) runs every task; the RSS
(resident size) of its main process and children is read idle (after the restart and a
100-task warm-up), then after each quarter of --tasks `ops.probe` tasks. The lab is left on
`shipped`.
"""

from __future__ import annotations

import argparse
import json

import common

RSS = (
    "main=$(systemctl show -p MainPID --value celery-worker@batch);"
    " echo $(ps -o rss= -p $main) $(ps -o rss= --ppid $main | tr '\\n' ' ')"
)


def rss(name: str) -> dict[str, int]:
    main, *children = (int(x) for x in common.ssh(name, "worker1", RSS).split())
    return {"main_kib": main, "children_kib": sum(children), "total_kib": main + sum(children)}


def tasks(name: str, count: int) -> None:
    r = common.gen(name, "burst", "--kind", "probe", "--count", str(count), "--timeout", "1800")
    if r["ended"] != count:
        raise SystemExit(f"bench: {r['ended']} of {count} tasks ended")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", default="bench")
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--configs", default="shipped,mem-unlimited,mem-tasks100,mem-mem128")
    a = p.parse_args()
    common.prepare(a.lab)
    quarter = min(a.tasks, 100_000) // 4
    try:
        for config in a.configs.split(","):
            path = common.BENCH / "configs" / f"{config}.yml"
            common.playbook(a.lab, "playbooks/workers.yml", "-e", f"@{path}")
            common.ssh(a.lab, "worker2", "systemctl stop celery-worker@batch")
            common.gen(a.lab, "ping", "--nodes", "batch@worker1", "--timeout", "120")
            common.drain_queues(a.lab)
            tasks(a.lab, 100)
            common.emit({"bench": "memory", "config": config, "tasks": 0, **rss(a.lab)})
            for done in range(quarter, 4 * quarter + 1, quarter):
                tasks(a.lab, quarter)
                common.emit({"bench": "memory", "config": config, "tasks": done, **rss(a.lab)})
            common.ssh(a.lab, "worker2", "systemctl start celery-worker@batch")
    finally:
        common.playbook(a.lab, "playbooks/workers.yml", "-e", "@bench/configs/shipped.yml")
    print(json.dumps({"bench": "memory-summary", "load": common.load()}))


if __name__ == "__main__":
    main()
