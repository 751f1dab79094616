"""The Grafana dashboard roles/prometheus/files/dashboards/celery-cluster.json.

Grafana is not run here: the JSON's structure is checked (an importable dashboard: schema 39, the
data source an input, rows in order, unique panel ids, no overlapping panels, every panel with a
data source and queries), and every PromQL expression is parsed by promtool, written as recording
rules with Grafana's variables replaced ($__rate_interval -> 5m, $queue -> .*).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from .promtool import FILES, check_exprs, grafana_to_promql, unrecorded, where_failed

DASHBOARD = FILES / "dashboards" / "celery-cluster.json"
# One data source variable: picked from a list on import, and a provisioned dashboard (where
# Grafana substitutes no ${DS_...} input) still finds its Prometheus.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ROWS = ["Queues", "Workers", "Beat", "Redis", "PostgreSQL", "Hosts"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def exprs_of(dashboard: dict[str, Any]) -> dict[str, str]:
    """Where -> PromQL of every query, variables replaced; template variables' label_values()
    become the metric they read."""
    exprs = {}
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
            exprs[where] = grafana_to_promql(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            continue
        query = variable["query"]["query"]
        assert query.startswith("label_values("), variable
        metric = query.removeprefix("label_values(").rsplit(",", 1)[0]
        exprs[f"variable {variable['name']}"] = grafana_to_promql(metric)
    return exprs


def test_an_importable_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "celery-cluster"
    assert dashboard["id"] is None  # Grafana assigns it on import
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "${DS_" not in json.dumps(dashboard)  # no import-only input left


def test_the_rows_in_order(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ROWS
    # Each row has panels under it.
    kinds = [p["type"] for p in dashboard["panels"]]
    starts = [i for i, kind in enumerate(kinds) if kind == "row"] + [len(kinds)]
    assert all(b - a > 1 for a, b in itertools.pairwise(starts)), kinds


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], int] = {}
    for panel in all_panels(dashboard):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {panel['id']} overlaps {cells[x, y]}"
                cells[x, y] = panel["id"]


def test_every_panel_has_the_datasource_and_queries(dashboard: dict[str, Any]) -> None:
    for panel in data_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "datasource":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_every_expression_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    exprs = exprs_of(dashboard)
    assert len(exprs) >= 20
    done = check_exprs(exprs, tmp_path)
    assert done.returncode == 0, where_failed(done, exprs)


def test_recorded_series_it_reads_are_recorded_by_the_rules(dashboard: dict[str, Any]) -> None:
    assert unrecorded(exprs_of(dashboard)) == {}
