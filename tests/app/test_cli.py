"""taskctl as an operator runs it: a subprocess with the APP_* environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import redis
from conftest import ENV, QUEUES, taskctl, worker_argv
from services import wait_for


def test_submit_status_and_result(alive: Any) -> None:
    token = uuid.uuid4().hex
    sent = taskctl(
        "submit", "ops.probe", "--args", json.dumps([token]), "--kwargs", '{"sleep_seconds": 0}'
    )
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    uuid.UUID(task_id)
    result = taskctl("result", task_id, "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token"] == token
    status = json.loads(taskctl("status", task_id).stdout)
    assert status["state"] == "SUCCESS" and status["name"] == "ops.probe"
    assert status["queue"] == "default" and status["worker"].startswith("testworker@")
    # Extended results name the task and its worker, never its arguments (app.results).
    stored = redis.Redis.from_url(ENV["APP_RESULT_BACKEND"]).get(f"celery-task-meta-{task_id}")
    meta = json.loads(stored or b"{}")
    assert meta["name"] == "ops.probe" and "args" not in meta and "kwargs" not in meta, meta


def test_submit_to_an_explicit_queue_and_a_failing_task(alive: Any) -> None:
    sent = taskctl("submit", "ops.probe", "--args", '["q"]', "--queue", "maintenance")
    result = taskctl("result", sent.stdout.strip(), "--wait")
    assert json.loads(result.stdout)["queue"] == "maintenance"
    bad = taskctl("submit", "pricing.calculate_bulk_pricing", "--args", '["nope"]')
    failed = taskctl("result", bad.stdout.strip(), "--wait")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["state"] == "FAILURE"
    assert "expected a list" in json.loads(failed.stdout)["error"]
    assert taskctl("status", bad.stdout.strip()).returncode == 1


def test_usage_errors_exit_2_with_a_clear_message(database: Any) -> None:
    cases = [
        (("submit", "no.such.task"), "unknown task 'no.such.task'"),
        (("submit", "ops.probe", "--args", "[oops"), "--args: not valid JSON"),
        (("submit", "ops.probe", "--args", '{"a": 1}'), "--args: expected a JSON array"),
        (("submit", "ops.probe", "--queue", "nowhere"), "--queue: 'nowhere' is not one of"),
        (("db", "restore-pricing", "/nonexistent.json.gz"), "no such file"),
    ]
    for args, message in cases:
        done = taskctl(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr


def test_queues_ping_tasks_and_health(alive: Any) -> None:
    queues = json.loads(taskctl("queues", "--json").stdout)
    assert set(queues["queues"]) == {
        "default",
        "pricing",
        "notifications",
        "data_processing",
        "maintenance",
    }
    assert all(isinstance(n, int) for n in queues["queues"].values())
    ping = taskctl("ping", "--json")
    assert ping.returncode == 0 and json.loads(ping.stdout)["workers"][0].startswith("testworker@")
    tasks = taskctl("tasks").stdout
    assert "pricing.calculate_bulk_pricing" in tasks and "data_processing" in tasks
    health = taskctl("health")
    assert health.returncode == 0, health.stdout
    assert json.loads(health.stdout)["status"] == "healthy"
    sick = taskctl("health", "--min-disk-free-percent", "100")
    assert sick.returncode == 1 and json.loads(sick.stdout)["status"] == "unhealthy"


def test_unreachable_broker_is_one_clear_line(database: Any) -> None:
    import os
    import subprocess

    from conftest import BIN, ENV

    env = {**os.environ, **ENV, "APP_BROKER_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [str(BIN / "taskctl"), "queues"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "taskctl: queues failed: ConnectionError" in done.stderr
    assert "Traceback" not in done.stderr


def test_drain_stops_an_instance_consuming_and_waits_out_its_reserved(
    alive: Any, tmp_path: Path
) -> None:
    """A second worker, drained: it answers but consumes nothing; every probe goes elsewhere."""
    from app.celery_app import celery_app

    node = f"drainee@{socket.gethostname()}"
    with (tmp_path / "drainee.log").open("wb") as log:
        drainee = subprocess.Popen(
            worker_argv("drainee", 1),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ENV},
        )
        try:
            wait_for(lambda: celery_app.control.ping([node], timeout=1.0), 60, node, interval=0.5)
            done = taskctl("drain", "drainee", "--timeout", "20")
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            assert len(report["drained"][node]) == 5 and report["reserved_left"] == {node: 0}
            assert report["not_answering"] == []
            queues = celery_app.control.inspect([node], timeout=2.0).active_queues()
            assert queues == {node: []}, queues
            sent = [celery_app.send_task("ops.probe", [uuid.uuid4().hex]) for _ in range(10)]
            workers = {r.get(timeout=60)["worker"] for r in sent}
            assert node not in workers and workers, workers
            gone = taskctl("drain", "nobody@nowhere", "--timeout", "1")
            assert gone.returncode == 0 and json.loads(gone.stdout)["not_answering"] == [
                "nobody@nowhere"
            ]
        finally:
            drainee.send_signal(signal.SIGTERM)
            drainee.wait(30)


def test_gate_opens_once_the_instances_consume_and_serve(alive: Any) -> None:
    """taskctl gate (the rolling playbooks' health gate): 0 once every NAME@HOST answers,
    consumes its queues and a probe on each completes; 1 with what is missing; 2 on bad input."""
    host = socket.gethostname()
    opened = taskctl("gate", f"testworker={QUEUES}")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    report = json.loads(opened.stdout)
    assert report["answered"] == [f"testworker@{host}"]
    assert sorted(report["probes"]) == sorted(QUEUES.split(","))
    assert set(report["probes"].values()) == {f"testworker@{host}"}
    shut = taskctl("gate", "nobody=pricing", "--reply-timeout", "1")
    assert shut.returncode == 1, shut.stdout + shut.stderr
    assert json.loads(shut.stdout) == {"not_consuming": {f"nobody@{host}": ["pricing"]}}
    bad = taskctl("gate", "testworker=invoices")
    assert bad.returncode == 2 and "unknown queue(s) invoices" in bad.stderr, bad.stderr


def test_revoke_drops_a_task_before_it_runs(alive: Any) -> None:
    token = uuid.uuid4().hex
    # 12 s: the revoke (a second taskctl process) must reach the worker before the ETA, also on
    # a machine loaded by a Molecule converge beside the tests (4 s was not enough there).
    sent = taskctl("submit", "ops.probe", "--args", json.dumps([token]), "--countdown", "12")
    task_id = sent.stdout.strip()
    revoked = taskctl("revoke", task_id)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"] == task_id
    state = wait_for(
        lambda: (s := json.loads(taskctl("status", task_id).stdout)["state"]) != "PENDING" and s,
        30,
        "the revoked task's state",
    )
    assert state == "REVOKED"
    assert token not in json.dumps(json.loads(taskctl("failed", "--json").stdout))


def test_purge_asks_then_empties_one_queue() -> None:
    """On a broker database no worker reads: three messages wait in `default`."""
    env = {"APP_BROKER_URL": ENV["APP_BROKER_URL"].rsplit("/", 1)[0] + "/9"}
    for i in range(3):
        assert taskctl("submit", "ops.probe", "--args", f'["purge-{i}"]', env=env).returncode == 0
    queues = json.loads(taskctl("queues", "--json", env=env).stdout)
    assert queues["queues"]["maintenance"] == 0 and queues["queues"]["default"] == 3, queues
    unknown = taskctl("purge", "invoices", "--yes", env=env)
    assert unknown.returncode == 2 and "unknown queue 'invoices'" in unknown.stderr
    unconfirmed = taskctl("purge", "default", env=env)  # no terminal to ask on: refused
    assert unconfirmed.returncode == 2 and "confirm with --yes" in unconfirmed.stderr
    assert json.loads(taskctl("queues", "--json", env=env).stdout)["queues"]["default"] == 3
    purged = taskctl("purge", "default", "--yes", env=env)
    assert purged.returncode == 0 and json.loads(purged.stdout) == {"queue": "default", "purged": 3}
    assert json.loads(taskctl("queues", "--json", env=env).stdout)["queues"]["default"] == 0


def test_failed_lists_recent_final_failures(alive: Any) -> None:
    bad = taskctl("submit", "pricing.calculate_bulk_pricing", "--args", '["nope"]')
    task_id = bad.stdout.strip()
    assert taskctl("result", task_id, "--wait").returncode == 1
    listed = wait_for(
        lambda: [f for f in json.loads(taskctl("failed", "--json").stdout) if f["id"] == task_id],
        10,
        "the failure in taskctl failed",
    )
    [failure] = listed
    assert failure["task"] == "pricing.calculate_bulk_pricing" and failure["at"]
    assert failure["error"].startswith("ValidationError: specifications")
    text = taskctl("failed", "--hours", "1")
    assert task_id in text.stdout and "failure(s) in the last 1 h" in text.stderr
