"""The data host serves the cluster: the broker and result store Redis (TLS) and PostgreSQL on its
cluster address."""

from __future__ import annotations

import re
from typing import Any

from conftest import app_python, other_host
from reliability import all_nodes

testinfra_hosts = ["data1"]


def test_data_ports_on_the_cluster_address(host: Any) -> None:
    address = host.check_output("hostname -I").split()[0]
    for port in (6380, 6382, 5432):
        assert host.socket(f"tcp://{address}:{port}").is_listening, port
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening, port


def test_postgresql_sized_for_the_pool_processes_the_workers_start(host: Any) -> None:
    """max_connections is sized from the worker instances as the worker role resolves them (one
    definition, roles/celery_worker/filter_plugins/instances.py); the count written beside it
    equals the pool processes the running instances report to Celery's `inspect stats`."""
    conf = host.file("/etc/postgresql/15/main/conf.d/50-bundle.conf").content_string
    sized = int(re.search(r"^# (\d+) worker pool processes", conf, re.MULTILINE).group(1))
    code = (
        "import json; from app.celery_app import celery_app; "
        "print(json.dumps(celery_app.control.inspect(timeout=10).stats() or {}))"
    )
    stats = app_python(other_host("ops1"), code)
    assert sorted(stats) == sorted(all_nodes()), sorted(stats)
    started = sum(int(s["pool"]["max-concurrency"]) for s in stats.values())
    assert sized == started, (sized, {n: s["pool"]["max-concurrency"] for n, s in stats.items()})
