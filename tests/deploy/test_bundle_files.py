"""The bundle's `bundle_files` module (plugins/modules/bundle_files.py), run by real Ansible on the
controller (`ansible localhost -m bundle_files`, as root like the lab's runs): what it writes,
what it reports, check mode, diff mode and a bad entry."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

from adhoc import ROOT, run_module


def run(files: list[dict[str, Any]], *flags: str) -> dict[str, Any]:
    return run_module("bundle_files", {"files": files}, *flags)


def entries(tmp_path: Path, content: str = "a=1\n", mode: str = "0640") -> list[dict[str, Any]]:
    return [
        {"path": str(tmp_path / "d"), "state": "directory", "mode": "0750"},
        {"path": str(tmp_path / "d/one.conf"), "content": content, "mode": mode},
        {"path": str(tmp_path / "d/two.conf"), "content": "b=2\n", "mode": "0644"},
    ]


def test_writes_then_finds_nothing_to_do(tmp_path: Path) -> None:
    first = run(entries(tmp_path))
    assert first["changed"] is True
    assert first["changed_paths"] == [str(tmp_path / p) for p in ("d", "d/one.conf", "d/two.conf")]
    one = tmp_path / "d/one.conf"
    assert one.read_text() == "a=1\n"
    assert stat.S_IMODE(one.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    again = run(entries(tmp_path))
    assert (again["changed"], again["changed_paths"]) == (False, [])


def test_only_what_differs_is_written_and_named(tmp_path: Path) -> None:
    run(entries(tmp_path))
    two = tmp_path / "d/two.conf"
    inode = two.stat().st_ino
    (tmp_path / "d/one.conf").chmod(0o666)  # drift of the mode only
    result = run(entries(tmp_path, content="a=2\n"))
    assert result["changed_paths"] == [str(tmp_path / "d/one.conf")]
    assert (tmp_path / "d/one.conf").read_text() == "a=2\n"
    assert stat.S_IMODE((tmp_path / "d/one.conf").stat().st_mode) == 0o640
    assert two.stat().st_ino == inode  # untouched, not rewritten
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".bundle_files.")]


def test_check_mode_reports_and_writes_nothing(tmp_path: Path) -> None:
    run(entries(tmp_path))
    result = run(entries(tmp_path, content="a=3\n"), "--check")
    assert result["changed_paths"] == [str(tmp_path / "d/one.conf")]
    assert (tmp_path / "d/one.conf").read_text() == "a=1\n"
    fresh = run(entries(tmp_path / "new"), "--check")
    assert len(fresh["changed_paths"]) == 3
    assert not (tmp_path / "new").exists()


def test_diff_mode_shows_the_change(tmp_path: Path) -> None:
    run(entries(tmp_path))
    out = subprocess.run(
        [
            *(str(ROOT / ".venv/bin/ansible"), "localhost", "-m", "bundle_files", "--diff"),
            *("--check", "-a", json.dumps({"files": entries(tmp_path, content="a=9\n")})),
        ],
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "-a=1" in out and "+a=9" in out, out


def test_a_bad_entry_fails_naming_its_path(tmp_path: Path) -> None:
    bad = [{"path": str(tmp_path / "x.conf"), "content": "x\n", "mode": "644x"}]
    result = run(bad)
    assert result["status"] == "FAILED!"
    assert str(tmp_path / "x.conf") in result["msg"] and "octal" in result["msg"], result
    assert not (tmp_path / "x.conf").exists()
    nobody = [{"path": str(tmp_path / "y.conf"), "content": "y\n", "mode": "0640", "owner": "nope"}]
    result = run(nobody)
    assert result["status"] == "FAILED!" and "nope" in result["msg"], result


def test_validate_keeps_the_old_file_when_the_new_one_fails(tmp_path: Path) -> None:
    path = tmp_path / "rules.conf"
    good = [{"path": str(path), "content": "ok 1\n", "mode": "0600", "validate": "grep -q ok %s"}]
    assert run(good)["changed"] is True
    bad = [{"path": str(path), "content": "bad\n", "mode": "0600", "validate": "grep -q ok %s"}]
    result = run(bad)
    assert result["status"] == "FAILED!" and "grep -q ok %s" in result["msg"], result
    assert path.read_text() == "ok 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rules.conf"]  # no temporary file left
