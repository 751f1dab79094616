"""Headless Chromium for the cluster's browser tests (Debian's chromium and chromium-driver on the
controller, driven by Selenium): Flower (test_flower_browser.py), Prometheus and Alertmanager
(test_monitoring_browser.py). Screenshots go to artifacts/ (git-ignored)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ARTIFACTS = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "artifacts"
# The scenario's CA and host certificates (playbooks/pki.yml).
PKI = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags this machine needs (no sandbox as root, no GPU) and no traffic beyond the lab.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
]


def spki_pin(cert: Path) -> str:
    """Chromium's --ignore-certificate-errors-spki-list value: base64 SHA-256 of the public key."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def pinned_to(host: str) -> str:
    """The flag that makes Chromium accept `host`'s own key only (the lab CA is not in the
    controller's trust store)."""
    return f"--ignore-certificate-errors-spki-list={spki_pin(PKI / f'{host}.crt')}"


@contextlib.contextmanager
def chromium(*extra_flags: str) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, *extra_flags]:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="lab-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        # The DevTools network events, to read the HTTP status the browser got for a page; the
        # console, for a failing test's report.
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download a browser or driver
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(60)
        try:
            yield driver
        finally:
            driver.quit()


def document_status(browser: webdriver.Chrome, page: str) -> int | None:
    """HTTP status of the last response the browser received for `page` (DevTools events)."""
    status = None
    for entry in browser.get_log("performance"):  # drains the log
        event = json.loads(entry["message"])["message"]
        response = event.get("params", {}).get("response", {})
        if event["method"] == "Network.responseReceived" and response.get("url") == page:
            status = int(response["status"])
    return status
