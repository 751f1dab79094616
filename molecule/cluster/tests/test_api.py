"""The job API as deployed (roles/celery_api, docs/API.md), seen from other hosts over TLS
verified against the cluster CA: the controller (the business application's place; the lab
opens the port to it) and worker1 (a cluster host).

The guide's bulk-pricing flow end to end (submitted, its progress seen, completed with every
item priced); every refusal class with the status and the field it names; 401 and 403; 503
within 5 s with the broker stopped, and back once it runs; the tokens' hashes, never the
tokens, on the API's host.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import address, address_of, other_host
from reliability import all_nodes, results_admin, wait_answering

testinfra_hosts = ["ops1"]

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
CA = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki" / "ca.crt"
PORT = 8443  # roles/celery_api/defaults/main.yml, celery_api_port
CLIENTS = ("webapp", "reporting")  # inventories/lab/group_vars/all/secrets.yml


def token(client: str) -> str:
    return (PROJECT / ".lab/secrets" / f"celery_api_token_{client}").read_text().split()[0]


@pytest.fixture(scope="module")
def base() -> str:
    # The materials the specifications name (idempotent), from a host that holds the tasks'
    # database login (ops1 runs no task and has none).
    other_host("worker1").check_output("taskctl db seed")
    return f"https://{address('ops1')}:{PORT}"


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    client: str | None = "webapp",
    raw: bytes | None = None,
    timeout: float = 10,
    bearer: str | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request, verified against the CA: status, JSON body, headers (lowercased names)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method)  # noqa: S310 (https)
    req.add_header("Content-Type", "application/json")
    if client or bearer:
        req.add_header("Authorization", f"Bearer {bearer or token(client or '')}")
    ctx = ssl.create_default_context(cafile=str(CA))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:  # noqa: S310
            return (
                resp.status,
                json.loads(resp.read() or b"{}"),
                {k.lower(): v for k, v in resp.headers.items()},
            )
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            payload = json.loads(text or b"{}")
        except ValueError:
            payload = {"raw": text.decode(errors="replace")}
        return exc.code, payload, {k.lower(): v for k, v in exc.headers.items()}


def spec(i: int) -> dict[str, Any]:
    return {
        "material": ["AL6061", "SS304", "PA12", "TI64"][i % 4],
        "quantity": 1 + i % 50,
        "dimensions": {"length_mm": 100 + i % 7, "width_mm": 40, "height_mm": 10},
        "finish": "none",
    }


def test_healthz_from_a_cluster_host_over_verified_tls() -> None:
    """worker1 reaches it by the name in its certificate chain (the cluster CA); no token needed."""
    worker1 = other_host("worker1")
    address = address_of(other_host("ops1"))
    code = (
        "import json, ssl, urllib.request; "
        "ctx = ssl.create_default_context(cafile='/etc/celery/ca.pem'); "
        f"r = urllib.request.urlopen('https://{address}:{PORT}/healthz', context=ctx, timeout=10); "
        "print(json.dumps([r.status, json.load(r)]))"
    )
    status, body = json.loads(worker1.check_output(f'python3 -c "{code}"'))
    assert status == 200 and body.get("broker") == "ok", body
    # Plain HTTP is not served on the port.
    plain = f"urllib.request.urlopen('http://{address}:{PORT}/healthz', timeout=5)"
    assert worker1.run(f'python3 -c "import urllib.request; {plain}"').rc != 0


def test_tokens_stored_as_hashes_only(host: Any) -> None:
    clients = host.file("/etc/celery/api-clients.json")
    assert (clients.user, clients.group, clients.mode) == ("root", "celery", 0o640)
    stored = json.loads(host.check_output("cat /etc/celery/api-clients.json"))
    assert sorted(stored) == sorted(CLIENTS)
    for client in CLIENTS:
        assert stored[client]["token_sha256"] == hashlib.sha256(token(client).encode()).hexdigest()
    # No token anywhere on the host's configuration, app, data, logs or runtime files.
    patterns = " ".join(f"-e {token(c)}" for c in CLIENTS)
    found = host.run(
        f"grep -rlF {patterns} /etc /opt/celery /var/lib/celery /var/log/celery /run /tmp /root"
    )
    assert found.rc == 1 and found.stdout.strip() == "", found.stdout


def test_bulk_pricing_end_to_end_with_progress(base: str) -> None:
    """The guide's flow: POST /v1/bulk-pricing, then GET the job until it completes with every
    item priced; its progress ({done, total}) reported on the way.

    A batch of the largest size (1,000) is priced in about 30 ms on the lab, too quick for a
    poll to land on reliably. Every write of a result is also published on its key's channel
    (Celery's Redis backend), so a subscriber to the result store, started before the
    submission, sees each PROGRESS write the API reads, whatever its timing."""
    n = 1000  # app.validation.MAX_BATCH
    published: dict[str, str] = {}

    def subscribe() -> None:
        published["out"] = results_admin("PSUBSCRIBE 'celery-task-meta-*'", check=False, seconds=6)

    watcher = threading.Thread(target=subscribe)
    watcher.start()
    time.sleep(1.5)  # subscribed
    host, port = base.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(CA))
    headers = {"Authorization": f"Bearer {token('webapp')}", "Content-Type": "application/json"}
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    seen: list[str] = []
    job: dict[str, Any] = {}
    try:
        conn.request("POST", "/v1/bulk-pricing", body=json.dumps([spec(i) for i in range(n)]),
                     headers=headers)  # fmt: skip
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 202, body
        assert body["status"] == "queued", body
        assert body["status_url"].endswith(f"/v1/jobs/{body['job_id']}"), body
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # one kept-alive connection, polled without pause
            conn.request("GET", f"/v1/jobs/{body['job_id']}", headers=headers)
            resp = conn.getresponse()
            job = json.loads(resp.read())
            assert resp.status == 200, job
            if not seen or seen[-1] != job["status"]:
                seen.append(job["status"])
            if job["status"] in ("completed", "failed"):
                break
    finally:
        conn.close()
        watcher.join()
    assert job.get("status") == "completed", (seen, job)
    result = job["result"]
    assert (result["total_processed"], result["successful"], result["failed"]) == (n, n, 0)
    assert all(r["result"]["total_price"] for r in result["results"]), result["results"][:1]
    writes = [
        json.loads(line)
        for line in published.get("out", "").splitlines()
        if line.startswith("{") and body["job_id"] in line
    ]
    states = [w["status"] for w in writes]
    progress = [w["result"] for w in writes if w["status"] == "PROGRESS"]
    assert progress, f"no PROGRESS written: {states}"
    assert all(0 < p["done"] < p["total"] == n for p in progress), progress[:3]
    assert states[-1] == "SUCCESS", states
    print(f"API statuses seen: {seen}; result store writes: {len(progress)} PROGRESS, {states[-1]}")


JOB = {"task": "pricing.calculate_bulk_pricing", "args": [[spec(0)]]}
# Each refusal class (docs/API.md, "Errors"): what, the request, its status, the field it names.
REFUSALS: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown task", {"body": {**JOB, "task": "nope.x"}}, 422, "task"),
    ("outside the allow-list", {"body": JOB, "client": "reporting"}, 403, "task"),
    ("the probe, never callable", {"body": {**JOB, "task": "ops.probe"}}, 422, "task"),
    ("malformed JSON", {"raw": b'{"task": '}, 400, "body"),
    ("over the size limit", {"raw": b"[" + b"0," * 600_000 + b"0]"}, 413, "body"),
    ("a missing field", {"body": {"args": []}}, 422, "task"),
    ("args not a list", {"body": {**JOB, "args": "x"}}, 422, "args"),
    ("past the visibility timeout", {"body": {**JOB, "countdown": 10 * 86400}}, 422, "countdown"),
    ("an empty batch", {"path": "/v1/bulk-pricing", "body": []}, 422, "specifications"),
    ("not a job id", {"method": "GET", "path": "/v1/jobs/not*a*job*id"}, 422, "job_id"),
]


@pytest.mark.parametrize(
    ("what", "request_", "status", "field"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusal_names_the_field(
    base: str, what: str, request_: dict[str, Any], status: int, field: str
) -> None:
    options = dict(request_)
    method, path = options.pop("method", "POST"), options.pop("path", "/v1/jobs")
    got, body, _ = call(base, method, path, **options)
    assert (got, body.get("field")) == (status, field), (what, body)
    assert body.get("message") and "Traceback" not in json.dumps(body), body


@pytest.mark.parametrize("bearer", [None, "not-the-token-" * 3])
def test_no_or_a_wrong_token_is_401(base: str, bearer: str | None) -> None:
    got, body, headers = call(base, "POST", "/v1/jobs", JOB, client=None, bearer=bearer)
    assert got == 401 and "Bearer" in headers.get("www-authenticate", ""), (got, body, headers)


def test_unknown_job_reads_pending_and_a_failure_reads_its_error(base: str) -> None:
    """An id nobody sent reads `pending` (as Celery); a specification the task refuses fails
    that item alone, with a readable message in the completed result."""
    status, body, _ = call(base, "GET", "/v1/jobs/00000000-0000-4000-8000-000000000000")
    assert (status, body["status"]) == (200, "pending"), body
    status, body, _ = call(base, "POST", "/v1/bulk-pricing", [spec(1), {"material": "AL6061"}])
    assert status == 202, body
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, job, _ = call(base, "GET", f"/v1/jobs/{body['job_id']}")
        if job["status"] == "completed":
            break
        time.sleep(0.5)
    assert job["status"] == "completed", job
    errors = [r for r in job["result"]["results"] if r["status"] == "error"]
    assert len(errors) == 1 and "missing field 'quantity'" in errors[0]["error"], errors


def test_broker_down_answers_503_within_5_s(base: str) -> None:
    """The broker stopped: submissions and /healthz answer 503 within 5 s, never hang; once it
    runs again the API submits again without a restart, and every worker answers again."""
    data1 = other_host("data1")
    job = {"task": "pricing.calculate_bulk_pricing", "args": [[spec(2)]]}
    data1.check_output("systemctl stop redis-server.service")
    try:
        started = time.monotonic()
        status, body, _ = call(base, "POST", "/v1/jobs", job, timeout=15)
        elapsed = time.monotonic() - started
        health = call(base, "GET", "/healthz", client=None, timeout=15)
        assert (status, body.get("error")) == (503, "unavailable"), body
        assert elapsed < 5.0, f"503 after {elapsed:.1f} s"
        assert health[0] == 503, health
    finally:
        data1.check_output("systemctl start redis-server.service")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body, _ = call(base, "POST", "/v1/jobs", job)
        if status == 202:
            break
        time.sleep(1)
    assert status == 202, body
    wait_answering(other_host("ops1"), all_nodes())
