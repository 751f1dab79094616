#!/usr/bin/env python3
"""Benchmarks 1 and 2: cold converge from bare hosts, 2 versus 6 worker hosts, then the second run.

    .venv/bin/python bench/converge.py [--runs 3] [--labs bench,bench6] [--keep]

Each run, for each lab in turn (interleaved, so both see the same machine load): `lab.py down`,
`lab.py up` (fresh hosts from the cached image), `ansible-playbook site.yml` (cold), then
`site.yml` again (idempotent: its time and changed count), each with `cpu_busy`, the share of the
machine's CPU time (all cores, /proc/stat) spent busy meanwhile: near 1.0, the run waits for CPU,
not for the network or the hosts. One JSON line per run, then medians.
`--keep` leaves the last lab `bench` deployed for the other benchmarks; `--labs bench6,benchc`
(benchc: the 4-host topology under another lab name) runs while `bench` stays deployed.
"""

from __future__ import annotations

import argparse
import json

import common


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--labs", default="bench,bench6")
    p.add_argument("--keep", action="store_true", help="leave `bench` up and deployed")
    a = p.parse_args()
    labs = a.labs.split(",")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in labs}
    for run in range(1, min(a.runs, 10) + 1):
        for name in labs:
            common.lab_down(name)
            up = common.lab_up(name)
            cold = common.playbook(name, "site.yml")
            second = common.playbook(name, "site.yml")
            row = {
                "bench": "converge",
                "lab": name,
                "worker_hosts": len(common.workers(name)),
                "run": run,
                "lab_up_s": round(up, 1),
                "cold_s": cold["seconds"],
                "cold_load": cold["load"],
                "cold_cpu_busy": cold["cpu_busy"],
                "second_s": second["seconds"],
                "second_changed": second["changed"],
                "second_load": second["load"],
                "second_cpu_busy": second["cpu_busy"],
                "ratio": round(second["seconds"] / cold["seconds"], 3),
            }
            common.emit(row)
            results[name].append(row)
            if not (a.keep and name == "bench" and run == a.runs):
                common.lab_down(name)
    summary = {
        name: {
            "runs": len(rows),
            "cold_s": common.median([r["cold_s"] for r in rows]),
            "second_s": common.median([r["second_s"] for r in rows]),
            "second_changed_max": max(r["second_changed"] for r in rows),
            "second_over_cold": common.median([r["ratio"] for r in rows]),
            "cold_cpu_busy": common.median([r["cold_cpu_busy"] for r in rows]),
        }
        for name, rows in results.items()
    }
    two = next((n for n in ("bench", "benchc") if n in summary), None)
    if two and "bench6" in summary:
        summary["bench6_over_2_workers_cold"] = {
            "ratio": round(summary["bench6"]["cold_s"] / summary[two]["cold_s"], 3)
        }
    print(json.dumps({"bench": "converge-summary", **summary}, indent=2))


if __name__ == "__main__":
    main()
