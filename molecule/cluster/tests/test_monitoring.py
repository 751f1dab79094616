"""Metrics and alerts on the converged cluster: Prometheus scrapes every exporter (all `up`), a
task's counter grows after it runs, a queue nobody consumes and a broker at 80 % of its memory
fire their alerts in Alertmanager, mailed once, and resolve; an exporter answers no one without the
CA's client certificate. (The ports closed to a host outside the cluster: test_lockdown.py.)"""

from __future__ import annotations

import shlex
import time
from typing import Any

import pytest
from conftest import app_python, other_host
from monitoring import firing, mail_subjects, prom, wait_until
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


def test_node_exporters_run_the_collectors_the_rules_read(host: Any) -> None:
    """The collectors the rules and dashboards read answer on every host; the two the role turns
    off by default (node_exporter_disabled_collectors: their CPU, series nothing reads) do not."""
    hosts = {"data1", "worker1", "worker2", "ops1"}
    for collector in ("cpu", "filesystem", "meminfo", "textfile"):
        query = f'node_scrape_collector_success{{collector="{collector}"}} == 1'
        assert {s["metric"]["host"] for s in prom(host, query)} == hosts, collector
    off = prom(host, 'node_scrape_collector_success{collector=~"systemd|netclass"}')
    assert off == [], off


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


# A 32 MB string in the broker while its memory alert is provoked: the few MB it holds otherwise
# move by a tenth with its clients' buffers, enough to cross 70 % both ways (a mail, then its
# resolution) when the limit is set at 80 %.
BALLAST = "test:monitoring:ballast"


def hold_broker_at_80_percent() -> None:
    """maxmemory set so that the broker's memory is 80 % of it, again at each call (queues and
    client buffers still move a little)."""
    used = info_field(broker_admin("INFO memory"), "used_memory")
    broker_admin(f"CONFIG SET maxmemory {int(used / 0.8)}")


def test_alerts_fire_mail_once_and_resolve(host: Any) -> None:
    """Two incidents at once (their waits shared): every instance consuming `pricing` stopped while
    `pricing` has messages, and the broker held at ~80 % of its maxmemory (still serving).
    Alertmanager gets CeleryQueueNotConsumed{queue_name=pricing} (critical) and RedisMemoryHigh
    {redis=broker} (warning, host data1) and mails each once (to the test's SMTP sink); once the
    consumers run again and the limit is back, Prometheus resolves both and the queue's
    resolution is mailed too."""
    wanted = {
        "CeleryQueueNotConsumed": {"queue_name": "pricing"},
        "RedisMemoryHigh": {"redis": "broker"},
    }
    before = {name: len(mail_subjects(host, name)) for name in wanted}
    original = broker_admin("CONFIG GET maxmemory").splitlines()[-1]
    workers = [other_host("worker1"), other_host("worker2")]
    t0 = time.monotonic()
    seen: dict[str, dict[str, Any]] = {}

    def both_firing() -> bool:
        hold_broker_at_80_percent()
        for name, labels in wanted.items():
            if name not in seen and (found := firing(host, name, **labels)):
                seen[name] = found[0]
                print(f"MONITORING {name} in Alertmanager {time.monotonic() - t0:.0f} s after")
        return len(seen) == len(wanted)

    try:
        broker_admin(f"SETRANGE {BALLAST} {32 * 2**20} x")
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
        wait_until(both_firing, 240, f"{' and '.join(wanted)} firing in Alertmanager")
        assert seen["CeleryQueueNotConsumed"]["labels"]["severity"] == "critical"
        assert "pricing" in seen["CeleryQueueNotConsumed"]["annotations"]["summary"]
        assert seen["RedisMemoryHigh"]["labels"]["host"] == "data1"
        for name in wanted:
            mail = wait_until(
                lambda n=name: mail_subjects(host, n)[before[n] :], 60, f"the {name} mail"
            )
            assert mail[0].startswith("[FIRING"), mail
        for _ in range(4):  # two group intervals (10 s here): each incident still mailed once
            hold_broker_at_80_percent()
            time.sleep(5)
        for name in wanted:
            assert len(mail_subjects(host, name)) == before[name] + 1, name
    finally:
        broker_admin(f"CONFIG SET maxmemory {original}")
        broker_admin(f"DEL {BALLAST}")
        for w in workers:
            w.check_output("systemctl start celery-worker@pricing.service")
    t1 = time.monotonic()
    wait_until(
        lambda: (
            not prom(
                host,
                'ALERTS{alertname="CeleryQueueNotConsumed",queue_name="pricing"}'
                ' or ALERTS{alertname="RedisMemoryHigh",redis="broker"}',
            )
        ),
        180,
        "both resolved in Prometheus",
    )
    print(f"MONITORING both resolved {time.monotonic() - t1:.0f} s after the start")
    name = "CeleryQueueNotConsumed"
    mails = wait_until(
        lambda: mail_subjects(host, name)[before[name] + 1 :], 90, f"the {name} resolved mail"
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
