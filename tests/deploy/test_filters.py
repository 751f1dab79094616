"""The filters every role shares (plugins/filter/bundle.py), with real readers: an env file
value read back by a POSIX shell, and the rule for a host's cluster address."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from adhoc import ROOT, load_plugin

bundle = load_plugin("plugins/filter/bundle.py")


@pytest.mark.parametrize(
    "value",
    ["plain", 'with "quotes"', "back\\slash\\", "$HOME and ${X}", "`id`", "a'b c", "p@ss:w/rd%"],
)
def test_env_quote_reads_back_unchanged_in_a_shell(value: str, tmp_path: Path) -> None:
    env = tmp_path / "x.env"
    env.write_text(f"X={bundle.env_quote(value)}\n")
    out = subprocess.run(
        ["sh", "-c", f'. "{env}"; printf %s "$X"'], capture_output=True, text=True, check=True
    )
    assert out.stdout == value


def test_host_address_prefers_the_cluster_address() -> None:
    facts = {"default_ipv4": {"address": "192.0.2.10"}}
    both = {"cluster_address": "10.0.0.5", "ansible_facts": facts}
    assert bundle.host_address(both) == "10.0.0.5"
    assert bundle.host_address({"ansible_facts": facts}) == "192.0.2.10"


def test_host_address_names_the_host_without_any_address() -> None:
    with pytest.raises(ValueError, match="data1: no cluster_address"):
        bundle.host_address({"inventory_hostname": "data1", "ansible_facts": {}})


@pytest.mark.parametrize("secret", ["plain-1.2_3~", "p@ss:w/rd%", "a b+c?d#e&f=g", "ünï"])
def test_url_quote_round_trips_through_a_url_login(secret: str) -> None:
    """The URL parser the app's clients use (redis-py and SQLAlchemy both split with urllib)
    finds the same user and password back."""
    url = urlsplit(f"rediss://{bundle.url_quote(secret)}:{bundle.url_quote(secret)}@h:6380/0")
    assert (url.hostname, url.port) == ("h", 6380)
    assert (unquote(url.username or ""), unquote(url.password or "")) == (secret, secret)


def test_group_hosts_skips_missing_groups_and_repeats() -> None:
    groups = {"celery_workers": ["worker2", "worker1"], "flower": ["ops1", "worker1"]}
    assert bundle.group_hosts(["celery_workers", "flower", "celery_beat"], groups) == [
        "ops1",
        "worker1",
        "worker2",
    ]
    assert bundle.group_hosts(["celery_beat"], groups) == []


RULES = ROOT / "roles" / "prometheus" / "files" / "rules"


@pytest.mark.parametrize("path", sorted(RULES.glob("*.yml")), ids=lambda p: p.name)
def test_alert_for_divided_divides_every_for_and_keeps_the_rest(path: Path) -> None:
    text = path.read_text()
    assert bundle.alert_for_divided(text, 1) == text
    divided = bundle.alert_for_divided(text, 4)
    seconds = {"s": 1, "m": 60, "h": 3600}

    def fors(t: str) -> list[Any]:
        return [
            rule.get("for")
            for group in yaml.safe_load(t)["groups"]
            for rule in group["rules"]
            if "alert" in rule
        ]

    want = [
        None if f is None else f"{max(1, int(f[:-1]) * seconds[f[-1]] // 4)}s" for f in fors(text)
    ]
    assert fors(divided) == want
    # Only the for: lines differ (comments, expressions and annotations are kept).
    changed = [a for a, b in zip(text.splitlines(), divided.splitlines(), strict=True) if a != b]
    assert all(line.strip().startswith("for:") for line in changed), changed


def test_alert_for_divided_refuses_a_divisor_below_one() -> None:
    with pytest.raises(ValueError, match="1 or more"):
        bundle.alert_for_divided("      for: 1m\n", 0)
