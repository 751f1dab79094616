"""Flower seen in a real browser: Debian's headless Chromium, driven by Selenium (controller).

The dashboard on ops1's cluster address, over HTTPS (the browser pinned to ops1's certificate),
logged in with the inventory's basic-auth credentials, lists every worker instance of the
inventory (`NAME@HOST`) as online; without credentials Flower answers 401. The screenshot is
kept in artifacts/flower-dashboard.png (git-ignored).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import ARTIFACTS, PKI, chromium, document_status, pinned_to
from selenium import webdriver
from selenium.webdriver.common.by import By

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
# What the dashboard must show, as the inventory defines it (evaluated by Ansible: lookups, role
# defaults; the lab binds Flower to the address Ansible reaches). The user default is the role's.
FLOWER_USER_DEFAULT = yaml.safe_load((PROJECT / "roles/flower/defaults/main.yml").read_text())[
    "flower_basic_auth_user"
]
FACTS = (
    "{{ {'instances': celery_worker_instances | default([]) | map(attribute='name'),"
    " 'flower': {'address': flower_address | default(cluster_address) | default(ansible_host)"
    f" , 'port': flower_port | default(5555), 'user': flower_basic_auth_user | default("
    f"'{FLOWER_USER_DEFAULT}'), 'password': flower_basic_auth_password | default('')}}"
    " if 'flower' in group_names else {}} }}"
)


def inventory_facts() -> dict[str, Any]:
    """Per host: worker instance names; on the flower host, its address and login."""
    # The answer holds the Flower password: only in this pipe, never in the scenario's Ansible log
    # (ANSIBLE_LOG_PATH, which test_lockdown.py scans for secrets).
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_LOG_PATH"}
    # JSON alone on stdout: no other callback (Molecule's env enables the timer's last line).
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    env.update(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    inventory = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
    debug = ["-m", "ansible.builtin.debug", "-a", json.dumps({"msg": FACTS})]
    out = subprocess.run(
        ["ansible", "all", "-i", str(inventory), *debug],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = json.loads(out.stdout)["plays"][0]["tasks"][0]["hosts"]
    return {name: result["msg"] for name, result in results.items()}


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    return inventory_facts()


@pytest.fixture(scope="module")
def flower(facts: dict[str, Any]) -> dict[str, Any]:
    hosts = [f["flower"] for f in facts.values() if f["flower"]]
    assert len(hosts) == 1, f"expected one flower host, got {hosts}"
    return hosts[0]


@pytest.fixture(scope="module")
def expected_workers(facts: dict[str, Any]) -> set[str]:
    workers = {f"{name}@{host}" for host, f in facts.items() for name in f["instances"]}
    assert workers, "the inventory declares no worker instance"
    return workers


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium(pinned_to("ops1")) as driver:
        yield driver


# Cell texts of the dashboard's worker rows (name, status, ...), read at once (the table redraws).
ROWS_JS = (
    "return Array.from(document.querySelectorAll('#workers-table tbody tr'))"
    ".map(r => Array.from(r.cells).map(c => c.textContent.replace(/\\s+/g, '')))"
)


def url(flower: dict[str, Any], path: str = "/") -> str:
    return f"https://{flower['address']}:{flower['port']}{path}"


def test_flower_refuses_a_browser_without_credentials(
    browser: webdriver.Chrome, flower: dict[str, Any]
) -> None:
    browser.get_log("performance")
    browser.get(url(flower))
    assert document_status(browser, url(flower)) == 401
    assert not browser.find_elements(By.ID, "workers-table")
    # The same refusal outside the browser, with the challenge that makes a browser ask for a login.
    verified = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url(flower), timeout=30, context=verified)  # noqa: S310
    assert refused.value.code == 401
    assert refused.value.headers.get("WWW-Authenticate", "").startswith("Basic")


def test_flower_dashboard_shows_every_worker_online(
    browser: webdriver.Chrome, flower: dict[str, Any], expected_workers: set[str]
) -> None:
    # Logged in the way a browser answers Flower's basic-auth challenge: on every request.
    login = base64.b64encode(f"{flower['user']}:{flower['password']}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {login}"}}
    )
    browser.get_log("performance")
    browser.get(url(flower))
    assert document_status(browser, url(flower)) == 200
    # The table fills in from the page's own requests (/workers?json=1, every second) and shows
    # "Online"/"Offline"; until its script has drawn it, the server's first rendering shows
    # "True"/"False". Poll it; a page whose script has not drawn after 45 s is loaded once more
    # (a user's reload), and the report says so.
    online: dict[str, str] = {}
    reloaded: list[dict[str, Any]] = []
    start = time.monotonic()
    while time.monotonic() - start < 150:
        rows = browser.execute_script(ROWS_JS)
        online = {row[0]: row[1] for row in rows if len(row) >= 2}
        if all(online.get(w) == "Online" for w in expected_workers):
            break
        drawn = any(v in ("Online", "Offline") for v in online.values())
        if not drawn and not reloaded and time.monotonic() - start > 45:
            reloaded.append(page_state(browser, flower))
            browser.refresh()
        time.sleep(2)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "flower-dashboard.png"))
    assert "Flower" in browser.title
    missing = {w: online.get(w, "absent") for w in expected_workers if online.get(w) != "Online"}
    state = page_state(browser, flower) if missing else {}
    assert not missing, (
        f"workers not online on the dashboard: {missing}; table: {online}; page: {state};"
        f" before the reload: {reloaded}"
    )
    if reloaded:
        print(f"FLOWER dashboard drawn only after a reload; before it: {reloaded[0]}")


def page_state(browser: webdriver.Chrome, flower: dict[str, Any]) -> dict[str, Any]:
    """What explains an undrawn table: the page's refresh line, its console errors, and the
    table's JSON read outside the browser (status, seconds)."""
    status = browser.execute_script(
        "var e = document.getElementById('workers-refresh-status'); return e && e.textContent"
    )
    console = [e["message"][:300] for e in browser.get_log("browser") if e["level"] != "INFO"]
    login = base64.b64encode(f"{flower['user']}:{flower['password']}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 (https, our own URL)
        url(flower, "/workers?json=1"), headers={"Authorization": f"Basic {login}"}
    )
    verified = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30, context=verified) as answer:  # noqa: S310
            table = f"{answer.status}, {len(answer.read())} bytes"
    except Exception as exc:  # reported, not handled
        table = repr(exc)[:300]
    seconds = round(time.monotonic() - t0, 1)
    return {"refresh": status, "console": console[-10:], "workers_json": table, "s": seconds}
