"""lab.py's command line: the parser, and main() on what needs no root."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from labkit.cli import build_parser, main
from labkit.labs import Lab

MakeLab = Callable[..., Lab]
LAB_DIR = Path(__file__).resolve().parents[2] / "lab"


def test_up_options() -> None:
    a = build_parser().parse_args(["up", "--hosts", "n1,n2", "--no-wait", "--json"])
    assert (a.cmd, a.hosts, a.no_wait, a.json) == ("up", "n1,n2", True, True)


def test_lab_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAB_NAME", raising=False)
    p = build_parser()
    assert p.parse_args(["status"]).lab == "lab"
    assert p.parse_args(["--lab", "a", "down"]).lab == "a"
    assert p.parse_args(["down", "--lab", "b", "--all"]).lab == "b"
    assert p.parse_args(["--lab", "a", "stop", "n1", "--lab=c"]).lab == "c"


def test_lab_name_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_NAME", "mol-x")
    assert build_parser().parse_args(["status"]).lab == "mol-x"


def test_host_commands() -> None:
    p = build_parser()
    assert p.parse_args(["stop", "n1", "--force"]).force
    assert not p.parse_args(["stop", "n1"]).force
    assert p.parse_args(["reboot", "n1", "--no-wait"]).no_wait
    assert p.parse_args(["start", "n1"]).no_wait is False
    cut = p.parse_args(["restore", "n1"])
    assert (cut.cmd, cut.host) == ("restore", "n1")
    s = p.parse_args(["ssh", "n1", "journalctl", "-b", "--no-pager"])
    assert (s.host, s.command) == ("n1", ["journalctl", "-b", "--no-pager"])


@pytest.mark.parametrize(
    "argv", [[], ["bogus"], ["stop"], ["stop", "n1", "--no-wait"], ["cut", "n1", "--force"]]
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "usage: lab.py" in capsys.readouterr().err


def test_status_of_a_lab_that_is_not_up(
    make_lab: MakeLab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--lab", "nothing", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {}
    assert main(["status", "--lab", "nothing"]) == 0
    assert capsys.readouterr().out == "no lab is up\n"


def test_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lab", "bad name", "status"]) == 1
    assert capsys.readouterr().err.startswith("lab: error: bad lab name 'bad name'")


def test_the_script_runs_from_anywhere(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(LAB_DIR / "lab.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("usage: lab.py [-h] [--lab LAB]")
    assert "{up,down,status,image,purge,ssh,reboot,stop,start,cut,restore}" in out
