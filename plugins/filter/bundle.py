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
"""

from __future__ import annotations

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


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "host_address": host_address,
            "env_quote": env_quote,
            "group_hosts": group_hosts,
            "url_quote": url_quote,
        }
