"""iptables rules: what `up` adds, and what `down` finds again in `iptables -S` by the lab's tag."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from labkit.labs import Lab
from labkit.net import iptables_rules, lab_link, tagged_rules

MakeLab = Callable[..., Lab]


def tagged(rule: str, tag: str = "clab3") -> list[str]:
    return [*rule.split(), "-m", "comment", "--comment", tag]


def test_rules_of_a_lab(make_lab: MakeLab) -> None:
    assert iptables_rules(make_lab(index=3)) == [
        ("nat", tagged("POSTROUTING -s 10.231.3.0/24 ! -o clab3 -j MASQUERADE")),
        ("filter", tagged("FORWARD -i clab3 -j ACCEPT")),
        ("filter", tagged("FORWARD -o clab3 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")),
        ("filter", tagged("INPUT -i clab3 -d 10.231.255.1 -p tcp --dport 3143 -j ACCEPT")),
        # Inserted at the top one after the other: the DROP of other labs is evaluated first.
        ("filter", tagged("FORWARD -i clab3 ! -o clab3 -d 10.231.0.0/16 -j DROP")),
    ]


def test_down_finds_exactly_its_own_rules(make_lab: MakeLab) -> None:
    mine = [rule for _, rule in iptables_rules(make_lab(index=3))]
    theirs = [rule for _, rule in iptables_rules(make_lab("other", index=31))]
    # `iptables -S` prints the comment match where it was given, quoted when needed.
    listing = "\n".join(
        ["-P FORWARD DROP", "-N DOCKER", '-A INPUT -m comment --comment "clab3 x" -j ACCEPT']
        + [f"-A {shlex.join(rule)}" for rule in theirs + mine]
        + ["-A FORWARD -j DOCKER"]
    )
    assert tagged_rules(listing, "clab3") == mine
    assert tagged_rules(listing, "clab31") == theirs
    assert tagged_rules(listing, "clab4") == []


def test_links_of_a_lab() -> None:
    assert lab_link("clab3", "clab3")
    assert lab_link("clab3h12", "clab3")
    for other in ("clab31", "clab31h1", "clab3h", "clab3-node1", "clabproxy", "eth0", "clab3h1x"):
        assert not lab_link(other, "clab3"), other
