"""The alert rules (roles/prometheus/files/rules): promtool checks, unit tests, and a contract.

Every rules file passes `promtool check rules` (duplicate-rule lint fatal); every unit test file in
tests/monitoring/rules passes `promtool test rules`; every alert has a test where it fires (labels
and annotations checked) and one where it must not; every alert has a severity, a summary, a
description and a runbook anchor; docs/ALERTS.md's table lists exactly the alerts.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.queues import QUEUES

from .promtool import REPO, RULE_TESTS_DIR, RULES_DIR, output, run, tools

RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.test.yml"))
THRESHOLDS = RULES_DIR / "celery_queue_thresholds.rules.yml"
ALERTS_DOC = REPO / "docs" / "ALERTS.md"
RUNBOOK = REPO / "docs" / "RUNBOOK.md"
RUNBOOK_LINK = re.compile(r"^docs/RUNBOOK\.md#([a-z0-9-]+)$")

# The alerts asked for (and RedisDown, PostgresDown: a server its exporter cannot reach).
EXPECTED_ALERTS = {
    "HostDown",
    "TargetDown",
    "CeleryWorkerDown",
    "CeleryQueueNotConsumed",
    "CeleryQueueTooOld",
    "RedisDown",
    "RedisMemoryHigh",
    "PostgresDown",
    "PostgresConnectionsHigh",
    "DiskAlmostFull",
    "CeleryTaskFailureRatioHigh",
    "CeleryBeatSilent",
    "TLSCertificateExpiringSoon",
    "CeleryExporterBlind",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def rule_tests() -> list[tuple[Path, dict[str, Any]]]:
    """(test file, alert_rule_test case) of every unit test."""
    return [
        (path, case)
        for path in TEST_FILES
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_the_rule_files_define_the_alerts() -> None:
    # Guards the parametrisations below: a wrong directory would pass vacuously.
    assert {rule["alert"] for rule in alert_rules()} == EXPECTED_ALERTS
    assert THRESHOLDS in RULE_FILES
    assert len(TEST_FILES) >= 5


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rule_file: Path) -> None:
    done = run(tools().promtool, "check", "rules", "--lint-fatal", rule_file)
    assert done.returncode == 0, output(done)
    assert "SUCCESS" in done.stdout, output(done)


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(test_file: Path) -> None:
    done = run(tools().promtool, "test", "rules", test_file)
    assert done.returncode == 0, output(done)


def test_every_rule_file_is_unit_tested() -> None:
    tested = {
        (path.parent / rule_file).resolve()
        for path in TEST_FILES
        for rule_file in load(path)["rule_files"]
    }
    assert set(RULE_FILES) <= tested, sorted(p.name for p in set(RULE_FILES) - tested)


def test_every_alert_fires_and_stays_quiet_in_a_test() -> None:
    fires: dict[tuple[str, str], int] = Counter()  # (alert, severity) -> checked firings
    quiet: dict[str, int] = Counter()
    for path, case in rule_tests():
        expected = case.get("exp_alerts") or []
        if not expected:
            quiet[case["alertname"]] += 1
        for alert in expected:
            # A firing is checked whole: its severity and every annotation.
            where = f"{path.name}: {case['alertname']} at {case['eval_time']}"
            assert "severity" in alert.get("exp_labels", {}), where
            annotations = alert.get("exp_annotations", {})
            assert {"summary", "description", "runbook"} <= set(annotations), where
            fires[case["alertname"], alert["exp_labels"]["severity"]] += 1
    rules = {(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()}
    assert sorted(rules - set(fires)) == [], "alerts (and severities) never expected to fire"
    assert sorted({name for name, _ in rules} - set(quiet)) == [], "alerts never expected quiet"


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_alert_has_severity_summary_description_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert "for" in rule
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook"}
    # The summary and the description name the thing (a label), not only the alert.
    assert "$labels." in annotations["summary"]
    assert "$labels." in annotations["description"]
    assert RUNBOOK_LINK.match(annotations["runbook"]), annotations["runbook"]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_runbook_anchors_exist() -> None:
    used = {RUNBOOK_LINK.match(rule["annotations"]["runbook"]).group(1) for rule in alert_rules()}
    headings = re.findall(r"^#{2,6}\s+(.+?)\s*$", RUNBOOK.read_text(), re.MULTILINE)
    anchors = {github_anchor(h) for h in headings}
    if not used & anchors:
        # Until docs/RUNBOOK.md has its alert sections; from the first one on, all are required.
        pytest.skip(f"docs/RUNBOOK.md has no alert section yet; needed: {', '.join(sorted(used))}")
    assert sorted(used - anchors) == [], "runbook anchors the alerts link to but RUNBOOK.md lacks"


# | `Alert` | severity | fires when | for | first step |
DOC_ROW = re.compile(r"^\|\s*`(\w+)`\s*\|\s*(\w+)\s*\|[^|]*\|\s*`?(\w+)`?\s*\|", re.MULTILINE)


def doc_table() -> list[tuple[str, str, str]]:
    """(alert, severity, for) of the rows of docs/ALERTS.md's alert table."""
    return sorted(DOC_ROW.findall(ALERTS_DOC.read_text()))


def test_alerts_doc_lists_every_alert_with_its_severity_and_for() -> None:
    rules = sorted(
        (rule["alert"], rule["labels"]["severity"], rule["for"]) for rule in alert_rules()
    )
    assert doc_table() == rules


def test_queue_thresholds_are_a_plain_list_covering_every_queue() -> None:
    rules = load(THRESHOLDS)["groups"][0]["rules"]
    *per_queue, default = rules
    assert default == {
        "record": "celery:queue_age_threshold_seconds:default",
        "expr": "vector(300)",
    }
    thresholds: dict[str, float] = {}
    for rule in per_queue:
        assert rule["record"] == "celery:queue_age_threshold_seconds", rule
        assert set(rule["labels"]) == {"queue_name"}, rule
        number = re.fullmatch(r"vector\((\d+(?:\.\d+)?)\)", rule["expr"])
        assert number, f"{rule}: expr must be vector(SECONDS)"
        queue = rule["labels"]["queue_name"]
        assert queue not in thresholds, f"{queue} listed twice"
        thresholds[queue] = float(number.group(1))
        assert thresholds[queue] > 0, rule
    assert set(thresholds) == set(QUEUES), "a line per queue of app/queues.py"


def rendered_alertmanager_config() -> dict:
    """The alertmanager role's template, rendered with its defaults and a relay and a recipient."""
    import jinja2

    role = REPO / "roles" / "alertmanager"
    # A YAML file, not HTML: nothing to escape.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)  # noqa: S701
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = lambda v: str(v).lower() in ("1", "true", "yes", "on")
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    values = {
        **{k: v for k, v in defaults.items() if not str(v).startswith("{{")},
        "ansible_managed": "test",
        "alertmanager_smtp_host": "smtp.example.internal",
        "alertmanager_smtp_port": 587,
        "alertmanager_smtp_user": "",
        "alertmanager_smtp_password": "",
        "alertmanager_smtp_starttls": True,
        "alertmanager_mail_from": "alerts@example.internal",
        "alertmanager_recipients": ["ops@example.internal"],
    }
    text = env.from_string((role / "templates" / "alertmanager.yml.j2").read_text()).render(values)
    return dict(yaml.safe_load(text))


def test_alertmanager_config_is_valid_and_inhibits_as_documented(tmp_path: Path) -> None:
    """The role's alertmanager.yml passes amtool, and its inhibitions are docs/ALERTS.md's."""
    config = rendered_alertmanager_config()
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    done = run(tools().amtool, "check-config", path)
    assert done.returncode == 0, output(done)
    inhibit = config["inhibit_rules"]
    assert any(
        "alertname = HostDown" in rule["source_matchers"] and rule["equal"] == ["host"]
        for rule in inhibit
    )
    text = ALERTS_DOC.read_text()
    match = re.search(r"^## Inhibition$.*?^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/ALERTS.md: a ```yaml block under '## Inhibition'"
    assert yaml.safe_load(match.group(1))["inhibit_rules"] == inhibit, (
        "docs/ALERTS.md's inhibit_rules differ from the alertmanager role's template"
    )


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    # The unit tests can fail: an annotation expected wrong makes promtool fail, naming it.
    source = RULE_TESTS_DIR / "redis.test.yml"
    tests = load(source)
    tests["rule_files"] = [str((source.parent / f).resolve()) for f in tests["rule_files"]]
    case = tests["tests"][1]["alert_rule_test"][1]["exp_alerts"][0]
    case["exp_annotations"]["summary"] = case["exp_annotations"]["summary"].replace("70%", "71%")
    path = tmp_path / "wrong.test.yml"
    path.write_text(yaml.safe_dump(tests))
    done = run(tools().promtool, "test", "rules", path)
    assert done.returncode != 0, output(done)
    assert "71%" in done.stdout + done.stderr


def test_every_alert_group_is_in_one_file_only() -> None:
    groups: dict[str, list[str]] = defaultdict(list)
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            groups[group["name"]].append(path.name)
    assert {name: files for name, files in groups.items() if len(files) > 1} == {}
