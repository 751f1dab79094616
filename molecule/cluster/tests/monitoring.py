"""Helpers of the monitoring tests: Prometheus's and Alertmanager's APIs, asked on ops1 over HTTPS
with their logins (root reads the password files Prometheus itself uses); the test SMTP sinks."""

from __future__ import annotations

import json
import shlex
import time
import urllib.parse
from typing import Any

import pytest

API = """
import base64, json, ssl, sys, urllib.parse, urllib.request
base, path, secret = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile="/etc/prometheus/tls/ca.crt")
req = urllib.request.Request(base + path)
token = base64.b64encode(("admin:" + open(secret).read().strip()).encode()).decode()
req.add_header("Authorization", "Basic " + token)
print(json.dumps(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))))
"""


def api(host: Any, port: int, path: str, secret: str) -> Any:
    out = host.check_output(
        f"python3 -c {shlex.quote(API)} https://ops1:{port} {shlex.quote(path)} "
        f"/etc/prometheus/secrets/{secret}"
    )
    return json.loads(out)


def prom(host: Any, query: str) -> list[dict[str, Any]]:
    path = "/api/v1/query?query=" + urllib.parse.quote(query)
    body = api(host, 9090, path, "prometheus")
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def wait_until(check: Any, timeout: float, what: str, interval: float = 3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"not within {timeout:.0f} s: {what}")


def firing(ops1: Any, name: str, **labels: str) -> list[dict[str, Any]]:
    alerts = api(
        ops1, 9093, "/api/v2/alerts?active=true&silenced=false&inhibited=false", "alertmanager"
    )
    return [
        a
        for a in alerts
        if a["labels"].get("alertname") == name
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


# Subjects of the mails in the SMTP sink of prepare.yml (a Maildir on ops1 and on each worker host),
# oldest first.
SUBJECTS = """
import json, mailbox, os
mails = []
if os.path.isdir("/var/lib/mailsink/new"):  # the sink makes its Maildir at the first mail
    mails = sorted(mailbox.Maildir("/var/lib/mailsink", create=False), key=lambda m: m.get_date())
print(json.dumps([str(m["Subject"]) for m in mails]))
"""


def mail_subjects(host: Any, name: str) -> list[str]:
    out = json.loads(host.check_output(f"python3 -c {shlex.quote(SUBJECTS)}"))
    return [s for s in out if name in s]
