#!/usr/bin/env python3
"""What the metrics units cost a data host's fsyncs, on the lab's one disk.

    bench/fsync_probe.py [--lab bench] [--units "'prometheus.service'"] [--cycles 6]

Redis acknowledges a write after its fsync (`redis_appendfsync: always`) and PostgreSQL a commit
after its WAL's, so a data host runs at the speed of its fsyncs. The lab's hosts share one
ext4 filesystem: an fsync there commits the journal, which waits for the data other files
allocated meanwhile (data=ordered), so another host's writes can slow it, even on another CPU.
This writes 128 bytes and fsyncs them in a loop, in a file of data1's root (as Redis appends
to its AOF), while the units are frozen and thawed in turn (off, on, on, off... every
`--period` s, common.signal_units); per state: fsyncs/s, their latency (p50, p90, p99, mean) and
the disk's writes (/proc/diskstats). Runs on an idle lab (no burst), every host on both CPUs
(no `--ops1-cpu`): only the units' own writes differ between the states.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import common
import throughput


def disk_writes(device: str) -> tuple[int, int]:
    """Writes completed and sectors written so far on `device` (/proc/diskstats)."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if f[2] == device:
            return int(f[7]), int(f[9])
    raise RuntimeError(f"no {device} in /proc/diskstats")


def device_of(path: Path) -> str:
    """The block device (its /proc/diskstats name) holding `path`."""
    dev = os.stat(path).st_dev
    return Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name


def probe(path: Path, seconds: float) -> list[float]:
    """Append 128 bytes and fsync, in a loop for `seconds`: each fsync's latency (s)."""
    out, end = [], time.monotonic() + seconds
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        while time.monotonic() < end:
            os.write(fd, b"x" * 127 + b"\n")
            t = time.perf_counter()
            os.fsync(fd)
            out.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return out


def state_summary(lat: list[float], seconds: float, ios: int, sectors: int) -> dict[str, Any]:
    q = statistics.quantiles(lat, n=100)
    return {
        "fsyncs_per_s": round(len(lat) / seconds, 1),
        "p50_ms": round(q[49] * 1e3, 3),
        "p90_ms": round(q[89] * 1e3, 3),
        "p99_ms": round(q[98] * 1e3, 3),
        "mean_ms": round(statistics.fmean(lat) * 1e3, 3),
        "disk_writes_per_s": round(ios / seconds, 1),
        "disk_kb_per_s": round(sectors * 0.5 / seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", default="bench")
    ap.add_argument("--host", default="data1", help="the probe's file is in this host's root")
    ap.add_argument("--units", default=throughput.MONITORING_UNITS, help="fnmatch on NAME.service")
    ap.add_argument("--period", type=float, default=10.0)
    ap.add_argument("--cycles", type=int, default=6, help="cycles of off, on, on, off")
    ap.add_argument("--cpu", default="0", help="the probe runs on this CPU")
    a = ap.parse_args()
    common.exit_on_hangup()  # the final thaw runs
    os.sched_setaffinity(0, {int(c) for c in a.cpu.split(",")})
    hdir = common.REPO / ".lab" / a.lab / "hosts" / a.host
    # Through the host's overlay root, as Redis writes; its upper directory names the disk.
    path, device = hdir / "root" / "var" / "tmp" / "fsync-probe", device_of(hdir / "upper")
    hosts, patterns = common.every_host(a.lab), shlex.split(a.units)
    per_state: dict[bool, dict[str, Any]] = {
        s: {"lat": [], "s": 0.0, "ios": 0, "sectors": 0} for s in (False, True)
    }
    try:
        for k in range(4 * a.cycles):
            on = k % 4 in (1, 2)  # off, on, on, off
            sig = signal.SIGCONT if on else signal.SIGSTOP
            if not common.signal_units(a.lab, hosts, patterns, sig):
                raise RuntimeError(f"no process of {a.units} on {hosts}")
            w0, t0 = disk_writes(device), time.monotonic()
            lat = probe(path, a.period)
            w1, t1 = disk_writes(device), time.monotonic()
            acc = per_state[on]
            acc["lat"] += lat
            acc["s"] += t1 - t0
            acc["ios"] += w1[0] - w0[0]
            acc["sectors"] += w1[1] - w0[1]
    finally:
        path.unlink(missing_ok=True)
        common.signal_units(a.lab, hosts, patterns, signal.SIGCONT)
    got = {
        ("on" if s else "off"): state_summary(v["lat"], v["s"], v["ios"], v["sectors"])
        for s, v in per_state.items()
    }
    common.emit(
        {
            "bench": "fsync_probe",
            "units": a.units,
            "device": device,
            "period_s": a.period,
            "cycles": a.cycles,
            **got,
            "mean_latency_on_over_off": round(got["on"]["mean_ms"] / got["off"]["mean_ms"], 3),
        }
    )


if __name__ == "__main__":
    main()
