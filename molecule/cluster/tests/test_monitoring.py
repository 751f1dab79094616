"""Metrics and alerts on the converged cluster: Prometheus scrapes every exporter (all `up`), a
task's counter grows after it runs, a queue nobody consumes fires CeleryQueueNotConsumed in
Alertmanager and starting its consumers resolves it; an exporter answers no one without the
CA's client certificate. (The ports closed to a host outside the cluster: test_lockdown.py.)"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

import pytest
from conftest import app_python, other_host
from monitoring import firing, prom, wait_until
from reliability import broker_admin, info_field

testinfra_hosts = ["ops1"]


def test_every_target_up(host: Any) -> None:
    """Each exporter the inventory runs is a target, and every target answers."""
    expected = {
        "node": {"data1", "worker1", "worker2", "ops1"},
        "redis": {"data1"},
        "postgres": {"data1"},
        "celery": {"ops1"},
        "alertmanager": {"ops1"},
        "prometheus": {"ops1"},
    }

    def all_up() -> Any:
        series = prom(host, "up")
        seen: dict[str, set[str]] = {}
        for s in series:
            if s["value"][1] == "1":
                seen.setdefault(s["metric"]["job"], set()).add(s["metric"]["host"])
        return seen if seen == expected and len(series) == 10 else None

    seen = wait_until(all_up, 90, "every target up")
    redis = {s["metric"]["redis"] for s in prom(host, 'up{job="redis"} == 1')}
    assert redis == {"broker", "results"}, seen


def test_a_task_counter_grows_after_it_runs(host: Any) -> None:
    query = 'sum(celery_task_succeeded_total{name="ops.probe",queue_name="pricing"})'

    def count() -> float:
        r = prom(host, query)
        return float(r[0]["value"][1]) if r else 0.0

    before = count()
    out = app_python(
        host,
        """
import json
from app.celery_app import celery_app
rs = [celery_app.send_task("ops.probe", args=["metrics-%d" % i], queue="pricing") for i in range(3)]
print(json.dumps([r.get(timeout=60)["status"] for r in rs]))
""",
    )
    assert out == ["success"] * 3
    wait_until(lambda: count() >= before + 3, 60, f"{query} to grow by 3 from {before}")
    runtime = prom(host, 'sum(celery_task_runtime_count{name="ops.probe",queue_name="pricing"})')
    assert runtime and float(runtime[0]["value"][1]) >= 3


# Subjects of the mails in the SMTP sink of prepare.yml (a Maildir on ops1), oldest first.
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


def test_unconsumed_queue_fires_an_alert_and_resolves(host: Any) -> None:
    """Every instance consuming `pricing` stopped while `pricing` has messages: Alertmanager gets
    CeleryQueueNotConsumed{queue_name=pricing} and mails it once (to the test's SMTP sink); once
    they run again, Prometheus resolves it and the resolution is mailed too."""
    name = "CeleryQueueNotConsumed"
    mails_before = len(mail_subjects(host, name))
    workers = [other_host("worker1"), other_host("worker2")]
    t0 = time.monotonic()
    try:
        for w in workers:
            w.check_output("systemctl stop celery-worker@pricing.service")
        app_python(
            host,
            """
import json
from app.celery_app import celery_app
ids = [celery_app.send_task("ops.probe", args=["unconsumed-%d" % i], queue="pricing").id
       for i in range(5)]
print(json.dumps(ids))
""",
        )
        alert = wait_until(
            lambda: firing(host, "CeleryQueueNotConsumed", queue_name="pricing"),
            240,
            "CeleryQueueNotConsumed{queue_name=pricing} in Alertmanager",
        )
        waited = time.monotonic() - t0
        print(f"MONITORING CeleryQueueNotConsumed in Alertmanager {waited:.0f} s after the stop")
        assert alert[0]["labels"]["severity"] == "critical"
        assert "pricing" in alert[0]["annotations"]["summary"]
        mail = wait_until(
            lambda: mail_subjects(host, name)[mails_before:], 60, f"the {name} mail in the sink"
        )
        assert mail[0].startswith("[FIRING"), mail
        time.sleep(20)  # two group intervals (10 s here): the incident is still mailed once
        assert len(mail_subjects(host, name)) == mails_before + 1
    finally:
        for w in workers:
            w.check_output("systemctl start celery-worker@pricing.service")
    t1 = time.monotonic()
    wait_until(
        lambda: not prom(host, 'ALERTS{alertname="CeleryQueueNotConsumed",queue_name="pricing"}'),
        180,
        "CeleryQueueNotConsumed resolved in Prometheus",
    )
    print(f"MONITORING resolved {time.monotonic() - t1:.0f} s after the start")
    mails = wait_until(
        lambda: mail_subjects(host, name)[mails_before + 1 :], 90, f"the {name} resolved mail"
    )
    assert mails[0].startswith("[RESOLVED"), mails


EXPORTERS = [
    ("data1", 9100),
    ("data1", 9121),
    ("data1", 9122),
    ("data1", 9187),
    ("ops1", 9808),
    ("worker1", 9100),
]

# GET /metrics over TLS verified against the CA, with a client certificate or none: the HTTP
# status, or the error that ended the attempt.
FETCH = """
import ssl, sys, urllib.request
url, ca = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 3:
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
try:
    print(urllib.request.urlopen(url, context=ctx, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception as e:
    print("refused", type(e).__name__)
"""


def fetch(client: Any, url: str, ca: str, cert: tuple[str, str] | None = None) -> str:
    extra = f" {cert[0]} {cert[1]}" if cert else ""
    return str(client.check_output(f"python3 -c {shlex.quote(FETCH)} {url} {ca}{extra}")).strip()


@pytest.mark.parametrize(("target", "port"), EXPORTERS)
def test_exporter_refuses_a_client_without_the_certificate(target: str, port: int) -> None:
    """From worker2 (a cluster host: the firewall lets it through), TLS verified with the CA and no
    client certificate, then worker2's own: refused. The test below shows Prometheus's is served."""
    worker2 = other_host("worker2")
    status = fetch(worker2, f"https://{target}:{port}/metrics", "/etc/celery/ca.pem")
    assert status.startswith("refused") or status in ("401", "403"), (target, port, status)
    # worker2's own certificate, signed by the same CA, is a server's (no clientAuth): refused too.
    own = ("/etc/prometheus/tls/host.crt", "/etc/prometheus/tls/host.key")
    status = fetch(worker2, f"https://{target}:{port}/metrics", "/etc/celery/ca.pem", own)
    assert status.startswith("refused") or status in ("401", "403"), (target, port, status)


def test_prometheus_certificate_is_served(host: Any) -> None:
    cert = ("/etc/prometheus/tls/host.crt", "/etc/prometheus/tls/host.key")
    for target, port in EXPORTERS:
        if port == 9808:  # basic auth on top: its scrape is `up` in test_every_target_up
            continue
        status = fetch(host, f"https://{target}:{port}/metrics", "/etc/prometheus/tls/ca.crt", cert)
        assert status == "200", (target, port, status)


# The monitoring units each host runs, by its inventory groups (playbooks/monitoring.yml).
GROUP_UNITS = {
    "node_exporter": ["prometheus-node-exporter.service"],
    "redis_servers": [
        "prometheus-redis-exporter@broker.service",
        "prometheus-redis-exporter@results.service",
    ],
    "postgresql_servers": ["prometheus-postgres-exporter.service"],
    "celery_exporter": ["celery-exporter.service"],
    "prometheus": ["prometheus.service"],
    "alertmanager": ["prometheus-alertmanager.service"],
}


def exposure(h: Any, unit: str) -> float:
    out = h.check_output(f"systemd-analyze security {unit} --no-pager")
    return float(out.strip().splitlines()[-1].split(":")[1].split()[0])


@pytest.mark.parametrize("name", ["data1", "worker1", "worker2", "ops1"])
def test_monitoring_units_run_in_the_sandbox(name: str) -> None:
    """Each unit active, enabled, with the bundle's sandbox drop-in, rated at most 2; the hourly
    certificate expiry job (root, CAP_DAC_READ_SEARCH only) rated at most 2, and its file there."""
    h = other_host(name)
    groups = h.ansible.get_variables()["group_names"]
    units = [u for g, us in GROUP_UNITS.items() if g in groups for u in us]
    assert "prometheus-node-exporter.service" in units
    for unit in units:
        assert h.run(f"systemctl is-active {unit}").stdout.strip() == "active", (name, unit)
        assert h.service(unit).is_enabled, (name, unit)
        template = unit.split("@")[0] + "@.service" if "@" in unit else unit
        dropins = h.check_output(f"systemctl show -p DropInPaths --value {unit}").split()
        assert f"/etc/systemd/system/{template}.d/sandbox.conf" in dropins, (name, unit, dropins)
        assert exposure(h, unit) <= 2.0, (name, unit)
    assert h.service("pki-expiry-metrics.timer").is_enabled
    assert exposure(h, "pki-expiry-metrics.service") <= 2.0
    prom = h.file("/var/lib/prometheus/node-exporter/pki.prom").content_string
    assert 'path="/etc/prometheus/tls/host.crt"' in prom, prom


def test_broker_memory_past_70_percent_fires_its_alert(host: Any) -> None:
    """The broker's maxmemory lowered until it holds ~80 % of it (still serving): RedisMemoryHigh
    {redis=broker} reaches Alertmanager; the limit back, it resolves."""
    original = broker_admin("CONFIG GET maxmemory").splitlines()[-1]
    t0 = time.monotonic()
    try:
        used = info_field(broker_admin("INFO memory"), "used_memory")
        broker_admin(f"CONFIG SET maxmemory {int(used / 0.8)}")
        alert = wait_until(
            lambda: firing(host, "RedisMemoryHigh", redis="broker"), 180, "RedisMemoryHigh{broker}"
        )
        waited = time.monotonic() - t0
        print(f"MONITORING RedisMemoryHigh in Alertmanager {waited:.0f} s after 80 % of maxmemory")
        assert alert[0]["labels"]["host"] == "data1"
    finally:
        broker_admin(f"CONFIG SET maxmemory {original}")
    wait_until(
        lambda: not prom(host, 'ALERTS{alertname="RedisMemoryHigh",redis="broker"}'),
        120,
        "RedisMemoryHigh resolved in Prometheus",
    )
