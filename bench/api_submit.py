#!/usr/bin/env python3
"""Submissions per second through the HTTP job API against direct `send_task`, same host, same
run (issue 16); the API's p50/p99 latency at that rate.

    # the lab (ops1, where app.env and the API are): the deployed API and its token
    .venv/bin/python bench/api_submit.py --url https://ops1:8443 --token-file TOKEN --cafile ca.crt
    # locally: start a throwaway API (plain HTTP on loopback) on the APP_BROKER_URL of the env
    APP_BROKER_URL=redis://:PW@127.0.0.1:PORT/0 APP_RESULT_BACKEND=... \\
        .venv/bin/python bench/api_submit.py --start-api

Both sides send the same task with the same arguments (default: pricing.calculate_bulk_pricing
of one specification: read-only if a worker runs it) from --threads threads for --seconds each,
direct first, then the API (one keep-alive HTTPS connection per thread). Direct uses this
process's Celery (the APP_* settings); the API publishes with its own. Messages are left in
their queue (no worker: they pile up; purge with `taskctl purge pricing --yes`). Prints one JSON
line: rates, ratio API/direct, p50/p99 latency of each side.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPEC = {
    "material": "AL6061",
    "quantity": 10,
    "dimensions": {"length_mm": 100, "width_mm": 50, "height_mm": 10},
}


def stats(latencies: list[float], seconds: float) -> dict[str, Any]:
    if len(latencies) < 2:
        return {"n": len(latencies), "rate_per_s": 0.0}
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "n": len(latencies),
        "rate_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


def run_threads(threads: int, seconds: float, one: Any) -> tuple[list[float], float, int]:
    """one(state) sends a submission; latencies of all threads, elapsed, errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop() -> None:
        state: dict[str, Any] = {}
        mine: list[float] = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                one(state)
            except Exception as exc:
                with lock:
                    errors[0] += 1
                    if errors[0] <= 3:
                        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
                state.clear()
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    began = time.monotonic()
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies, time.monotonic() - began, errors[0]


def direct(task: str, args: list[Any]) -> Any:
    from app.celery_app import celery_app

    def one(state: dict[str, Any]) -> None:
        celery_app.send_task(task, args=args)

    return one


def through_api(url: str, token: str, context: ssl.SSLContext | None, task: str, args: list[Any]):
    parts = urllib.parse.urlsplit(url)
    body = json.dumps({"task": task, "args": args}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def one(state: dict[str, Any]) -> None:
        conn = state.get("conn")
        if conn is None:
            host = parts.hostname or "127.0.0.1"
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    host, parts.port or 443, timeout=10, context=context
                )
            else:
                conn = http.client.HTTPConnection(host, parts.port or 80, timeout=10)
            state["conn"] = conn
        conn.request("POST", "/v1/jobs", body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        if response.status != 202:
            raise RuntimeError(f"{response.status}: {answer[:200]!r}")

    return one


def start_api(task: str) -> tuple[subprocess.Popen[bytes], str, str, Path]:
    token = secrets.token_urlsafe(32)
    tmp = Path(tempfile.mkdtemp(prefix="api-bench-"))
    clients = tmp / "clients.json"
    digest = hashlib.sha256(token.encode()).hexdigest()
    clients.write_text(json.dumps({"bench": {"token_sha256": digest, "tasks": [task]}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "APP_API_ADDRESS": "127.0.0.1",
        "APP_API_PORT": str(port),
        "APP_API_TLS_CERT": "",
        "APP_API_TLS_KEY": "",
        "APP_API_CLIENTS_FILE": str(clients),
        "APP_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.api"], env=env, cwd=REPO, stderr=(tmp / "api.log").open("wb")
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, url, token, tmp
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"api_submit: the API did not start; see {tmp / 'api.log'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="the API's base URL, e.g. https://ops1:8443")
    p.add_argument("--token", help="a client's bearer token (or --token-file)")
    p.add_argument("--token-file", help="file holding the token")
    p.add_argument("--cafile", help="CA to verify the API's certificate")
    p.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    p.add_argument("--start-api", action="store_true", help="run a local API for the run")
    p.add_argument("--task", default="pricing.calculate_bulk_pricing")
    p.add_argument("--args", default=json.dumps([[SPEC]]), help="JSON array of arguments")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    args = json.loads(a.args)
    proc = None
    if a.start_api:
        proc, url, token, _ = start_api(a.task)
    else:
        if not a.url or not (a.token or a.token_file):
            p.error("--url and --token (or --token-file), or --start-api")
        url = a.url
        token = a.token or Path(a.token_file).read_text().strip()
    context = None
    if url.startswith("https"):
        context = ssl.create_default_context(cafile=a.cafile)
        if a.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        one = direct(a.task, args)
        one({})  # connect and warm up before the clock
        d_lat, d_s, d_err = run_threads(a.threads, a.seconds, one)
        api_one = through_api(url, token, context, a.task, args)
        api_one({})
        a_lat, a_s, a_err = run_threads(a.threads, a.seconds, api_one)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
    direct_stats = {**stats(d_lat, d_s), "errors": d_err}
    api_stats = {**stats(a_lat, a_s), "errors": a_err}
    ratio = api_stats["rate_per_s"] / direct_stats["rate_per_s"] if d_lat else float("nan")
    print(
        f"direct send_task: {direct_stats['rate_per_s']}/s   API: {api_stats['rate_per_s']}/s "
        f"(x{ratio:.2f}), API p50 {api_stats.get('p50_ms')} ms p99 {api_stats.get('p99_ms')} ms",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "task": a.task,
                "threads": a.threads,
                "seconds": a.seconds,
                "direct": direct_stats,
                "api": api_stats,
                "ratio_api_to_direct": round(ratio, 3),
                "api_url": url,
            }
        )
    )


if __name__ == "__main__":
    main()
