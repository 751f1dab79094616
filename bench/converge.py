#!/usr/bin/env python3
"""Benchmarks 1 and 2: cold converge from bare hosts, 2 versus 6 worker hosts, then the second run.

    .venv/bin/python bench/converge.py [--runs 3] [--labs bench,bench6] [--keep]
    .venv/bin/python bench/converge.py --anchor ../shared/anchors [--runs 3]

Each run, for each lab in turn (interleaved, so both see the same machine load): `lab.py down`,
`lab.py up` (fresh hosts from the cached image), `ansible-playbook site.yml` (cold), then
`site.yml` again (idempotent: its time and changed count), each with `cpu_busy`, the share of the
machine's CPU time (all cores, /proc/stat) spent busy meanwhile: near 1.0, the run waits for CPU,
not for the network or the hosts. One JSON line per run, then medians.

`--anchor DIR` measures instead the data host against the community roles (DIR holds them and
their `anchor-playbook.yml`, e.g. ../shared/anchors; nothing else needs them): lab `anchor` gets
two fresh hosts each run, anc1 converged by the anchor playbook and data1 by the bundle's data
play (bench/data_host.yml: certificates, firewall, Redis broker and result store, PostgreSQL),
one after the other in alternating order, each cold then again; the ratio is data1's over anc1's.
`--keep` leaves the last lab `bench` deployed for the other benchmarks; `--labs bench6,benchc`
(benchc: the 4-host topology under another lab name) runs while `bench` stays deployed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import common


def anchor(directory: Path, runs: int) -> None:
    """The bundle's data play and the anchor roles on fresh hosts, side by side in each run."""
    book = directory / "anchor-playbook.yml"
    if not book.is_file():
        raise SystemExit(f"bench: --anchor {directory}: no anchor-playbook.yml there")
    # side -> (playbook, inventory (None: the lab's), environment)
    sides: dict[str, tuple[str, Path | None, dict[str, str] | None]] = {
        "anchor": (
            str(book),
            common.BENCH / "inventory" / "anchor" / "anc.yml",
            {"ANSIBLE_ROLES_PATH": str(directory)},
        ),
        "bundle": ("bench/data_host.yml", None, None),
    }
    rows: list[dict[str, Any]] = []
    for run in range(1, min(runs, 10) + 1):
        common.lab_down("anchor")
        common.lab_up("anchor")
        row: dict[str, Any] = {"bench": "converge-anchor", "run": run}
        order = ["anchor", "bundle"] if run % 2 else ["bundle", "anchor"]
        for side in order:
            book_of_side, inventory, extra_env = sides[side]
            for phase in ("cold", "second"):
                out = common.playbook(
                    "anchor", book_of_side, inventory=inventory, extra_env=extra_env
                )
                row[f"{side}_{phase}_s"] = out["seconds"]
                row[f"{side}_{phase}_changed"] = out["changed"]
        row["bundle_over_anchor_cold"] = round(row["bundle_cold_s"] / row["anchor_cold_s"], 3)
        row["bundle_over_anchor_second"] = round(row["bundle_second_s"] / row["anchor_second_s"], 3)
        common.emit(row)
        rows.append(row)
        common.lab_down("anchor")
    keys = [k for k in rows[0] if k.endswith("_s") or k.startswith("bundle_over")]
    summary = {k: common.median([r[k] for r in rows]) for k in keys}
    print(json.dumps({"bench": "converge-anchor-summary", "runs": len(rows), **summary}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--labs", default="bench,bench6")
    p.add_argument("--keep", action="store_true", help="leave `bench` up and deployed")
    p.add_argument("--anchor", type=Path, help="the community roles' folder: data host vs them")
    a = p.parse_args()
    if a.anchor:
        anchor(a.anchor.resolve(), a.runs)
        return
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
