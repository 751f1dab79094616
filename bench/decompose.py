#!/usr/bin/env python3
"""Issue 17: what each per-task feature costs, from bare Celery to the deployed worker.

    .venv/bin/python bench/decompose.py [--lab bench] [--runs 3] [--count 3000] [--kind noop|mix]
        [--variants deployed,bare,...] [--chart docs/img/decompose.png] [--from-log FILE]

The lab must be deployed (bench/converge.py --keep). The fleet's worker units are stopped for the
whole run and started again at the end. Each variant, run after run in turn (interleaved): ops1
sends `count` tasks (no-op `celery.accumulate`, or the mix) to `default`; data1 moves the list
aside (RENAME); each worker host starts the variant as a transient unit `bench-variant` (the
batch instance's options from worker-batch.env: 2 prefork processes per host, 4 in all, as user
celery with app.env), and once both answer a ping data1 moves the list back and times its drain
(queue and the instance's unacked hash empty). Measured per task: the rate (and per process),
the workers' CPU (/proc: the main process, its reaped and its live children), and on each Redis
(the broker and the result store) the commands and CPU (INFO).

Variants: `bare` (bench/variants/bare_app.py: Celery's defaults + acks_late, prefetch 1,
reject_on_worker_lost, results ignored, no events, WARNING, no limits nor recycling) and
`bare-plain` (the same without TLS), `deployed` (the app as shipped, through
bench/variants/variant_app.py with nothing off), `before` (the deployed app as before issue 17's
cuts: every delivery counted, the "received" line at INFO), and `deployed` with one feature off:
`-tls`, `-results`, `-extended`, `-events`, `-guard`, `-dedup`, `-infolog` (--loglevel=WARNING),
`-structlog` (stdlib formatter), `-limits` (no time limits), `-maxtasks` (no child recycling),
and `-all` (all of them but TLS). A feature's cost is the deployed figure minus the variant's,
run by run (paired medians). `--kind mix` takes no bare variant; `--from-log` redraws the
summary and chart from an earlier run's output.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common

REMOTE_DIR = common.VARIANTS_REMOTE
DEPLOYED = "variant_app:celery_app"
OFF_ALL = "results,extended,events,guard,dedup,structlog"
# name -> (app, loglevel, BENCH_OFF, BENCH_DROP); BENCH_ON=guard-every,received for `before`
VARIANTS: dict[str, tuple[str, str, str, str]] = {
    "bare": ("bare_app:app", "WARNING", "", "limits,maxtasks"),
    "bare-plain": ("bare_app:app", "WARNING", "tls", "limits,maxtasks"),
    "before": (DEPLOYED, "INFO", "", ""),
    "deployed": (DEPLOYED, "INFO", "", ""),
    "-tls": (DEPLOYED, "INFO", "tls", ""),
    "-results": (DEPLOYED, "INFO", "results", ""),
    "-extended": (DEPLOYED, "INFO", "extended", ""),
    "-events": (DEPLOYED, "INFO", "events", ""),
    "-guard": (DEPLOYED, "INFO", "guard", ""),
    "-dedup": (DEPLOYED, "INFO", "dedup", ""),
    "-infolog": (DEPLOYED, "WARNING", "", ""),
    "-structlog": (DEPLOYED, "INFO", "structlog", ""),
    "-limits": (DEPLOYED, "INFO", "", "limits"),
    "-maxtasks": (DEPLOYED, "INFO", "", "maxtasks"),
    "-all": (DEPLOYED, "WARNING", OFF_ALL, "limits,maxtasks"),
}
UNIT = "bench-variant"
PROCESSES_PER_HOST = 2  # the batch instance's --concurrency in the lab (checked at start)
START = (
    f"systemctl stop {UNIT} 2>/dev/null; systemctl reset-failed {UNIT} 2>/dev/null; "
    ": > /var/log/celery/bench.log; chown celery:celery /var/log/celery/bench.log; "
    f"systemd-run --quiet --unit={UNIT} --property=User=celery --property=Group=celery "
    "--property=WorkingDirectory=/var/lib/celery --property=UMask=0027 "
    "--property=EnvironmentFile=/etc/celery/app.env "
    "--property=EnvironmentFile=/etc/celery/worker-batch.env "
    f"--setenv=PYTHONPATH={REMOTE_DIR} --setenv=BENCH_OFF={{off}} --setenv=BENCH_DROP={{drop}} "
    "--setenv=BENCH_ON={on} "
    f"{REMOTE_DIR}/run-variant.sh {{app}} {{level}}"
)
# The unit's CPU time in clock ticks: the main process with its reaped children (recycled pool
# processes) and the live children (/proc/PID/stat utime stime cutime cstime; the lab's legacy
# cgroups keep no usage for a transient unit).
CPU = (
    f"main=$(systemctl show -p MainPID --value {UNIT}); "
    'for p in $main $(pgrep -P "$main"); do sed "s/.*) //" /proc/$p/stat; done'
    " | awk '{t += $12 + $13 + $14 + $15} END {print t}'"
)
TICK_NS = 10_000_000  # USER_HZ 100
STOP = f"systemctl stop {UNIT}; systemctl reset-failed {UNIT} 2>/dev/null; true"
# On data1 (the admin login on stdin): Redis's commands and CPU, the list put back, its drain.
REDIS = f"redis-cli --no-auth-warning {common.REDIS_ADMIN}"
B, R = common.BROKER_PORT, common.RESULTS_PORT
BP, RP = common.BROKER_PLAIN_PORT, common.RESULTS_PLAIN_PORT
DRAIN = f"""
read -r REDISCLI_AUTH; export REDISCLI_AUTH
B="{REDIS} -p {B}"; R="{REDIS} -p {R}"
stats() {{ $1 INFO all | tr -d '\\r' | awk -F: '/^total_commands_processed:/{{c=$2}}
  /^used_cpu_sys:/{{s=$2}} /^used_cpu_user:/{{u=$2}} END{{printf "%d %.6f", c, s+u}}'; }}
set -- $(stats "$B") $(stats "$R")
t0=$(date +%s.%N)
$B RENAME bench:hold default >/dev/null
n=1
while [ "$n" != 0 ]; do
  n=$($B EVAL "return redis.call('LLEN', KEYS[1]) + redis.call('HLEN', KEYS[2])" 2 \\
      default unacked:batch)
  [ "$n" = 0 ] || sleep 0.02
done
t1=$(date +%s.%N)
set -- "$@" $(stats "$B") $(stats "$R")
awk -v t0="$t0" -v t1="$t1" -v a="$*" 'BEGIN {{ split(a, v, " ");
  printf "{{\\"seconds\\": %.3f, \\"broker_commands\\": %d, ", t1 - t0, v[5] - v[1];
  printf "\\"broker_cpu_s\\": %.6f, ", v[6] - v[2];
  printf "\\"results_commands\\": %d, \\"results_cpu_s\\": %.6f}}\\n", v[7] - v[3], v[8] - v[4] }}'
"""
# `tls` variants: each Redis also listens on its plain port for the run, the
# firewall open to them; closed again at the end (tls_off.py rewrites the URLs).
PLAIN_OPEN = f"""
read -r REDISCLI_AUTH; export REDISCLI_AUTH
{REDIS} -p {B} CONFIG SET port {BP} && {REDIS} -p {R} CONFIG SET port {RP}
nft insert rule inet firewall input tcp dport '{{ {BP}, {RP} }}' accept comment bench-plain
"""
PLAIN_CLOSE = f"""
read -r REDISCLI_AUTH; export REDISCLI_AUTH
{REDIS} -p {B} CONFIG SET port 0; {REDIS} -p {R} CONFIG SET port 0
for h in $(nft -a list chain inet firewall input | awk '/bench-plain/ {{print $NF}}'); do
  nft delete rule inet firewall input handle "$h"
done
"""


def on_workers(lab: str, command: str) -> list[str]:
    with ThreadPoolExecutor() as pool:
        return list(pool.map(lambda h: common.ssh(lab, h, command), common.workers(lab)))


def cpu_ns(lab: str) -> int:
    return sum(int(x.strip() or 0) * TICK_NS for x in on_workers(lab, CPU))


def one(lab: str, name: str, count: int, kind: str) -> dict[str, Any]:
    app, level, off, drop = VARIANTS[name]
    # Only `default`: the fleet is stopped, beat's entries pile up in the other queues.
    if not common.drain_queues(lab, ("default",)):
        raise SystemExit("bench: `default` still has messages after 300 s")
    sent = common.gen(
        lab, "send", "--kind", kind, "--count", str(count), "--queue", "default", timeout=600
    )
    common.redis_admin(lab, B, "RENAME default bench:hold")
    on = "guard-every,received" if name == "before" else ""
    on_workers(lab, START.format(app=app, level=level, off=off, drop=drop, on=on))
    try:
        nodes = [f"bench@{h}" for h in common.workers(lab)]
        got = common.gen(lab, "ping", "--nodes", ",".join(nodes), "--timeout", "120")
        if got["missing"]:
            raise SystemExit(f"bench: {name}: no answer from {got['missing']}")
        time.sleep(2)  # the pool's children started and idle
        cpu0 = cpu_ns(lab)
        drained = json.loads(
            common.ssh(lab, "data1", DRAIN, stdin=common.redis_admin_password() + "\n").strip()
        )
        cpu = cpu_ns(lab) - cpu0
    finally:
        on_workers(lab, STOP)
    processes = PROCESSES_PER_HOST * len(common.workers(lab))
    rate = sent["sent"] / drained["seconds"]
    return {
        "variant": name,
        "kind": kind,
        "tasks": sent["sent"],
        "seconds": round(drained["seconds"], 3),
        "tasks_per_s": round(rate, 1),
        "per_process_per_s": round(rate / processes, 1),
        "worker_cpu_us_per_task": round(cpu / 1000 / sent["sent"], 1),
        "broker_commands_per_task": round(drained["broker_commands"] / sent["sent"], 2),
        "results_commands_per_task": round(drained["results_commands"] / sent["sent"], 2),
        "redis_cpu_us_per_task": round(
            (drained["broker_cpu_s"] + drained["results_cpu_s"]) * 1e6 / sent["sent"], 1
        ),
    }


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per variant; each feature's cost as the median over runs of the paired difference
    (deployed minus the variant in the same run: the machine's load drifts between runs)."""
    first = next(iter(results.values()))[0]
    keys = [k for k, v in first.items() if isinstance(v, float) and k != "seconds"]
    med = {n: {k: common.median([r[k] for r in rs]) for k in keys} for n, rs in results.items()}
    summary: dict[str, Any] = {"runs": len(next(iter(results.values()))), "variants": med}
    if "deployed" in results:
        dep = results["deployed"]

        def pairs(name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
            return list(zip(dep, results[name], strict=True))  # run by run

        def paired(name: str, key: str) -> float:
            return common.median([d[key] - v[key] for d, v in pairs(name)])

        summary["cost_worker_cpu_us_per_task"] = {
            n: paired(n, "worker_cpu_us_per_task") for n in results if n != "deployed"
        }
        summary["cost_redis_cpu_us_per_task"] = {
            n: paired(n, "redis_cpu_us_per_task") for n in results if n != "deployed"
        }
        if "bare" in results:
            summary["deployed_over_bare_per_process"] = common.median(
                [d["tasks_per_s"] / b["tasks_per_s"] for d, b in pairs("bare")]
            )
        if "before" in results:
            summary["deployed_over_before"] = common.median(
                [d["tasks_per_s"] / b["tasks_per_s"] for d, b in pairs("before")]
            )
    return summary


# A feature's name in the chart, by variant: what switching it off removes.
FEATURES = {
    "bare": "all of it (deployed - bare Celery)",
    "before": "issue 17's cuts (before - deployed)",
    "-results": "results (SET + PUBLISH)",
    "-tls": "TLS to both Redis servers",
    "bare-plain": "all of it, and TLS (deployed - bare-plain)",
    "-extended": "result_extended",
    "-events": "task events",
    "-guard": "redelivery guard (as now)",
    "-dedup": "deduplication",
    "-infolog": "INFO lines (WARNING instead)",
    "-structlog": "structlog vs stdlib",
    "-limits": "time limits",
    "-maxtasks": "child recycling (1000)",
    "-all": "every switch off at once",
}


def chart(summary: dict[str, Any], path: Path) -> None:
    """A horizontal bar chart (PNG): what each feature costs per no-op task, the workers' CPU
    and Redis's CPU stacked (paired medians; a negative figure is noise, drawn as nothing)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=15)
    worker, redis = summary["cost_worker_cpu_us_per_task"], summary["cost_redis_cpu_us_per_task"]
    rows = [
        (FEATURES.get(n, n), -w if n == "before" else w, -redis[n] if n == "before" else redis[n])
        for n, w in worker.items()
    ]
    top = max(max(w, 0) + max(r, 0) for _, w, r in rows) or 1.0
    width, label_w, bar_h, pad = 1100, 300, 24, 8
    scale = (width - label_w - 260) / top
    height = 70 + len(rows) * (bar_h + pad)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    title = (
        f"Cost per no-op task, us of CPU: workers (orange) + Redis (blue); paired medians of "
        f"{summary['runs']} runs; bench/decompose.py"
    )
    draw.text((10, 10), title, fill="black", font=font)
    for i, (label, w, r) in enumerate(rows):
        y = 40 + i * (bar_h + pad)
        x1 = label_w + int(max(w, 0) * scale)
        x2 = x1 + int(max(r, 0) * scale)
        draw.text((10, y + 4), label, fill="black", font=font)
        draw.rectangle([label_w, y, x1, y + bar_h], fill="#d9822b")
        draw.rectangle([x1, y, x2, y + bar_h], fill="#4a7ab5")
        draw.text((x2 + 8, y + 4), f"{w:.0f} + {r:.0f} us", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def from_log(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The runs recorded in an earlier run's output (its JSON lines)."""
    results: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if line.startswith('{"bench": "decompose"'):
            row = json.loads(line)
            results.setdefault(row["variant"], []).append(row)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", default="bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--kind", choices=("noop", "mix"), default="noop")
    p.add_argument("--variants", default=",".join(VARIANTS), help="of: " + ",".join(VARIANTS))
    p.add_argument("--chart", default="", help="write the bar chart (PNG) there")
    p.add_argument("--from-log", default="", help="no run: the summary and chart of this output")
    a = p.parse_args()
    if a.from_log:
        report(from_log(Path(a.from_log)), a.chart)
        return
    names = a.variants.split(",")
    if unknown := set(names) - VARIANTS.keys():
        raise SystemExit(f"bench: unknown variants {sorted(unknown)}")
    lab = a.lab
    opts = common.ssh(lab, "worker1", ". /etc/celery/worker-batch.env; echo $CELERY_WORKER_OPTS")
    if f"--concurrency={PROCESSES_PER_HOST} " not in opts + " " or "--pool=prefork" not in opts:
        raise SystemExit(f"bench: the batch instance is not prefork x{PROCESSES_PER_HOST}: {opts}")
    if a.kind == "mix" and any(n.startswith("bare") for n in names):
        raise SystemExit("bench: bare Celery has no mix tasks: no bare variant with --kind mix")
    if a.kind == "mix":
        common.prepare(lab)  # the demo data and the SMTP sinks the mix's tasks use
    common.put(lab, "ops1", common.BENCH / "loadgen.py", "/root/loadgen.py")
    common.put_variants(lab)
    plain = any("tls" in VARIANTS[n][2] for n in names)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    on_workers(lab, common.UNITS_STOP)
    try:
        if plain:
            common.ssh(lab, "data1", PLAIN_OPEN, stdin=common.redis_admin_password() + "\n")
        for run in range(1, min(a.runs, 10) + 1):
            for name in names:
                row = one(lab, name, a.count, a.kind)
                common.emit({"bench": "decompose", "run": run, **row})
                results[name].append(row)
    finally:
        if plain:
            common.ssh(
                lab, "data1", PLAIN_CLOSE, stdin=common.redis_admin_password() + "\n", check=False
            )
        on_workers(lab, STOP + "; " + common.UNITS_START)
    common.wait_nodes(lab)
    report(results, a.chart)


def report(results: dict[str, list[dict[str, Any]]], chart_path: str) -> None:
    summary = summarize(results)
    print(json.dumps({"bench": "decompose-summary", "load": common.load(), **summary}, indent=2))
    if chart_path:
        chart(summary, Path(chart_path))


if __name__ == "__main__":
    main()
