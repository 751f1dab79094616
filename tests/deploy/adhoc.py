"""Helpers of the deploy tests: the bundle's own modules run by real Ansible on the controller."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


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
