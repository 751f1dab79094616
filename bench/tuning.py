#!/usr/bin/env python3
"""Benchmark 3b: the guide's one-size worker configuration versus per-queue tuning, on the mix.

    .venv/bin/python bench/tuning.py [--lab bench] [--runs 3] [--configs onesize,shipped,...]

Each configuration of bench/configs/ is deployed the real way (`ansible-playbook site.yml --tags
data,workers -e @bench/configs/NAME.yml`: PostgreSQL's max_connections sized for its pool
processes, then units, env files, orphans removed, restarts),
then a burst of the mix (CPU-bound pricing + I/O-bound mail to the SMTP sink, as throughput.py:
queue filled, then the workers started) runs. Configurations are cycled run by run so that each
sees the same machine load. The lab is left on `shipped`.
"""

from __future__ import annotations

import argparse
import json

import common
import yaml


def deploy(name: str, config: str) -> list[str]:
    path = common.BENCH / "configs" / f"{config}.yml"
    # The data play too: workers.yml alone refuses more pool processes than PostgreSQL is sized for.
    r = common.playbook(name, "site.yml", "--tags", "data,workers", "-e", f"@{path}")
    common.log(f"{config} deployed in {r['seconds']} s (changed {r['changed']})")
    instances = yaml.safe_load(path.read_text())["celery_worker_instances"]
    return [i["name"] for i in instances]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", default="bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--configs", default="onesize,shipped,threads4,threads16,pricing4")
    p.add_argument("--count", type=int, default=1000)
    a = p.parse_args()
    configs = a.configs.split(",")
    common.prepare(a.lab)
    rates: dict[str, list[float]] = {c: [] for c in configs}
    try:
        for run in range(1, min(a.runs, 10) + 1):
            for config in configs:
                common.wait_nodes(a.lab, tuple(deploy(a.lab, config)))
                r = common.held_burst(a.lab, "mix", a.count, common.UNITS_STOP, common.UNITS_START)
                common.emit({"bench": "tuning", "run": run, "config": config, **r})
                rates[config].append(r["tasks_per_s"])
    finally:
        deploy(a.lab, "shipped")
    best = max(configs, key=lambda c: common.median(rates[c]))
    base = common.median(rates[configs[0]])
    summary = {
        c: {
            "tasks_per_s": common.median(rates[c]),
            f"vs_{configs[0]}": round(common.median(rates[c]) / base, 3),
            "runs": len(rates[c]),
        }
        for c in configs
    }
    out = {"bench": "tuning-summary", "load": common.load(), "winner": best, **summary}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
