"""The lab tool's pure parts (lab/labkit): no root, no network, nothing booted."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / "lab"
sys.path.insert(0, str(LAB_DIR))

from labkit import labs  # noqa: E402


@pytest.fixture
def make_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., labs.Lab]:
    """A Lab under tmp_path with index INDEX and HOSTS (in order), as `up` would have saved it."""
    monkeypatch.setattr(labs, "STATE_ROOT", tmp_path)

    def make(name: str = "t1", index: int = 7, hosts: tuple[str, ...] = ()) -> labs.Lab:
        lab = labs.Lab(name)
        state: dict[str, Any] = {"name": name, "index": index, "image": "/img"}
        lab.state = state
        for host in hosts:
            lab.add_host(host)
        return lab

    return make
