"""The bundle's `bundle_files` module (plugins/modules/bundle_files.py), run by real Ansible on the
controller (`ansible localhost -m bundle_files`, as root like the lab's runs): what it writes,
what it reports, check mode, diff mode and a bad entry; the paths it lists on the host and its
action (plugins/action/bundle_files.py), which spares the run when the preflight's read shows
every entry as asked."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from adhoc import ROOT, load_plugin, run_module

bundle = load_plugin("plugins/filter/bundle.py")
bundle_files = load_plugin("plugins/modules/bundle_files.py")


# The module's list of managed paths, here rather than in the controller's /var/lib.
MANIFEST = Path(tempfile.mkdtemp(prefix="bundle_files-test.")) / "paths"


def run(files: list[dict[str, Any]], *flags: str) -> dict[str, Any]:
    return run_module("bundle_files", {"files": files, "manifest": str(MANIFEST)}, *flags)


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


def read_files(manifest: Path) -> dict[str, Any]:
    """What the preflight's read (playbooks/tasks/host_state.yml, its `#files` and `#sha256` part,
    run here on the module's manifest) gives the action as `bundle_file_state`."""
    read, digests = yaml.safe_load((ROOT / "playbooks/tasks/host_state.yml").read_text())[:2]
    command = read["ansible.builtin.shell"]
    command = command[command.index("echo '#files'") :] + " && " + digests["ansible.builtin.shell"]
    assert command.count(bundle_files.MANIFEST) == 4  # the read lists what the module records
    part = command.replace(bundle_files.MANIFEST, str(manifest))
    out = subprocess.run(["sh", "-c", part], capture_output=True, text=True, check=True).stdout
    return dict(bundle.host_state(out)["files"])


def run_read(files: list[dict[str, Any]], manifest: Path, read: dict[str, Any]) -> dict[str, Any]:
    args = {"files": files, "manifest": str(manifest)}
    return run_module("bundle_files", args, "-e", json.dumps({"bundle_file_state": read}))


def test_every_path_is_listed_in_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m/paths"
    run_module("bundle_files", {"files": entries(tmp_path), "manifest": str(manifest)})
    listed = manifest.read_text().splitlines()
    assert listed == sorted(e["path"] for e in entries(tmp_path))
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert stat.S_IMODE(manifest.parent.stat().st_mode) == 0o700
    extra = [{"path": str(tmp_path / "e.conf"), "content": "e\n", "mode": "0600"}]
    run_module("bundle_files", {"files": extra, "manifest": str(manifest)})
    assert manifest.read_text().splitlines() == sorted([*listed, str(tmp_path / "e.conf")])


def test_the_read_of_the_host_spares_the_run_only_when_nothing_differs(tmp_path: Path) -> None:
    manifest = tmp_path / "paths"
    assert run_read(entries(tmp_path), manifest, {})["changed"] is True  # nothing read: it runs
    read = read_files(manifest)
    assert read[str(tmp_path / "d")] == {
        **{"type": "directory", "mode": 0o750, "owner": "root", "group": "root", "sha256": ""}
    }
    assert read[str(tmp_path / "d/one.conf")]["sha256"] == hashlib.sha256(b"a=1\n").hexdigest()
    spared = run_read(entries(tmp_path), manifest, read)
    assert (spared["changed"], spared["changed_paths"], spared["remote"]) == (False, [], False)
    # Drift the read finds (a mode, then a content): the module runs and puts it back.
    (tmp_path / "d/one.conf").chmod(0o666)
    fixed = run_read(entries(tmp_path), manifest, read_files(manifest))
    assert fixed["changed_paths"] == [str(tmp_path / "d/one.conf")], fixed
    assert stat.S_IMODE((tmp_path / "d/one.conf").stat().st_mode) == 0o640
    (tmp_path / "d/two.conf").write_text("b=3\n")
    fixed = run_read(entries(tmp_path), manifest, read_files(manifest))
    assert fixed["changed_paths"] == [str(tmp_path / "d/two.conf")], fixed
    assert (tmp_path / "d/two.conf").read_text() == "b=2\n"
    # A new content, a new owner: not as read, so the module runs.
    changed = run_read(entries(tmp_path, content="a=4\n"), manifest, read_files(manifest))
    assert changed["changed_paths"] == [str(tmp_path / "d/one.conf")], changed
    owner = [{**entries(tmp_path)[2], "owner": "nobody"}]
    assert run_read(owner, manifest, read_files(manifest))["changed_paths"] == [owner[0]["path"]]
    # A mode the module refuses is never taken as read, even where the file has that mode.
    bad = [{**entries(tmp_path, content="a=4\n")[1], "mode": "00640"}]
    refused = run_read(bad, manifest, read_files(manifest))
    assert refused["status"] == "FAILED!" and "octal" in refused["msg"], refused
