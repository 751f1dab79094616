#!/usr/bin/env python3
"""Benchmark: Redis's appendfsync `always` against `everysec`, side by side in one run.

    .venv/bin/python bench/appendfsync.py [--lab bench] [--runs 3] [--kinds noop,mix]

The lab must be deployed (bench/converge.py --keep, or `make lab` with --lab lab). Before each
burst the broker's appendfsync is set with CONFIG SET (admin user, TLS port), then the burst runs
as in throughput.py (queues filled while the workers are stopped, then every instance started at
once: tasks/s of the fleet, every pop, unacked record and ack going through the AOF). The mode
of the inventory (redis_appendfsync) is put back at the end. Ratio always/everysec is printed.
"""

from __future__ import annotations

import json

import common
from throughput import COUNTS, UNITS_START, UNITS_STOP

MODES = ("everysec", "always")


def set_mode(name: str, mode: str) -> None:
    out = common.redis_admin(name, common.BROKER_PORT, f"CONFIG SET appendfsync {mode}")
    assert out.strip() == "OK", out


def main() -> None:
    p = common.burst_parser(__doc__, "noop,mix")
    p.add_argument("--restore", default="always", help="the inventory's redis_appendfsync")
    a = p.parse_args()
    kinds = a.kinds.split(",")
    common.ready_for_bursts(a.lab)
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        for run in range(1, min(a.runs, 10) + 1):
            for kind in kinds:
                for mode in MODES:
                    set_mode(a.lab, mode)
                    r = common.held_burst(
                        a.lab, kind, int(COUNTS[kind] * a.scale), UNITS_STOP, UNITS_START
                    )
                    common.emit({"bench": "appendfsync", "run": run, "mode": mode, **r})
                    rates.setdefault((kind, mode), []).append(r["tasks_per_s"])
    finally:
        set_mode(a.lab, a.restore)
        for host in common.workers(a.lab):
            common.ssh(a.lab, host, UNITS_START)
    summary = {}
    for kind in kinds:
        med = {mode: common.median(rates[kind, mode]) for mode in MODES}
        summary[kind] = {
            **{f"{mode}_tasks_per_s": v for mode, v in med.items()},
            "always_over_everysec": round(med["always"] / med["everysec"], 3),
            "runs": len(rates[kind, "always"]),
        }
    print(json.dumps({"bench": "appendfsync-summary", "load": common.load(), **summary}, indent=2))


if __name__ == "__main__":
    main()
