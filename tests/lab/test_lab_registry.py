"""Index allocation from a registry dict: round robin, skipping what is used or routed."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from labkit.config import MAX_LABS
from labkit.registry import claim_index, parse_foreign_routes
from labkit.shell import LabError


def never(n: int) -> bool:
    return False


def registry(*indexes: int, next_index: int | None = None) -> dict[str, Any]:
    reg: dict[str, Any] = {"labs": {f"/other/.lab/l{n}": {"index": n} for n in indexes}}
    if next_index is not None:
        reg["next"] = next_index
    return reg


def test_first_lab_gets_zero_and_is_recorded() -> None:
    reg = registry()
    assert claim_index(reg, Path("/repo/.lab/mol-x"), [], never) == 0
    entry = reg["labs"]["/repo/.lab/mol-x"]
    assert (entry["index"], entry["name"], reg["next"]) == (0, "mol-x", 1)
    assert entry["since"].endswith("Z")


def test_round_robin_from_next_skipping_used_indexes() -> None:
    reg = registry(5, 6, next_index=5)
    assert claim_index(reg, Path("/a"), [], never) == 7
    assert reg["next"] == 8
    # A removed lab's index is not handed out again at once.
    del reg["labs"]["/other/.lab/l5"]
    assert claim_index(reg, Path("/b"), [], never) == 8


def test_wraps_around() -> None:
    reg = registry(MAX_LABS - 1, next_index=MAX_LABS - 1)
    assert claim_index(reg, Path("/a"), [], never) == 0
    assert reg["next"] == 1


def test_skips_routed_subnets_and_existing_bridges() -> None:
    foreign = [ipaddress.IPv4Network("10.231.0.0/23")]  # covers labs 0 and 1
    assert claim_index(registry(), Path("/a"), foreign, lambda n: n == 2) == 3


def test_no_free_subnet() -> None:
    foreign = [ipaddress.IPv4Network("10.231.0.0/16")]
    with pytest.raises(LabError, match=r"no free lab subnet in 10\.231\.0\.0/16 \(2 labs"):
        claim_index(registry(1, 2), Path("/a"), foreign, never)


def test_foreign_routes_leave_out_labs_defaults_and_local() -> None:
    routes = """\
default via 192.168.1.1 dev eth0 proto dhcp
10.231.0.0/24 dev clab0 proto kernel scope link src 10.231.0.1
172.17.0.0/16 dev docker0 proto kernel scope link src 172.17.0.1 linkdown
192.168.1.0/24 dev eth0 proto kernel scope link src 192.168.1.20
10.231.255.1 dev clabproxy table local proto kernel scope host src 10.231.255.1
local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1
broadcast 192.168.1.255 dev eth0 table local proto kernel scope link src 192.168.1.20
unreachable 10.99.0.0/16
blackhole 10.98.0.0/16
"""
    assert [str(n) for n in parse_foreign_routes(routes)] == [
        "172.17.0.0/16",
        "192.168.1.0/24",
    ]
