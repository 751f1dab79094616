"""playbooks/workers.yml run alone with more pool processes than PostgreSQL was sized for: it stops
before any worker host changes, naming the running max_connections and what to run.

Without the check the new instances start and their tasks fail under load with "remaining
connection slots are reserved" (seen in bench/tuning.py, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conftest import run_playbook

testinfra_hosts = ["worker1"]

# 2 x 46 pool processes: far beyond the scenario's max_connections (48, host_vars/data1.yml).
TOO_MANY = [
    {"name": "pricing", "queues": ["pricing"], "pool": "prefork", "concurrency": 40},
    {
        "name": "notifications",
        "queues": ["notifications", "default"],
        "pool": "threads",
        "concurrency": 4,
    },
    {"name": "batch", "queues": ["data_processing", "maintenance"], "pool": "prefork"},
]


def test_workers_play_refuses_instances_postgresql_cannot_serve(host: Any, tmp_path: Path) -> None:
    settings = "/etc/celery/worker-pricing.env"
    before = host.file(settings).sha256sum
    pid_before = host.service("celery-worker@pricing").systemd_properties["MainPID"]
    extra = tmp_path / "instances.json"
    extra.write_text(json.dumps({"celery_worker_instances": TOO_MANY}))
    run = run_playbook("playbooks/workers.yml", "-e", f"@{extra}", timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-4000:]
    assert "runs with max_connections=" in output, output[-4000:]
    assert "Run site.yml (or playbooks/data.yml)" in output, output[-4000:]
    changed = re.findall(r"\bchanged=(\d+)", run.stdout)  # the play recap, one per host
    assert changed and set(changed) == {"0"}, output[-4000:]
    assert host.file(settings).sha256sum == before
    assert host.service("celery-worker@pricing").systemd_properties["MainPID"] == pid_before
