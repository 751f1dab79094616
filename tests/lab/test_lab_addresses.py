"""The address plan: everything a lab makes is named after its index N and its hosts' indexes J."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from labkit.labs import Lab
from labkit.shell import LabError

MakeLab = Callable[..., Lab]


def test_names_and_addresses(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("mol-x", index=7, hosts=("node1", "node2"))
    assert (lab.bridge, lab.subnet, lab.gateway) == ("clab7", "10.231.7.0/24", "10.231.7.1")
    assert [lab.address(h) for h in lab.hosts] == ["10.231.7.11", "10.231.7.12"]
    assert (lab.netns("node2"), lab.veth("node2")) == ("clab7-node2", "clab7h2")
    assert lab.dir == tmp_path / "mol-x"
    assert lab.root("node1") == tmp_path / "mol-x/hosts/node1/root"
    assert (lab.key.name, lab.known_hosts.name, lab.ssh_config.name) == (
        "id_ed25519",
        "known_hosts",
        "ssh_config",
    )


def test_interface_names_fit_the_kernel_limit(make_lab: MakeLab) -> None:
    lab = make_lab(index=249, hosts=tuple(f"h{j}" for j in range(1, 240)))
    assert max(len(lab.veth(h)) for h in lab.hosts) <= 15
    assert len(lab.bridge) <= 15
    assert lab.address("h239") == "10.231.249.249"


def test_host_indexes_fill_the_lowest_gap_and_stay(make_lab: MakeLab) -> None:
    lab = make_lab(hosts=("a", "b", "c"))
    assert {h: v["index"] for h, v in lab.hosts.items()} == {"a": 1, "b": 2, "c": 3}
    del lab.hosts["b"]
    lab.add_host("d")
    lab.add_host("a")  # known: keeps its index
    assert {h: v["index"] for h, v in lab.hosts.items()} == {"a": 1, "c": 3, "d": 2}


def test_state_round_trip(make_lab: MakeLab) -> None:
    lab = make_lab("saved", index=3, hosts=("n1",))
    lab.save()
    again = Lab("saved")
    assert again.state == lab.state
    assert again.address("n1") == "10.231.3.11"


def test_unknown_host_names_the_known_ones(make_lab: MakeLab) -> None:
    lab = make_lab("l", hosts=("n1", "n2"))
    assert lab.host("n1") == {"index": 1}
    with pytest.raises(LabError, match=r"no host 'x' in lab 'l' \(hosts: n1, n2\)"):
        lab.host("x")
    with pytest.raises(LabError, match=r"hosts: none"):
        make_lab("empty").host("x")
