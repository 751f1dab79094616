"""The console template roles/prometheus/files/consoles/celery.html.

Checked offline first (balanced `{{ }}`, only templates that exist), then rendered by the
packaged Prometheus (tools.sh; the binary only, nothing installed) on 127.0.0.1: it scrapes
made-up exporters served by this test, evaluates the alert rules, and serves the console with
Debian's console libraries. The page must render (a template or query error answers 500), show
the fixture's facts, and every query in it, drilldown links and graphs, must parse.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promtool import FILES, RULES_DIR, check_exprs, tools, unrecorded, where_failed

CONSOLE = FILES / "consoles" / "celery.html"
DELIM = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.DOTALL)


def test_delimiters_are_balanced() -> None:
    text = CONSOLE.read_text()
    depth = 0
    for match in re.finditer(r"{{|}}", text):
        depth += 1 if match.group() == "{{" else -1
        assert depth in (0, 1), f"nested or stray delimiter at offset {match.start()}"
    assert depth == 0, "an unclosed {{"


def test_blocks_are_balanced_and_templates_exist() -> None:
    text = CONSOLE.read_text()
    libraries = "".join(p.read_text() for p in sorted(tools().console_libraries.glob("*.lib")))
    defined = set(re.findall(r'{{-?\s*define\s+"([^"]+)"', libraries + text))
    depth = 0
    for action in DELIM.findall(text):
        word = action.split(maxsplit=1)[0] if action else ""
        if word in {"if", "range", "with", "define", "block"}:
            depth += 1
        elif word == "end":
            depth -= 1
            assert depth >= 0, "an {{ end }} too many"
        elif word == "template":
            name = re.match(r'template\s+"([^"]+)"', action)
            assert name and name.group(1) in defined, f"unknown template in {{{{ {action} }}}}"
    assert depth == 0, "an {{ if/range/with }} without its {{ end }}"
    # The page is a console of the libraries: their head and tail around it.
    assert '{{ template "head" . }}' in text
    assert '{{ template "tail" }}' in text


# --- rendered by a real Prometheus --------------------------------------------------------------

NOW = time.time()
BEAT_ENTRY = 'entry="check-system-health",task="maintenance.check_system_health"'
EXPORTERS = {
    "/celery": f"""
celery_queue_length{{queue_name="pricing"}} 5
celery_queue_length{{queue_name="default"}} 0
celery_queue_oldest_message_age_seconds{{queue_name="pricing"}} 42
celery_queue_oldest_message_age_seconds{{queue_name="default"}} 0
celery_active_consumer_count{{queue_name="pricing"}} 0
celery_active_consumer_count{{queue_name="default"}} 2
celery_worker_up{{hostname="notifications@worker1"}} 1
celery_worker_up{{hostname="pricing@worker2"}} 0
celery_worker_tasks_active{{hostname="notifications@worker1"}} 3
celery_worker_tasks_active{{hostname="pricing@worker2"}} 0
celery_worker_consuming{{hostname="notifications@worker1",queue_name="default"}} 1
celery_worker_consuming{{hostname="notifications@worker1",queue_name="notifications"}} 1
celery_worker_consuming{{hostname="pricing@worker2",queue_name="pricing"}} 0
celery_beat_entry_period_seconds{{{BEAT_ENTRY}}} 300
celery_beat_entry_last_sent_timestamp_seconds{{{BEAT_ENTRY}}} {NOW - 3600}
celery_exporter_events_connected 1
celery_exporter_broker_up 1
""",
    "/redis-broker": """
redis_up 1
redis_memory_used_bytes 419430400
redis_memory_max_bytes 536870912
redis_connected_clients 12
redis_evicted_keys_total 0
""",
    "/redis-results": """
redis_up 1
redis_memory_used_bytes 10485760
redis_memory_max_bytes 0
redis_connected_clients 4
redis_evicted_keys_total 0
""",
    "/postgres": """
pg_up 1
pg_stat_activity_count{datname="celery",state="active"} 30
pg_stat_activity_count{datname="celery",state="idle"} 10
pg_settings_max_connections 100
""",
    "/node-data1": """
node_filesystem_avail_bytes{device="/dev/sda1",fstype="ext4",mountpoint="/"} 10
node_filesystem_size_bytes{device="/dev/sda1",fstype="ext4",mountpoint="/"} 100
node_filesystem_avail_bytes{device="tmpfs",fstype="tmpfs",mountpoint="/run"} 0
node_filesystem_size_bytes{device="tmpfs",fstype="tmpfs",mountpoint="/run"} 100
node_cpu_seconds_total{cpu="0",mode="idle"} {cpu_idle}
node_memory_MemAvailable_bytes 250
node_memory_MemTotal_bytes 1000
""",
}
# (job, path, labels): each target named as the inventory would (instance, host).
TARGETS = [
    ("celery", "/celery", {"host": "ops1", "instance": "ops1:9808"}),
    ("redis", "/redis-broker", {"host": "data1", "instance": "data1:9121", "redis": "broker"}),
    ("redis", "/redis-results", {"host": "data1", "instance": "data1:9122", "redis": "results"}),
    ("postgres", "/postgres", {"host": "data1", "instance": "data1:9187"}),
    ("node", "/node-data1", {"host": "data1", "instance": "data1:9100"}),
]


class Exporters(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = EXPORTERS.get(self.path, "")
        # The idle CPU counter grows half a second a second: the host is 50 % busy.
        body = body.replace("{cpu_idle}", repr(1000 + (time.time() - NOW) / 2))
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body.lstrip().encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Rendered:
    base: str
    status: int
    html: str


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    tmp = tmp_path_factory.mktemp("prometheus")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Exporters)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    jobs: dict[str, list[dict[str, Any]]] = {}
    for job, path, labels in TARGETS:
        jobs.setdefault(job, []).append(
            {"targets": [address], "labels": {**labels, "__metrics_path__": path}}
        )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "*.rules.yml")],
        "scrape_configs": [{"job_name": j, "static_configs": c} for j, c in jobs.items()],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            str(tools().prometheus),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.console.templates={CONSOLE.parent}",
            f"--web.console.libraries={tools().console_libraries}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Every target scraped twice (rates and increases computable), the rules evaluated.
        ready = (
            f"count(count_over_time(up[5m]) >= 2 and up == 1) == {len(TARGETS)}"
            " and on () count(ALERTS{alertname='CeleryQueueNotConsumed'}) > 0"
            " and on () count(celery:queue_age_threshold_seconds:effective) > 0"
        )
        url = f"{base}/api/v1/query?query={urllib.parse.quote(ready)}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp / "prometheus.log").read_text()
            with contextlib.suppress(OSError):
                status, body = get(url, timeout=2)
                if status == 200 and json.loads(body)["data"]["result"]:
                    break
            assert time.monotonic() < deadline, (tmp / "prometheus.log").read_text()[-3000:]
            time.sleep(0.5)
        status, html = get(f"{base}/consoles/celery.html")
        yield Rendered(base, status, html)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        server.shutdown()
        server.server_close()


class Tables(HTMLParser):
    """The cells' text of each <table id=...>, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.table: str | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.table = dict(attrs).get("id")
            if self.table:
                self.tables[self.table] = []
        elif tag == "tr" and self.table:
            self.tables[self.table].append([])
        elif tag in ("td", "th") and self.table:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.table and self.cell is not None:
            self.tables[self.table][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables(html: str) -> dict[str, dict[str, list[str]]]:
    """Table id -> first cell -> the row's cells (header rows left out)."""
    parser = Tables()
    parser.feed(html)
    return {
        table: {row[0]: row for row in rows[1:] if row} for table, rows in parser.tables.items()
    }


def test_the_console_renders(rendered: Rendered) -> None:
    assert rendered.status == 200, rendered.html[-3000:]
    assert "<h1>Celery cluster</h1>" in rendered.html
    assert "error executing template" not in rendered.html


def test_queues(rendered: Rendered) -> None:
    queues = tables(rendered.html)["queues"]
    # Queue, waiting, oldest message, alert after (its threshold), consumers.
    assert queues["pricing"] == ["pricing", "5", "42s", "2m 0s", "0"]
    assert queues["default"] == ["default", "0", "0s", "5m 0s", "2"]


def test_workers(rendered: Rendered) -> None:
    workers = tables(rendered.html)["workers"]
    assert workers["notifications@worker1"] == [
        "notifications@worker1",
        "up",
        "3",
        "default notifications",
    ]
    assert workers["pricing@worker2"] == ["pricing@worker2", "down", "0", ""]


def test_beat(rendered: Rendered) -> None:
    beat = tables(rendered.html)["beat"]["check-system-health"]
    assert beat[1] == "maintenance.check_system_health"
    assert re.fullmatch(r"1h 0m \d+s ago", beat[2]), beat
    assert beat[3] == "5m 0s"


def test_redis_and_postgresql(rendered: Rendered) -> None:
    found = tables(rendered.html)
    # 400 MiB of 512 MiB; the result store has no maxmemory: no ratio.
    assert found["redis"]["broker"] == ["broker", "data1", "up", "400MiB", "78.1 %", "12", "0.0"]
    assert found["redis"]["results"] == ["results", "data1", "up", "10MiB", "-", "4", "0.0"]
    assert found["postgresql"]["data1"] == ["data1", "up", "40", "100", "40.0 %"]


def test_hosts(rendered: Rendered) -> None:
    host, up, disk, cpu, memory = tables(rendered.html)["hosts"]["data1"]
    assert (host, up, memory) == ("data1", "up", "75.0 %")
    # The tmpfs, full, does not count; / is 90 % used.
    assert disk == "90.0 %"
    assert re.fullmatch(r"(49|50|51)\.\d %", cpu), cpu


def test_alerts_firing_or_pending(rendered: Rendered) -> None:
    alerts = tables(rendered.html)["alerts"]
    assert alerts["CeleryQueueNotConsumed"][1:] == ["critical", "pending", "ops1 queue pricing"]
    assert alerts["CeleryWorkerDown"][1:] == [
        "warning",
        "pending",
        "worker2 worker pricing@worker2",
    ]


def rendered_exprs(html: str) -> dict[str, str]:
    """Every query of the page: the drilldown links' and the graphs'."""
    exprs = {}
    for href in re.findall(r'class="prom_query_drilldown" href="([^"]+)"', html):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(href.replace("&amp;", "&")).query)
        exprs[f"drilldown {len(exprs)}"] = query["g0.expr"][0]
    string = r'"(?:[^"\\]|\\.)*"'
    for block in re.findall(rf"expr:\s*(\[(?:\s*{string}\s*,?)*\s*\]|{string})", html):
        for expr in re.findall(string, block):
            exprs[f"graph {len(exprs)}"] = json.loads(expr)
    return exprs


def test_every_query_of_the_page_parses(rendered: Rendered, tmp_path: Path) -> None:
    exprs = rendered_exprs(rendered.html)
    assert len(exprs) >= 25, exprs
    done = check_exprs(exprs, tmp_path)
    assert done.returncode == 0, where_failed(done, exprs)
    assert unrecorded(exprs) == {}
