"""The hosts `up` boots by default: every host of inventories/lab, once, in order."""

from __future__ import annotations

import pytest
from labkit.config import NAME_RE
from labkit.labs import inventory_host_names, inventory_hosts


def test_nested_groups_each_host_once() -> None:
    data = {
        "all": {
            "vars": {"ansible_user": "root"},
            "children": {
                "redis_servers": {"hosts": {"data1": None}},
                "celery_workers": {
                    "hosts": {"worker1": {"x": 1}, "worker2": None},
                    "children": {"beat": {"hosts": {"worker1": None, "ops1": None}}},
                },
                "empty": None,
                "no_hosts": {"hosts": None, "children": None},
            },
        }
    }
    assert inventory_host_names(data) == ["data1", "worker1", "worker2", "ops1"]


def test_no_hosts() -> None:
    assert inventory_host_names({"all": {"children": {}}}) == []


def test_the_lab_inventory() -> None:
    pytest.importorskip("yaml")
    names = inventory_hosts()
    assert names
    assert all(NAME_RE.match(n) for n in names)
