"""The HTTP job API (python -m app.api) as deployed: a real server process over HTTPS (a
self-signed certificate, verified by the client), the real broker, result store and worker.
docs/API.md is the contract checked here."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ENV, ROOT, WORK, taskctl
from services import (
    acl_refusals,
    apply_role_acl,
    assert_refused,
    certificates,
    free_port,
    wait_for,
)
from test_liveness import NotifySocket

from app import jobs

TOKEN = "web-token-" + uuid.uuid4().hex
OTHER_TOKEN = "other-token-" + uuid.uuid4().hex
MAX_BODY = 65536
SPEC = {
    "material": "AL6061",
    "quantity": 10,
    "dimensions": {"length_mm": 100, "width_mm": 50, "height_mm": 10},
}
WEB_TASKS = [
    "pricing.calculate_bulk_pricing",
    "pricing.recalculate_customer_quotes",
    "notifications.send_sms",
    "notifications.send_bulk_notifications",
]


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Api:
    port: int
    env: dict[str, str]
    ca: Path
    notify: NotifySocket
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: WORK / f"api-{uuid.uuid4().hex[:6]}.log")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.api"],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env=self.env,
            cwd=ROOT,
        )

    def wait_ready(self) -> None:
        self.notify.wait("READY=1", 90)
        wait_for(lambda: self.call("GET", "/healthz", token=None)[0] in (200, 503), 30, "api")

    def connection(self, timeout: float = 10) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.ca))  # verified, as clients do
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=context)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = TOKEN,
        raw: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        conn = self.connection()
        try:
            sent = {"Content-Type": "application/json", **(headers or {})}
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            text = response.read()
            answer = json.loads(text) if "json" in response.getheader("content-type", "") else text
            return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
        finally:
            conn.close()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def make_api(tmp: Path, name: str, **env: str) -> Api:
    tmp.mkdir(parents=True, exist_ok=True)
    certificates(tmp)  # the server's, issued by a CA the client verifies it with
    crt, key = tmp / "server.crt", tmp / "server.key"
    clients = tmp / "api-clients.json"
    clients.write_text(
        json.dumps(
            {
                "web": {"token_sha256": sha(TOKEN), "tasks": WEB_TASKS},
                "other": {"token_sha256": sha(OTHER_TOKEN), "tasks": ["data.backup_pricing_data"]},
            }
        )
    )
    clients.chmod(0o640)
    port = free_port()
    notify = NotifySocket(tmp / "notify.sock")
    full_env = {
        **os.environ,
        **ENV,
        "APP_API_PORT": str(port),
        "APP_API_TLS_CERT": str(crt),
        "APP_API_TLS_KEY": str(key),
        "APP_API_CLIENTS_FILE": str(clients),
        "APP_API_MAX_BODY_BYTES": str(MAX_BODY),
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "2000000",  # a WATCHDOG=1 every 0.5 s
        **env,
    }
    return Api(port, full_env, tmp / "ca.crt", notify)


@pytest.fixture(scope="module")
def servers(redis_server: Any) -> Iterator[tuple[Api, Api]]:
    """The API on the tests' broker, and one whose broker port is closed (started together)."""
    up = make_api(WORK / "api-up", "up")
    closed = free_port()
    down = make_api(
        WORK / "api-down",
        "down",
        APP_BROKER_URL=f"redis://127.0.0.1:{closed}/0",
        APP_RESULT_BACKEND=f"redis://127.0.0.1:{closed}/1",
    )
    for api in (up, down):
        api.start()
    try:
        for api in (up, down):
            api.wait_ready()
        yield up, down
    finally:
        for api in (up, down):
            api.stop()
            api.notify.close()


@pytest.fixture
def api(servers: tuple[Api, Api]) -> Api:
    return servers[0]


def wait_job(api: Api, job_id: str, timeout: float = 60) -> tuple[dict[str, Any], set[str]]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = api.call("GET", f"/v1/jobs/{job_id}")
        assert status == 200, body
        seen.add(body["status"])
        if body["status"] in ("completed", "failed"):
            return body, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done after {timeout} s; seen {seen}")


def test_submit_runs_on_a_worker_and_reads_completed(api: Api, alive: Any) -> None:
    status, _, body = api.call(
        "POST", "/v1/jobs", {"task": "pricing.calculate_bulk_pricing", "args": [[SPEC]]}
    )
    assert status == 202, body
    assert body["status"] == "queued" and uuid.UUID(body["job_id"])
    assert body["status_url"].endswith(f"/v1/jobs/{body['job_id']}")
    done, _ = wait_job(api, body["job_id"])
    assert done["status"] == "completed", done
    assert done["result"]["successful"] == 1 and done["result"]["results"][0]["result"]


def test_bulk_pricing_reports_progress_then_completes(api: Api, alive: Any) -> None:
    """The guide's flow: the list of specifications, PROGRESS {done, total} published by the
    running task (seen on the result store's channel), completed with every item priced."""
    store = redis.Redis.from_url(ENV["APP_RESULT_BACKEND"])
    pubsub = store.pubsub()
    pubsub.psubscribe("celery-task-meta-*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"  # listening before the submit
    specs = [{**SPEC, "quantity": 1 + i} for i in range(300)] + [{**SPEC, "material": "NOPE"}]
    status, _, body = api.call("POST", "/v1/bulk-pricing", specs)
    assert status == 202, body
    job_id = body["job_id"]
    done, _seen = wait_job(api, job_id)
    assert done["status"] == "completed", done
    result = done["result"]
    assert result["total_processed"] == 301 and result["successful"] == 300
    assert "unknown material 'NOPE'" in result["results"][300]["error"]
    states = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "pmessage" and job_id in message["channel"].decode():
            states.append(json.loads(message["data"]))
    pubsub.close()
    progress = [s["result"] for s in states if s["status"] == "PROGRESS"]
    assert progress, [s["status"] for s in states]
    assert progress[0] == {"done": 1, "total": 301}
    assert all(0 < p["done"] < 301 for p in progress) and len(progress) <= 25, progress


def test_progress_reads_the_same_in_the_api_and_taskctl(api: Api, redis_server: Any) -> None:
    from app.celery_app import celery_app

    job_id = str(uuid.uuid4())
    celery_app.backend.store_result(job_id, {"done": 3, "total": 10}, jobs.PROGRESS)
    status, _, body = api.call("GET", f"/v1/jobs/{job_id}")
    assert (status, body) == (200, {"job_id": job_id, "status": "progress", "done": 3, "total": 10})
    shown = json.loads(taskctl("status", job_id).stdout)
    assert shown["state"] == "PROGRESS" and shown["status"] == "progress"
    assert (shown["done"], shown["total"]) == (3, 10)


def test_progress_is_throttled_and_never_skipped() -> None:
    class Task:
        class request:
            id, is_eager = "t", False

        def __init__(self) -> None:
            self.states: list[dict[str, int]] = []

        def update_state(self, state: str, meta: dict[str, int]) -> None:
            self.states.append(meta)

    now = [0.0]
    small = Task()
    p = jobs.Progress(small, 2, clock=lambda: now[0])
    for i in range(2):
        p.advance(i)
    assert small.states == [{"done": 1, "total": 2}]  # after the first item, not the last
    big = Task()
    p = jobs.Progress(big, 1000, clock=lambda: now[0])
    for i in range(1000):
        p.advance(i)  # no time passes: the 5 % steps only
    assert [s["done"] for s in big.states] == [1, *range(51, 1000, 50)]
    slow = Task()
    p = jobs.Progress(slow, 1000, clock=lambda: now[0])
    for i in range(10):
        now[0] += 0.6  # each item slower than the interval
        p.advance(i)
    assert [s["done"] for s in slow.states] == list(range(1, 10))


def test_failed_job_reads_a_readable_error(api: Api, alive: Any) -> None:
    missing = str(uuid.uuid4())
    status, _, body = api.call(
        "POST",
        "/v1/jobs",
        {"task": "pricing.recalculate_customer_quotes", "args": [missing, "AL6061"]},
    )
    assert status == 202, body
    done, _ = wait_job(api, body["job_id"])
    assert done["status"] == "failed", done
    assert done["error"] == f"NotFoundError: unknown customer {missing}", done
    assert "Traceback" not in json.dumps(done)


def test_unknown_id_reads_pending_and_health_and_docs(api: Api) -> None:
    status, _, body = api.call("GET", f"/v1/jobs/{uuid.uuid4()}")
    assert status == 200 and body["status"] == "pending" and set(body) == {"job_id", "status"}
    status, _, body = api.call("GET", "/healthz", token=None)
    assert (status, body) == (200, {"broker": "ok"})
    status, headers, page = api.call("GET", "/docs", token=None)
    assert status == 200 and b"openapi.json" in page, headers
    status, _, spec = api.call("GET", "/openapi.json", token=None)
    assert {"/v1/jobs", "/v1/bulk-pricing", "/v1/jobs/{job_id}", "/healthz"} <= set(spec["paths"])


def test_authentication_and_allow_list(api: Api) -> None:
    job = {"task": "notifications.send_sms", "args": ["+4915112345678", "hi"]}
    for token in (None, "wrong", ""):
        status, headers, body = api.call("POST", "/v1/jobs", job, token=token)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), body
        assert body["field"] == "Authorization"
    assert api.call("GET", f"/v1/jobs/{uuid.uuid4()}", token=None)[0] == 401
    status, _, body = api.call("POST", "/v1/jobs", job, token=OTHER_TOKEN)
    assert status == 403 and body["field"] == "task" and "may not submit" in body["message"]
    status, _, body = api.call("POST", "/v1/bulk-pricing", [SPEC], token=OTHER_TOKEN)
    assert status == 403 and "pricing.calculate_bulk_pricing" in body["message"]


@pytest.mark.parametrize(
    ("body", "status", "field", "text"),
    [
        ({"task": "no.such.task"}, 422, "task", "unknown task 'no.such.task'"),
        ({"task": "ops.probe", "args": ["x"]}, 422, "task", "unknown task 'ops.probe'"),
        ({"args": []}, 422, "task", "Field required"),
        ({"task": "notifications.send_sms", "args": "x"}, 422, "args", "valid list"),
        ({"task": "notifications.send_sms", "args": ["+49151"]}, 422, "args", "'message'"),
        ({"task": "notifications.send_sms", "args": ["123", "hi"]}, 422, "to", "E.164"),
        (
            {"task": "pricing.calculate_bulk_pricing", "args": ["nope"]},
            422,
            "specifications",
            "expected a list",
        ),
        ({"task": "notifications.send_sms", "surprise": 1}, 422, "surprise", "Extra inputs"),
        (
            {"task": "notifications.send_sms", "args": ["+4915112345678", "hi"], "countdown": 1e6},
            422,
            "countdown",
            "beyond the longest accepted delay of 3510 s",
        ),
        (
            {
                "task": "notifications.send_sms",
                "args": ["+4915112345678", "hi"],
                "eta": "2999-01-01T00:00:00Z",
            },
            422,
            "eta",
            "beyond the longest accepted delay",
        ),
    ],
)
def test_bad_input_names_the_field(
    api: Api, body: dict[str, Any], status: int, field: str, text: str
) -> None:
    got, _, answer = api.call("POST", "/v1/jobs", body)
    assert (got, answer["field"]) == (status, field), answer
    assert text in answer["message"], answer


def test_malformed_json_wrong_type_and_bad_batches(api: Api) -> None:
    status, _, body = api.call("POST", "/v1/jobs", raw=b'{"task": ')
    assert status == 400 and body["error"] == "malformed_json" and body["field"] == "body"
    status, _, body = api.call(
        "POST", "/v1/jobs", raw=b"task=x", headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and body["field"] == "Content-Type"
    status, _, body = api.call("POST", "/v1/bulk-pricing", [SPEC, 5])
    assert status == 422 and body["field"] == "specifications[1]", body
    status, _, body = api.call("POST", "/v1/bulk-pricing", [])
    assert status == 422 and body["field"] == "specifications", body
    status, _, body = api.call("POST", "/v1/bulk-pricing", [{}] * 1001)
    assert status == 422 and "1 to 1000" in body["message"], body


def test_body_over_the_limit_is_refused_before_parsing(api: Api) -> None:
    big = b'{"task": "' + b"x" * MAX_BODY + b'"}'
    status, _, body = api.call("POST", "/v1/jobs", raw=big)
    assert status == 413 and "APP_API_MAX_BODY_BYTES" in body["message"], body

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield b'{"task": "'
        for _ in range(MAX_BODY // 8192 + 2):
            yield b"x" * 8192

    status, _, body = api.call("POST", "/v1/jobs", raw=chunks())
    assert status == 413, body
    assert api.call("POST", "/v1/jobs", raw=b"{" + b" " * (MAX_BODY - 2) + b"}")[0] == 422


def test_broker_down_is_a_503_within_5_s(servers: tuple[Api, Api]) -> None:
    down = servers[1]
    job = {"task": "notifications.send_sms", "args": ["+4915112345678", "hi"]}
    for method, path, body in (
        ("POST", "/v1/jobs", job),
        ("POST", "/v1/bulk-pricing", [SPEC]),
        ("GET", f"/v1/jobs/{uuid.uuid4()}", None),
        ("GET", "/healthz", None),
    ):
        started = time.monotonic()
        status, _, answer = down.call(method, path, body)
        assert status == 503 and time.monotonic() - started < 5, (path, answer)
        assert "Traceback" not in json.dumps(answer)
    # Its watchdog still gets WATCHDOG=1: the server answers (a restart cannot bring the broker).
    down.notify.wait("WATCHDOG=1", 10)
    # uvicorn ends by re-raising the SIGTERM it handled: systemd counts that as a clean stop.
    assert down.stop() in (0, -signal.SIGTERM)
    down.notify.wait("STOPPING=1", 5)
    assert "Traceback" not in down.log.read_text()


def test_clients_file_errors_stop_the_start(tmp_path: Path) -> None:
    from app.api import StartError, load_clients

    known = {"pricing.calculate_bulk_pricing"}
    good = {"token_sha256": sha("t"), "tasks": ["pricing.calculate_bulk_pricing"]}
    cases: list[tuple[Any, str]] = [
        (None, "cannot read it"),
        ("{not json", "not valid JSON"),
        ([], "expected a JSON object of clients"),
        ({"web": {**good, "token_sha256": "ABC"}}, "token_sha256 must be the lowercase hex"),
        ({"web": {**good, "tasks": "x"}}, "tasks must be a list"),
        ({"web": {**good, "tasks": ["ops.probe"]}}, "unknown or not callable task(s) ops.probe"),
        ({"web": {**good, "token": "t"}}, "unknown field(s) token"),
        ({"a": good, "b": good}, "same token as another client"),
    ]
    for content, message in cases:
        path = tmp_path / "clients.json"
        path.unlink(missing_ok=True)
        if content is not None:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(StartError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_clients(str(path), known)
    path.write_text(json.dumps({"web": good}))
    assert load_clients(str(path), known)["web"].tasks == frozenset(good["tasks"])
    done = subprocess.run(
        [sys.executable, "-m", "app.api"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **ENV, "APP_API_CLIENTS_FILE": str(tmp_path / "missing.json")},
        cwd=ROOT,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("app.api: APP_API_CLIENTS_FILE=") and "Traceback" not in done.stderr
    assert "No such file" in lines[-1], done.stderr


def test_settings_and_taskctl_refuse_a_delay_beyond_the_visibility_timeout(database: Any) -> None:
    from app.settings import Settings, SettingsError

    s = Settings.from_env()
    assert s.max_countdown() == 3600 - 90
    done = taskctl("submit", "notifications.send_sms", "--countdown", "3511", "--args", "[]")
    assert done.returncode == 2 and "beyond the longest accepted delay of 3510 s" in done.stderr
    for env, variable in (
        ({"APP_API_TLS_CERT": "/x.crt"}, "APP_API_TLS_CERT and APP_API_TLS_KEY"),
        ({"APP_API_PORT": "70000"}, "APP_API_PORT"),
        ({"APP_API_MAX_BODY_BYTES": "x"}, "APP_API_MAX_BODY_BYTES"),
    ):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with pytest.raises(SettingsError, match=variable):
                Settings.from_env()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def test_the_redis_roles_producer_acl_is_enough_and_no_more(
    redis_server: Any, alive: Any, tmp_path: Path
) -> None:
    """The API logged in as the redis role's `producer` user (its rules, from
    roles/redis/defaults/main.yml, applied to this Redis): a job is queued, runs and reads
    completed, with no command refused meanwhile; the same login cannot take a message, delete,
    scan, read the workers' unacked hashes or another key, nor broadcast to the workers."""
    import secrets

    admin = redis.Redis.from_url(ENV["APP_BROKER_URL"])
    password = secrets.token_hex(16)
    apply_role_acl(admin, "producer", password)
    api = make_api(
        tmp_path / "api-producer",
        "producer",
        APP_REDIS_USERNAME="producer",
        APP_REDIS_PASSWORD=password,
    )
    api.start()
    try:
        api.wait_ready()
        status, _, body = api.call(
            "POST", "/v1/jobs", {"task": "pricing.calculate_bulk_pricing", "args": [[SPEC]]}
        )
        assert status == 202, body
        done, _ = wait_job(api, body["job_id"])
        assert done["status"] == "completed", done
        assert acl_refusals(admin, "producer") == []
        producer = redis.Redis(
            host="127.0.0.1", port=redis_server.port, username="producer", password=password
        )
        assert_refused(
            producer,
            ("PUBLISH", "/0.celery.pidbox", "x"),
            ("RPOP", "pricing"),
            ("BRPOP", "pricing", "1"),
            ("DEL", "pricing"),
            ("SCAN", "0"),
            ("KEYS", "*"),
            ("HGETALL", "unacked"),
            ("GET", "health:incident"),
            ("FLUSHDB",),
        )
        assert producer.execute_command("PUBLISH", "/0.celeryev/task.sent", "{}") >= 0
    finally:
        api.stop()
        api.notify.close()
        admin.execute_command("ACL", "DELUSER", "producer")
