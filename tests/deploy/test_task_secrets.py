"""No task hands a secret to a host through `environment:`: Ansible runs the module as
`sh -c 'NAME=value python3 ...'`, so the value sits in that shell's command line, which any user
of the host reads in /proc while the task runs (the cluster's lockdown test caught the Redis admin
password so, during a `site.yml --check`). A task gives a secret on its stdin instead
(roles/redis: `redis_admin_login`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from adhoc import ROOT, tasks

SECRET = re.compile(r"password|secret|token|passphrase|private_key", re.IGNORECASE)


def task_files() -> list[Path]:
    patterns = ("roles/*/tasks/*.yml", "roles/*/handlers/*.yml", "playbooks/*.yml", "site.yml")
    return sorted(path for pattern in patterns for path in ROOT.glob(pattern))


def secrets_in_environment(task: dict[str, Any]) -> list[str]:
    """The names of a task's (or play's) `environment:` entries that carry a secret."""
    env = task.get("environment") or {}
    return [name for name, value in env.items() if SECRET.search(f"{name} {value}")]


def test_no_secret_in_a_tasks_environment() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {task.get('name', '?')}: {name}"
        for path in task_files()
        for task in tasks(path)
        for name in secrets_in_environment(task)
    ]
    assert len(task_files()) > 20 and not found, found


def test_the_check_finds_a_secret_in_environment(tmp_path: Path) -> None:
    """The check above can fail: the task the lockdown test caught, as it was."""
    path = tmp_path / "main.yml"
    path.write_text(
        "- name: Check that each instance answers the admin user\n"
        "  ansible.builtin.command: redis-cli PING\n"
        "  environment:\n"
        "    REDISCLI_AUTH: '{{ redis_admin_password }}'\n"
    )
    (task,) = tasks(path)
    assert secrets_in_environment(task) == ["REDISCLI_AUTH"]
