"""The preflight refuses a wrong inventory before any host is changed, naming the variable.

Runs playbooks/preflight.yml against a 4-host inventory of the lab's shape whose hosts are all
the controller itself (ansible_connection=local; it runs Debian 12 like the hosts), with the lab's
worker instances (read from inventories/lab, one source of truth) and one fault at a time.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAB_VARS = REPO / "inventories" / "lab" / "group_vars"


def base_inventory() -> dict[str, Any]:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    workers = yaml.safe_load((LAB_VARS / "celery_workers.yml").read_text())
    common = yaml.safe_load((LAB_VARS / "all" / "celery.yml").read_text())
    return {
        "all": {
            "vars": {
                **local,
                **common,
                # Throwaway values: this inventory never reaches a real host.
                "redis_celery_password": "preflight-redis",
                "redis_admin_password": "preflight-redis-admin",
                "postgresql_app_password": "preflight-pg",
                "postgresql_migrator_password": "preflight-pg-migrator",
                "flower_basic_auth_password": "preflight-flower",
                "redis_monitor_password": "preflight-redis-monitor",
                "prometheus_web_password": "preflight-prometheus",
                "alertmanager_web_password": "preflight-alertmanager",
                "celery_exporter_password": "preflight-celery-exporter",
                # Each service's own Redis login (roles/redis README).
                "celery_beat_redis_password": "preflight-redis-beat",
                "celery_exporter_redis_password": "preflight-redis-exporter",
                "flower_redis_password": "preflight-redis-flower",
                "cluster_address": "10.99.0.1",
            },
            "children": {
                "redis_servers": {"hosts": {"data1": None}},
                "postgresql_servers": {"hosts": {"data1": None}},
                "celery_workers": {"hosts": {"worker1": None, "worker2": None}, "vars": workers},
                "celery_beat": {"hosts": {"ops1": None}},
                "flower": {"hosts": {"ops1": None}},
                "celery_exporter": {"hosts": {"ops1": None}},
                "prometheus": {"hosts": {"ops1": None}},
                "alertmanager": {"hosts": {"ops1": None}},
                "celery_app": {
                    "children": {
                        "celery_workers": None,
                        "celery_beat": None,
                        "flower": None,
                        "celery_exporter": None,
                    }
                },
            },
        }
    }


def preflight(
    tmp_path: Path, inventory: dict[str, Any], facts: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """One run of playbooks/preflight.yml; `facts`: a fact cache to read and fill (jsonfile)."""
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    (tmp_path / "library").mkdir(exist_ok=True)
    (tmp_path / "library" / "other_os_facts.py").write_text(OTHER_OS_FACTS)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LIBRARY": str(tmp_path / "library"),
    }
    if facts is not None:
        env.update(ANSIBLE_CACHE_PLUGIN="jsonfile", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(facts))
    return subprocess.run(
        ["ansible-playbook", "-i", str(path), str(REPO / "playbooks" / "preflight.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )


# The fact module of one host (ansible_facts_modules instead of setup): it reports that host as
# Ubuntu 24.04, the way setup would on such a host (the controller runs Debian 12).
OTHER_OS_FACTS = """#!/usr/bin/python3
import json
facts = {"distribution": "Ubuntu", "distribution_major_version": "24",
         "distribution_version": "24.04"}
print(json.dumps({"changed": False, "ansible_facts": facts}))
"""


def unsupported_os(inv: dict[str, Any]) -> None:
    inv["all"]["children"]["celery_workers"]["hosts"]["worker2"] = {
        "ansible_facts_modules": ["other_os_facts"]
    }


def workers(inv: dict[str, Any]) -> list[dict[str, Any]]:
    return inv["all"]["children"]["celery_workers"]["vars"]["celery_worker_instances"]


def set_all(inv: dict[str, Any], **values: Any) -> None:
    inv["all"]["vars"].update(values)


def two_beats(inv: dict[str, Any]) -> None:
    inv["all"]["children"]["celery_beat"]["hosts"]["worker1"] = None


def no_beat(inv: dict[str, Any]) -> None:
    inv["all"]["children"]["celery_beat"]["hosts"] = {}


def unknown_queue(inv: dict[str, Any]) -> None:
    workers(inv)[0]["queues"] = ["pricing", "invoices"]


def unconsumed_queue(inv: dict[str, Any]) -> None:
    for inst in workers(inv):
        inst["queues"] = [q for q in inst["queues"] if q != "maintenance"]


def zero_concurrency(inv: dict[str, Any]) -> None:
    workers(inv)[0]["concurrency"] = 0


def duplicate_names(inv: dict[str, Any]) -> None:
    workers(inv)[1]["name"] = workers(inv)[0]["name"]


def unknown_pool(inv: dict[str, Any]) -> None:
    workers(inv)[0]["pool"] = "gevent"


def soft_above_hard(inv: dict[str, Any]) -> None:
    workers(inv)[0].update(soft_time_limit=400, time_limit=300)


def visibility_too_short(inv: dict[str, Any]) -> None:
    # A retried task waits up to 32 s unacked before it runs: time_limit + 35 is the least.
    workers(inv)[2].update(visibility_timeout=1830)


def one_name_two_visibilities(inv: dict[str, Any]) -> None:
    # worker2's pricing gets its own list with a longer limit: two sweeps of unacked:pricing.
    instances = copy.deepcopy(workers(inv))
    instances[0]["time_limit"] = 100
    inv["all"]["children"]["celery_workers"]["hosts"]["worker2"] = {
        "celery_worker_instances": instances
    }


def misspelt_key(inv: dict[str, Any]) -> None:
    workers(inv)[2]["time_limt"] = 1800  # the instance would silently keep the default


def solo_pool(inv: dict[str, Any]) -> None:
    workers(inv)[0]["pool"] = "solo"


def one_worker_host_for_a_queue(inv: dict[str, Any]) -> None:
    inv["all"]["children"]["celery_workers"]["hosts"] = {"worker1": None}


CASES = {
    "missing redis secret": (
        lambda i: set_all(i, redis_celery_password=""),
        "redis_celery_password",
    ),
    "missing flower password": (
        lambda i: set_all(i, flower_basic_auth_password=""),
        "flower_basic_auth_password must be set",
    ),
    "beat on two hosts": (two_beats, "Group celery_beat has 2 host(s)"),
    "no beat": (no_beat, "Group celery_beat has 0 host(s)"),
    "unknown queue": (unknown_queue, "celery_worker_instances[0] (name pricing)"),
    "queue nobody consumes": (unconsumed_queue, "Queue maintenance is consumed on 0 host(s)"),
    "queue on one host only": (one_worker_host_for_a_queue, "celery_worker_queue_min_hosts (2)"),
    "concurrency 0": (zero_concurrency, "concurrency >= 1 (got 0)"),
    "duplicate names": (duplicate_names, "with unique names"),
    "unknown pool": (unknown_pool, "(got gevent)"),
    "soft limit above hard": (soft_above_hard, "soft_time_limit (400) < time_limit (300)"),
    "visibility timeout too short for the limit": (
        visibility_too_short,
        "visibility_timeout (1830",
    ),
    "one instance name, two visibility timeouts": (
        one_name_two_visibilities,
        "Instance pricing has the visibility timeouts 90, 145",
    ),
    "solo pool (no time limits)": (solo_pool, "(got solo)"),
    "misspelt instance key": (misspelt_key, "unknown keys time_limt"),
    "redis appendfsync no": (
        lambda i: set_all(i, redis_appendfsync="no"),
        "redis_appendfsync must be always or everysec",
    ),
    "public flower address": (
        lambda i: set_all(i, flower_address="8.8.8.8"),
        "flower_address 8.8.8.8 is not a private",
    ),
    "flower extra login with a colon and a short password": (
        lambda i: set_all(i, flower_extra_logins=[{"name": "a:b", "password": "short"}]),
        "flower_extra_logins: each entry needs a unique name",
    ),
    "missing postgresql secret": (
        lambda i: set_all(i, postgresql_app_password=""),
        "postgresql_app_password",
    ),
    "missing beat redis login": (
        lambda i: set_all(i, celery_beat_redis_password=""),
        "celery_beat_redis_password must be set",
    ),
    "missing exporter redis login": (
        lambda i: set_all(i, celery_exporter_redis_password="short"),  # noqa: S106 (too short)
        "celery_exporter_redis_password must be set",
    ),
    "missing flower redis login": (
        lambda i: set_all(i, flower_redis_password=""),
        "flower_redis_password must be set",
    ),
    "missing migrations secret": (
        lambda i: set_all(i, postgresql_migrator_password=""),
        "postgresql_migrator_password",
    ),
    "no host may log in as the tasks": (
        lambda i: set_all(i, postgresql_app_client_groups=["task_hosts"]),
        "postgresql_app_client_groups (['task_hosts']) hold no host",
    ),
    "redis host not in the inventory": (
        lambda i: set_all(i, celery_app_redis_host="cache9"),
        "celery_app_redis_host (cache9)",
    ),
    "postgresql host not in the inventory": (
        lambda i: set_all(i, celery_app_postgresql_host="db9"),
        "celery_app_postgresql_host (db9)",
    ),
    "unsupported OS": (unsupported_os, "worker2 runs Ubuntu 24.04"),
    "flower port out of range": (
        lambda i: set_all(i, flower_port=0),
        "flower_port",
    ),
    "missing redis admin secret (the data roles' own preflight)": (
        lambda i: set_all(i, redis_admin_password=""),
        "redis_admin_password must be set",
    ),
    "TLS without its CA": (
        lambda i: set_all(i, celery_app_redis_tls=True),
        "celery_app_tls_ca_src must name the CA",
    ),
    "result store that does not evict": (
        lambda i: set_all(i, redis_results_maxmemory_policy="noeviction"),
        "redis_results_maxmemory_policy must be allkeys-lru",
    ),
    "redis memory limits above half of the host's memory": (
        lambda i: set_all(i, redis_maxmemory="64gb", redis_results_maxmemory="64gb"),
        "redis_maxmemory (64gb) + redis_results_maxmemory (64gb) = 131072 MiB",
    ),
    "result store on the broker's port": (
        lambda i: set_all(i, redis_results_port=6379),
        "the ports Redis listens on must differ",
    ),
    "missing prometheus password": (
        lambda i: set_all(i, prometheus_web_password=""),
        "prometheus_web_password and alertmanager_web_password must be set",
    ),
    "no alert recipient": (
        lambda i: set_all(i, celery_app_alert_recipients=[]),
        "alertmanager_recipients (default: celery_app_alert_recipients)",
    ),
    "missing celery exporter password": (
        lambda i: set_all(i, celery_exporter_password="x" * 8),  # too short
        "celery_exporter_password must be set",
    ),
    "missing redis monitor password": (
        lambda i: set_all(i, redis_monitor_password=""),
        "redis_monitor_password must be set",
    ),
    "redis port out of range": (
        lambda i: set_all(i, celery_app_redis_port=70000),
        "celery_app_redis_port",
    ),
}


def inventory_of(case: str) -> dict[str, Any]:
    inv = copy.deepcopy(base_inventory())
    if case:
        CASES[case][0](inv)
    return inv


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case's ansible-playbook run ("" is the lab shape), four at a time: each run is one
    short process, mostly Python starting up, and one after the other they took 4 minutes. The lab
    shape runs first and leaves the hosts' facts in a cache each other case starts from a copy of
    (ansible.cfg's smart gathering then skips the fact modules: a third of a failing run's CPU);
    the unsupported OS case gathers its own (its worker2 reports another OS)."""
    dirs = {case: tmp_path_factory.mktemp("preflight") for case in ["", *CASES]}
    runs = {"": preflight(dirs[""], inventory_of(""), facts=dirs[""] / "facts")}

    def run(case: str) -> subprocess.CompletedProcess[str]:
        facts = dirs[case] / "facts"
        if case != "unsupported OS" and (dirs[""] / "facts").is_dir():
            shutil.copytree(dirs[""] / "facts", facts)
        return preflight(dirs[case], inventory_of(case), facts=facts)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(run, case) for case in sorted(CASES)}
        runs.update({case: future.result() for case, future in futures.items()})
    return runs


def test_the_lab_shape_passes(outcomes: dict[str, Any]) -> None:
    out = outcomes[""]
    assert out.returncode == 0, out.stdout[-3000:]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wrong_inventory_is_refused_naming_the_variable(
    outcomes: dict[str, Any], case: str
) -> None:
    message = CASES[case][1]
    out = outcomes[case]
    assert out.returncode != 0, f"{case}: accepted\n{out.stdout[-2000:]}"
    assert message in out.stdout, f"{case}: no {message!r} in\n{out.stdout[-3000:]}"
