"""Filters every role of the bundle shares (loaded through ansible.cfg's `filter_plugins` and
Molecule's ANSIBLE_FILTER_PLUGINS, .config/molecule/config.yml).

- `host_address`: the address a host serves the cluster on: `cluster_address` if the inventory
  sets one, else its default IPv4. `hostvars[host] | host_address` for any host,
  `hostvars[inventory_hostname] | host_address` for the host itself.
- `env_quote`: a value for an env file that systemd's EnvironmentFile= and a POSIX shell read
  the same way: double-quoted, with ", \\, ` and $ escaped.
- `group_hosts`: the hosts of the named inventory groups, each once, sorted; a group the inventory
  lacks adds none. `[celery_workers, flower] | group_hosts(groups)`.
- `url_quote`: a user name or password inside a URL's login (`user:password@`): every character
  but letters, digits and `-._~` percent-encoded, `/`, `:` and `@` included.
- `bundle_entries`: the `files` of the bundle_files module (plugins/modules) for a mapping of file
  name -> content, all in one directory with one owner, group and mode, in name order.
  `{'a.conf': text} | bundle_entries('/etc/x', group='x', mode='0640')`.
- `alert_for_divided`: the text of a Prometheus rules file with every `for:` divided by an integer
  (in whole seconds, at least 1 s), the rest of the text (comments included) unchanged; 1 returns
  it as it is. The lab's tests wait for alerts a quarter as long (prometheus_alert_for_divisor).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote


def host_address(hostvars: Mapping[str, Any]) -> str:
    if hostvars.get("cluster_address"):
        return str(hostvars["cluster_address"])
    facts = hostvars.get("ansible_facts") or {}
    address = (facts.get("default_ipv4") or {}).get("address")
    if not address:
        name = hostvars.get("inventory_hostname", "a host")
        raise ValueError(
            f"{name}: no cluster_address in the inventory and no default IPv4 in its facts"
        )
    return str(address)


def env_quote(value: Any) -> str:
    text = str(value)
    for char in ("\\", '"', "`", "$"):
        text = text.replace(char, "\\" + char)
    return f'"{text}"'


def group_hosts(names: list[str], groups: Mapping[str, list[str]]) -> list[str]:
    return sorted({host for name in names for host in groups.get(name, [])})


def url_quote(value: Any) -> str:
    return quote(str(value), safe="")


def bundle_entries(
    contents: Mapping[str, Any],
    directory: str,
    owner: str = "root",
    group: str = "root",
    mode: str = "0644",
) -> list[dict[str, str]]:
    return [
        {
            "path": f"{directory.rstrip('/')}/{name}",
            "content": str(text),
            "owner": owner,
            "group": group,
            "mode": mode,
        }
        for name, text in sorted(contents.items())
    ]


_FOR = re.compile(r"^(?P<lead>\s+for:\s*)(?P<duration>(?:\d+[smhdwy])+)\s*$", re.MULTILINE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def alert_for_divided(rules: str, divisor: Any) -> str:
    def divided(m: re.Match[str]) -> str:
        total = sum(
            int(n) * _UNIT_SECONDS[u] for n, u in re.findall(r"(\d+)([smhdwy])", m["duration"])
        )
        return f"{m['lead']}{max(1, total // int(divisor))}s"

    if int(divisor) < 1:
        raise ValueError(f"the divisor of the rules' for: must be 1 or more, got {divisor}")
    return rules if int(divisor) == 1 else _FOR.sub(divided, rules)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "host_address": host_address,
            "env_quote": env_quote,
            "group_hosts": group_hosts,
            "url_quote": url_quote,
            "bundle_entries": bundle_entries,
            "alert_for_divided": alert_for_divided,
        }
