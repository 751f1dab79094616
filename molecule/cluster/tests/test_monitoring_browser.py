"""Prometheus and Alertmanager seen in a real browser (headless Chromium on the controller, its
TLS pinned to ops1's certificate): logged in, Prometheus's targets page shows every target up and
the Celery console renders; with worker2's node exporter and its `batch` instance stopped,
Alertmanager holds the instance's CeleryWorkerDown back behind HostDown (inhibited, its API), its
page asks the login, and Prometheus's alerts page shows HostDown active. Debian's Alertmanager has
no web UI (docs/DESIGN.md). Screenshots: artifacts/prometheus-*.png, alertmanager-page.png.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import ARTIFACTS, chromium, document_status, pinned_to
from conftest import address, other_host
from monitoring import api, firing, prom, wait_until
from selenium import webdriver

testinfra_hosts = ["ops1"]

SECRETS = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / ".lab" / "secrets"
# The jobs and how many targets each has on this scenario's inventory.
JOBS = {"node": 4, "redis": 2, "postgres": 1, "celery": 1, "alertmanager": 1, "prometheus": 1}


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium(pinned_to("ops1")) as driver:
        yield driver


@pytest.fixture(scope="module")
def ops1_address() -> str:
    return address("ops1")


def log_in(browser: webdriver.Chrome, secret: str) -> None:
    login = base64.b64encode(f"admin:{(SECRETS / secret).read_text().strip()}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {login}"}}
    )


def page_text(browser: webdriver.Chrome) -> str:
    return str(browser.execute_script("return document.body ? document.body.innerText : ''"))


def test_prometheus_targets_page_shows_every_target_up(
    browser: webdriver.Chrome, ops1_address: str
) -> None:
    url = f"https://{ops1_address}:9090/classic/targets"  # Debian builds the classic UI
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    browser.get_log("performance")
    browser.get(url)
    assert document_status(browser, url) == 401  # no login, no page
    log_in(browser, "prometheus_web_password")
    browser.get_log("performance")
    browser.get(url)
    assert document_status(browser, url) == 200
    counts: dict[str, tuple[int, int]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = page_text(browser)
        counts = {
            m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"(\w+) \((\d+)/(\d+) up\)", text)
        }
        if all(counts.get(job) == (n, n) for job, n in JOBS.items()):
            break
        time.sleep(2)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "prometheus-targets.png"))
    assert all(counts.get(job) == (n, n) for job, n in JOBS.items()), counts


def test_the_celery_console_renders_the_queues(
    browser: webdriver.Chrome, ops1_address: str
) -> None:
    """The view the lab shows without Grafana (roles/prometheus/files/consoles/celery.html)."""
    url = f"https://{ops1_address}:9090/consoles/celery.html"
    log_in(browser, "prometheus_web_password")
    browser.get_log("performance")
    browser.get(url)
    assert document_status(browser, url) == 200
    text = page_text(browser)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "prometheus-celery-console.png"))
    for queue in ("pricing", "notifications", "default", "data_processing", "maintenance"):
        assert queue in text, (queue, text[:2000])


def test_alertmanager_page_shows_a_down_host_and_holds_back_its_other_alerts(
    host: Any, browser: webdriver.Chrome, ops1_address: str
) -> None:
    worker2 = other_host("worker2")
    try:
        worker2.check_output(
            "systemctl stop prometheus-node-exporter.service celery-worker@batch.service"
        )
        wait_until(lambda: firing(host, "HostDown", host="worker2"), 180, "HostDown{worker2}")

        def held_back() -> Any:
            path = "/api/v2/alerts?active=false&silenced=false&inhibited=true"
            alerts = api(host, 9093, path, "alertmanager")
            return [
                a
                for a in alerts
                if a["labels"].get("alertname") == "CeleryWorkerDown"
                and a["labels"].get("hostname") == "batch@worker2"
                and a["status"]["state"] == "suppressed"
                and a["status"]["inhibitedBy"]
            ]

        wait_until(held_back, 120, "CeleryWorkerDown{batch@worker2} inhibited by HostDown")
        ARTIFACTS.mkdir(exist_ok=True)
        # Alertmanager: Debian's package ships no web UI (its page says to use amtool, as the
        # RUNBOOK does); the page and the API are behind the login.
        url = f"https://{ops1_address}:9093/"
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        browser.get_log("performance")
        browser.get(url)
        assert document_status(browser, url) == 401
        log_in(browser, "alertmanager_web_password")
        browser.get_log("performance")
        browser.get(url)
        assert document_status(browser, url) == 200
        assert "amtool" in page_text(browser)
        browser.save_screenshot(str(ARTIFACTS / "alertmanager-page.png"))
        # The firing alert as Prometheus's alerts page shows it.
        log_in(browser, "prometheus_web_password")
        browser.get(f"https://{ops1_address}:9090/classic/alerts")
        wait_until(
            lambda: re.search(r"HostDown \(\d+ active\)", page_text(browser)),
            60,
            "HostDown active on Prometheus's alerts page",
            interval=2,
        )
        browser.save_screenshot(str(ARTIFACTS / "prometheus-alerts.png"))
    finally:
        worker2.check_output(
            "systemctl start prometheus-node-exporter.service celery-worker@batch.service"
        )
    wait_until(
        lambda: prom(host, 'up{job="node",host="worker2"} == 1'), 60, "worker2's node exporter up"
    )
