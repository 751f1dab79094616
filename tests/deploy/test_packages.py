"""One apt run per host: every role whose own apt step installs a list announces that same list
in its preflight, and site.yml installs what the roles of a host announced right after the
preflight, before any role runs (playbooks/packages.yml). The one role left apart is
prometheus_common, whose packages go without their recommends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from adhoc import tasks

REPO = Path(__file__).resolve().parents[2]
APT = "ansible.builtin.apt"
# A preflight's announcement: its role's list added to the host's (`bundle_packages`).
ANNOUNCE = r"bundle_packages \| default\(\[\]\) \+ (\w+)"


def apt_steps() -> dict[str, list[dict[str, Any]]]:
    """role -> the apt steps of its task files."""
    steps: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(REPO.glob("roles/*/tasks/*.yml")):
        for task in tasks(path):
            if APT in task:
                steps.setdefault(path.parts[-3], []).append(task[APT])
    return steps


def variable(expression: str, pattern: str = r"(\w+)") -> str:
    """The variable an expression is made of: `{{ NAME }}`, or PATTERN's group inside `{{ }}`."""
    match = re.fullmatch(r"\{\{\s*" + pattern + r"\s*\}\}", str(expression))
    assert match, f"not of the form {pattern!r}: {expression!r}"
    return match.group(1)


def test_every_roles_packages_are_announced_to_the_one_apt_run() -> None:
    steps = apt_steps()
    assert {"firewall", "redis", "postgresql", "celery_app", "prometheus_common"} <= set(steps)
    for role, found in steps.items():
        if role == "prometheus_common":
            assert [s.get("install_recommends") for s in found] == [False]
            continue
        announced = {
            variable(t["ansible.builtin.set_fact"]["bundle_packages"], ANNOUNCE)
            for t in tasks(REPO / "roles" / role / "tasks" / "preflight.yml")
            if "bundle_packages" in t.get("ansible.builtin.set_fact", {})
        }
        assert {variable(step["name"]) for step in found} <= announced, (role, announced)


def test_the_one_apt_run_comes_after_the_preflight_and_before_every_role() -> None:
    site = [
        p["ansible.builtin.import_playbook"]
        for p in yaml.safe_load((REPO / "site.yml").read_text())
    ]
    assert site[:2] == ["playbooks/preflight.yml", "playbooks/packages.yml"], site
    (play,) = yaml.safe_load((REPO / "playbooks" / "packages.yml").read_text())
    assert "tags" not in play  # untagged: a run with --tags leaves it to the roles' own steps
    apt = next(t[APT] for t in play["tasks"] if APT in t)
    assert apt["policy_rc_d"] == 101  # nothing starts on Debian's defaults
