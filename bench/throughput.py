#!/usr/bin/env python3
"""Benchmark 3a: throughput through the deployed fleet, systemd units versus workers by hand.

    .venv/bin/python bench/throughput.py [--lab bench] [--runs 3] [--kinds noop,probe,mix]

The lab must be deployed (bench/converge.py --keep). Each burst fills the queues while the workers
are stopped, then starts them on every worker host at once: tasks/s from the first task's start to
the last one's end (the fleet's rate, not ops1's sending rate). Between the sends and the start it
waits for the machine to settle (common.settle: CPUs under 20 % busy, 90 s at most; the wait is
`settle_s` in each line), and every other run takes the modes in the reverse order. Kinds: `noop`
(celery.accumulate), `probe` (ops.probe: two PostgreSQL writes), `mix`
(pricing.calculate_bulk_pricing of 50 specifications + notifications.send_low_stock_alerts, one
mail to the SMTP sink). Modes, in turn within each run: `systemd` (celery-workers.target: the
deployed units) and `hand` (the unit's ExecStart command line with /etc/celery/app.env and
worker-NAME.env, as user celery in /var/lib/celery, umask 0027, outside systemd and its sandbox,
output to a file), and `systemd-nojournal` (a diagnostic: the units with a drop-in in /run sending
their stdout/stderr to /dev/null instead of the journal), and `systemd-nowatchdog` (the units with
a drop-in turning sd_notify and the watchdog off: Type=exec, WatchdogSec=0, so app/liveness.py's
thread never starts), and `systemd-nomonitoring` (the units, with every metrics unit of every host
stopped for the burst: Prometheus, Alertmanager, the node, Redis, PostgreSQL and Celery exporters),
and `systemd-before` (the units running the app as before issue 17's cuts, through
bench/variants/variant_app.py: every delivery counted in Redis, Celery's "received" line at INFO).
Ratio systemd/hand: target >= 0.95; systemd/systemd-nowatchdog: what the watchdog costs;
systemd/systemd-nomonitoring: what the metrics cost (target >= 0.98); systemd/systemd-before: what
issue 17's cuts gained.
`--modes systemd,systemd-nomonitoring` runs only those. `--ops1-cpu 1` runs every process of ops1
on CPU 1 and every other host's on the others for the whole run (as if ops1, with Prometheus and
the Celery exporter, were a machine of its own), and gives every host every CPU back at the end.
After the metrics units start again, the next burst waits MONITORING_WARMUP_S (their start and
first round of scrapes are not their running cost).
"""

from __future__ import annotations

import json
import time

import common

COUNTS = {"noop": 4000, "probe": 2000, "mix": 1000}
# By hand: the unit's ExecStart, its environment files, user, directory and umask; no sandbox;
# stdout and stderr to a file (as `nohup` would), where the unit sends them to the journal.
HAND_START = """
cd /var/lib/celery
for i in pricing notifications batch; do
  (set -a; . /etc/celery/app.env; . /etc/celery/worker-$i.env; set +a; umask 0027
   exec setsid timeout 3600 runuser -u celery -- /opt/celery/current/bin/celery \\
     --app=app.celery_app worker --hostname=$i@%h --queues=$CELERY_WORKER_QUEUES \\
     --logfile=/var/log/celery/$i.log $CELERY_WORKER_OPTS) </dev/null >/tmp/bench-hand-$i.out 2>&1 &
  echo $! > /run/bench-hand-$i.pid
done
"""
HAND_STOP = """
for i in pricing notifications batch; do
  pid=$(cat /run/bench-hand-$i.pid 2>/dev/null) || continue
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f /run/bench-hand-$i.pid
done
"""
UNITS_STOP, UNITS_START = common.UNITS_STOP, common.UNITS_START  # appendfsync.py imports them here
# Diagnostics, each a drop-in in /run removed after the burst: the units without their
# stdout/stderr in the journal (the app logs to --logfile only, app/logs.py: it should match
# systemd), and the units without sd_notify and the watchdog.
DROPIN = "/run/systemd/system/celery-worker@.service.d/zz-bench.conf"


def dropin(settings: str) -> str:
    return (
        f"mkdir -p {DROPIN.rsplit('/', 1)[0]}; printf '[Service]\\n{settings}' > {DROPIN}; "
        "systemctl daemon-reload\n"
    )


NOJOURNAL = dropin("StandardOutput=null\\nStandardError=null\\n")
# The units running the app as it was before issue 17's cuts (bench/variants/variant_app.py,
# BENCH_ON): every delivery counted in Redis, Celery's "received" line at INFO. printf's `%%`.
BEFORE_CUTS = dropin(
    f"Environment=PYTHONPATH={common.VARIANTS_REMOTE} BENCH_ON=guard-every,received\\n"
    "ExecStart=\\n"
    "ExecStart=/opt/celery/current/bin/celery --app=variant_app:celery_app worker"
    " --hostname=%%i@%%%%h --queues=${CELERY_WORKER_QUEUES}"
    " --logfile=/var/log/celery/%%i.log $CELERY_WORKER_OPTS\\n"
)
NOWATCHDOG = dropin("Type=exec\\nWatchdogSec=0\\nNotifyAccess=none\\n")
UNJOURNAL = f"rm -f {DROPIN}; systemctl daemon-reload\n"
# The metrics units active on a host (playbooks/monitoring.yml), stopped for a burst and started
# again after it; the list is kept in /run between the two.
MONITORING_UNITS = "'prometheus*' 'celery-exporter*' 'pki-expiry-metrics*'"
MONITORING_STOP = (
    f"systemctl list-units --state=active --plain --no-legend {MONITORING_UNITS}"
    " | awk '{print $1}' > /run/bench-monitoring.units; "
    "systemctl stop $(cat /run/bench-monitoring.units)\n"
)
MONITORING_START = (
    "[ -s /run/bench-monitoring.units ] && systemctl start $(cat /run/bench-monitoring.units); "
    "rm -f /run/bench-monitoring.units\n"
)
# After they start again: their start (the exporter's imports and first poll, Prometheus's first
# round of scrapes, 15 s apart) must not land in the next burst, which measures them running.
MONITORING_WARMUP_S = 20
# mode -> (before the sends, after the sends, after the burst)
MODES = {
    "systemd": (UNITS_STOP, UNITS_START, ""),
    "hand": (UNITS_STOP + HAND_STOP, HAND_START, HAND_STOP),
    "systemd-nojournal": (UNITS_STOP + NOJOURNAL, UNITS_START, UNITS_STOP + UNJOURNAL),
    "systemd-nowatchdog": (UNITS_STOP + NOWATCHDOG, UNITS_START, UNITS_STOP + UNJOURNAL),
    "systemd-nomonitoring": (UNITS_STOP, UNITS_START, ""),
    "systemd-before": (UNITS_STOP + BEFORE_CUTS, UNITS_START, UNITS_STOP + UNJOURNAL),
}
# Modes that change every host, not only the worker hosts: (before the burst, after it).
EVERY_HOST = {"systemd-nomonitoring": (MONITORING_STOP, MONITORING_START)}


def main() -> None:
    p = common.burst_parser(__doc__, "noop,probe,mix")
    p.add_argument("--modes", default=",".join(MODES), help="of: " + ",".join(MODES))
    p.add_argument("--ops1-cpu", default="", help="ops1 on this CPU, the other hosts on the rest")
    a = p.parse_args()
    kinds = a.kinds.split(",")
    modes = {m: MODES[m] for m in a.modes.split(",")}
    common.ready_for_bursts(a.lab)
    if "systemd-before" in modes:
        common.put_variants(a.lab)
    rates: dict[tuple[str, str], list[float]] = {}
    with common.ops1_apart(a.lab, a.ops1_cpu):
        try:
            for run in range(1, min(a.runs, 20) + 1):
                for kind in kinds:
                    # Every other run in the reverse order: no mode always goes first.
                    order = list(modes.items())[:: 1 if run % 2 else -1]
                    for mode, (stop, start, after) in order:
                        count = int(COUNTS[kind] * a.scale)
                        before, after_all = EVERY_HOST.get(mode, ("", ""))
                        for host in common.every_host(a.lab) if before else []:
                            common.ssh(a.lab, host, before)
                        try:
                            r = common.held_burst(a.lab, kind, count, stop, start)
                        finally:
                            for host in common.every_host(a.lab) if after_all else []:
                                common.ssh(a.lab, host, after_all)
                            if after_all:
                                time.sleep(MONITORING_WARMUP_S)
                        for host in common.workers(a.lab) if after else []:
                            common.ssh(a.lab, host, after)
                        record = {"bench": "throughput", "run": run, "mode": mode, **r}
                        common.emit({**record, "ops1_cpu": a.ops1_cpu} if a.ops1_cpu else record)
                        rates.setdefault((kind, mode), []).append(r["tasks_per_s"])
        finally:
            for host in common.workers(a.lab):
                common.ssh(a.lab, host, HAND_STOP + UNJOURNAL + UNITS_START)
            for host in common.every_host(a.lab):
                common.ssh(a.lab, host, MONITORING_START)
    common.wait_nodes(a.lab)
    summary = {}
    for kind in kinds:
        med = {mode: common.median(rates[kind, mode]) for mode in modes}
        # name: (numerator mode, denominator mode), each given when both modes ran
        pairs = {
            "systemd_over_hand": ("systemd", "hand"),
            "nojournal_over_hand": ("systemd-nojournal", "hand"),
            "systemd_over_nowatchdog": ("systemd", "systemd-nowatchdog"),
            "systemd_over_nomonitoring": ("systemd", "systemd-nomonitoring"),
            "systemd_over_before": ("systemd", "systemd-before"),
        }
        ratios = {
            name: round(med[top] / med[bottom], 3)
            for name, (top, bottom) in pairs.items()
            if top in med and bottom in med
        }
        summary[kind] = {
            **{f"{mode}_tasks_per_s": v for mode, v in med.items()},
            **ratios,
            "runs": len(rates[kind, next(iter(modes))]),
        }
    print(json.dumps({"bench": "throughput-summary", "load": common.load(), **summary}, indent=2))


if __name__ == "__main__":
    main()
