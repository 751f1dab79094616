"""Daily reports and pricing backups: files written once per day, restorable, with retention."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from conftest import ENV, run, taskctl
from test_pricing import new_material, new_quote

from app.db import session_scope
from app.models import Material


def test_daily_report_of_a_day_written_twice_is_the_same(alive: Any) -> None:
    new_quote(new_material())
    today = datetime.now(UTC).date().isoformat()
    first = run("data.generate_daily_reports", today)
    assert first.state == "SUCCESS", first.result
    files = [Path(f) for f in first.result["files"]]
    assert [f.name for f in files] == ["summary.json", "quotes.csv"]
    summary = json.loads(files[0].read_text())
    assert summary["report_date"] == today and summary["quotes_created"] >= 1
    assert len(files[1].read_text().splitlines()) == summary["quotes_created"] + 1
    contents = [f.read_bytes() for f in files]
    second = run("data.generate_daily_reports", today).result
    assert second["files"] == first.result["files"]
    assert [f.read_bytes() for f in files] == contents
    assert sorted(os.listdir(files[0].parent)) == ["quotes.csv", "summary.json"]  # no leftovers


def test_daily_report_defaults_to_yesterday_and_refuses_bad_dates(alive: Any) -> None:
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert run("data.generate_daily_reports").result["report_date"] == yesterday
    for bad, message in (("2024-13-01", "not a date"), ("2999-01-01", "in the future")):
        result = run("data.generate_daily_reports", bad)
        assert result.state == "FAILURE" and message in str(result.result)


def test_backup_restores_and_keeps_the_newest(alive: Any) -> None:
    backups = Path(ENV["APP_BACKUP_DIR"])
    backups.mkdir(parents=True, exist_ok=True)
    for day in ("20200101", "20200102", "20200103", "20200104"):  # older backups to prune
        (backups / f"pricing-{day}.json.gz").write_bytes(b"old")
    code = new_material("7.0000")
    result = run("data.backup_pricing_data")
    assert result.state == "SUCCESS", result.result
    out = result.result
    path = Path(out["file"])
    assert out["tables"]["materials"] >= 5 and out["tables"]["quotes"] >= 2
    assert sorted(out["deleted"]) == ["pricing-20200101.json.gz", "pricing-20200102.json.gz"]
    assert len(list(backups.glob("pricing-*.json.gz"))) == 3  # APP_BACKUP_KEEP
    payload = json.loads(gzip.decompress(path.read_bytes()))
    assert any(m["code"] == code for m in payload["tables"]["materials"])
    # Damage the data, then restore from the backup (twice: the same state).
    with session_scope() as s:
        material = s.get(Material, code)
        assert material is not None
        material.unit_cost = Decimal("99")
    for _ in range(2):
        done = taskctl("db", "restore-pricing", str(path))
        assert done.returncode == 0, done.stderr
    with session_scope() as s:
        assert s.get(Material, code).unit_cost == Decimal("7.0000")  # type: ignore[union-attr]
    # A second backup the same day replaces the file (same name, nothing added).
    again = run("data.backup_pricing_data").result
    assert again["file"] == out["file"] and again["deleted"] == []


def test_restore_refuses_a_file_that_is_not_a_backup(database: Any, tmp_path: Path) -> None:
    junk = tmp_path / "junk.json.gz"
    junk.write_bytes(gzip.compress(b'{"format": "other"}'))
    done = taskctl("db", "restore-pricing", str(junk))
    assert done.returncode == 2 and "not a celery-bundle-pricing-backup" in done.stderr
