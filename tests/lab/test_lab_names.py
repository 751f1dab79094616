"""Host and lab names: what the tool accepts (they become interface and directory names)."""

from __future__ import annotations

import pytest
from labkit.config import LAB_RE, NAME_RE
from labkit.labs import Lab, check_host_name
from labkit.shell import LabError


@pytest.mark.parametrize("name", ["node1", "a", "worker-2", "0abc", "x" * 31])
def test_host_names_accepted(name: str) -> None:
    assert NAME_RE.match(name)
    check_host_name(name)


@pytest.mark.parametrize(
    "name", ["", "Node1", "-node", "node_1", "node.1", "x" * 32, "node 1", "nöde"]
)
def test_host_names_refused(name: str) -> None:
    assert not NAME_RE.fullmatch(name)
    with pytest.raises(LabError, match="bad host name"):
        check_host_name(name)


@pytest.mark.parametrize("name", ["lab", "mol-cluster", "Lab_2", "a.b", "9", "x" * 41])
def test_lab_names_accepted(name: str) -> None:
    assert LAB_RE.match(name)


@pytest.mark.parametrize("name", ["", ".lab", "-lab", "_lab", "a/b", "a b", "x" * 42, "../x"])
def test_lab_names_refused(name: str) -> None:
    assert not LAB_RE.fullmatch(name)
    with pytest.raises(LabError, match="bad lab name"):
        Lab(name)
