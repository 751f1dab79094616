"""Helpers of the deploy tests: the bundle's own modules run by real Ansible on the controller,
and its plugins loaded as Python modules."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_plugin(path: str) -> ModuleType:
    """A plugin file of the project (`plugins/filter/bundle.py`) as a module, to call directly."""
    spec = importlib.util.spec_from_file_location(Path(path).stem + "_under_test", ROOT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_module(module: str, args: dict[str, Any], *flags: str) -> dict[str, Any]:
    """`ansible localhost -m MODULE -a ARGS -o` (as root, like the lab's runs): its result, and
    `status` (CHANGED, SUCCESS or FAILED!)."""
    out = subprocess.run(
        [
            str(ROOT / ".venv/bin/ansible"),
            "localhost",
            "-m",
            module,
            "-a",
            json.dumps(args),
            "-o",
            *flags,
        ],
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # one line: "localhost | CHANGED => {...}" (or SUCCESS / FAILED!), --diff's lines before it
    line = next(x for x in out.stdout.splitlines() if x.startswith("localhost |"))
    return dict(json.loads(line.split("=>", 1)[1]), status=line.split()[2])


def tasks(path: Path) -> list[dict[str, Any]]:
    """The tasks of a task or handler file, or the plays of a playbook, blocks opened."""
    out: list[dict[str, Any]] = []
    for task in yaml.safe_load(path.read_text()) or []:
        out.extend(_tasks_of(task))
    return out


def _tasks_of(task: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("block", "rescue", "always", "pre_tasks", "tasks", "post_tasks", "handlers")
    inner = [t for key in keys for t in task.get(key) or []]
    return [task] + [x for t in inner for x in _tasks_of(t)]
