#!/usr/bin/env python3
"""Benchmark 2 on a lab that is already deployed: `site.yml` again, --runs times, and where it goes.

    .venv/bin/python bench/rerun.py [--lab bench] [--runs 3] [--top 15]

Each run: wall time, changed count (target 0), the load. With Ansible's profile_tasks and
profile_roles callbacks: the slowest tasks and the time per role, medians over the runs.
bench/converge.py measures the second run right after each cold one (and the ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import re

import common

TASK = re.compile(r"^(.+?) -+ (\d+\.\d+)s$")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", default="bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    os.environ["ANSIBLE_CALLBACKS_ENABLED"] = (
        "ansible.posix.profile_tasks,ansible.posix.profile_roles"
    )
    os.environ["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "all"
    seconds: list[float] = []
    tasks: dict[str, list[float]] = {}
    for run in range(1, min(a.runs, 10) + 1):
        r = common.playbook(a.lab, "site.yml")
        common.emit({"bench": "rerun", "run": run, **{k: r[k] for k in ("seconds", "changed")}})
        seconds.append(r["seconds"])
        for m in map(TASK.match, r["output"].splitlines()):
            if m:
                tasks.setdefault(m[1].strip(), []).append(float(m[2]))
    top = sorted(tasks.items(), key=lambda kv: -common.median(kv[1]))[: a.top]
    out = {
        "bench": "rerun-summary",
        "load": common.load(),
        "seconds": common.median(seconds),
        "slowest_s": {name: common.median(v) for name, v in top},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
