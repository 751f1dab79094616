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
- `host_state`: the preflight's one read of a host (packages, accounts, units, nftables' tables)
  as `{packages: [...], accounts: {name: {group, home, shell}}, units: {name: {active, enabled}},
  nft_tables: ['table inet firewall', ...]}`.
  A role skips its apt, user or start step when the host is already as it wants it.
- `units_up` / `units_enabled` / `units_masked`: whether the named units were all active and
  enabled / enabled / masked and stopped at that read (False without it: the step runs).
- `account_is`: whether that read found an account with the given home, shell (and group).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
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


def host_state(text: str) -> dict[str, Any]:
    """The preflight's one read of a host (playbooks/tasks/host_state.yml): sections that start
    with a `#name` line: `#dpkg` (dpkg-query's `${db:Status-Abbrev}${Package}` lines), `#passwd` and
    `#group` (getent), `#units` (`systemctl show --all -p Id,ActiveState,UnitFileState '*'`:
    every loaded unit, instances and masked units included), `#nft` (`nft list tables`),
    `#python` (version, machine, glibc), `#current` (a symlink's target), `#paths` (`stat -c
    '%Y %n'` lines: as find's `files`, a list of {path, mtime}), `#writable` (paths, one a line),
    `#files` (`stat -c '%F:%a:%U:%G:%n'` of the paths bundle_files manages) and `#sha256`
    (sha256sum of the same): `files` maps each path to {type, mode, owner, group, sha256}, the
    type `file` or `directory` (anything else is left out: the module then looks itself)."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            lines = sections.setdefault(line[1:].strip(), [])
        else:
            lines.append(line)

    def stripped(name: str) -> list[str]:
        """A section's lines without blanks or surrounding spaces."""
        return [line.strip() for line in sections.get(name, []) if line.strip()]

    fields = {
        key: [line.split(":") for line in sections.get(key, [])] for key in ("passwd", "group")
    }
    group_names = {f[2]: f[0] for f in fields["group"] if len(f) > 2}
    units: dict[str, dict[str, str]] = {}
    unit: dict[str, str] = {}
    for line in [*sections.get("units", []), ""]:
        if line.strip():
            key, _, value = line.partition("=")
            unit[key] = value
        elif unit.get("Id"):
            units[unit["Id"]] = {
                "active": unit.get("ActiveState", ""),
                "enabled": unit.get("UnitFileState", ""),
            }
            unit = {}
    digests = {
        path: digest
        for digest, _, path in (line.partition("  ") for line in sections.get("sha256", []))
        if path and not digest.startswith("\\")  # sha256sum escapes an odd name: not ours
    }
    kinds = {"regular file": "file", "regular empty file": "file", "directory": "directory"}
    files: dict[str, dict[str, Any]] = {}
    for line in sections.get("files", []):
        kind, mode, owner, group, path = ([*line.split(":", 4), "", "", "", ""])[:5]
        if kind in kinds and mode.isdigit() and path:
            files[path] = {
                "type": kinds[kind],
                "mode": int(mode, 8),
                "owner": owner,
                "group": group,
                "sha256": digests.get(path, ""),
            }
    return {
        "packages": [
            line[3:].strip() for line in sections.get("dpkg", []) if line.startswith("ii ")
        ],
        "accounts": {
            f[0]: {"group": group_names.get(f[3], f[3]), "home": f[5], "shell": f[6]}
            for f in fields["passwd"]
            if len(f) == 7
        },
        "units": units,
        "nft_tables": stripped("nft"),
        "python": next(iter(stripped("python")), ""),
        "current": next(iter(stripped("current")), ""),
        "writable": stripped("writable"),
        "paths": [
            {"path": path, "mtime": int(mtime)}
            for mtime, _, path in (line.partition(" ") for line in sections.get("paths", []))
            if mtime.isdigit() and path
        ],
        "files": files,
    }


def _every_unit(
    names: list[str], units: Mapping[str, Any] | None, test: Callable[[str, str], bool]
) -> bool:
    """Whether `test(active, enabled)` holds for every named unit of the read (a bare name is a
    .service, as systemctl takes it). Without the read, False: the step runs."""

    def state(name: str) -> Mapping[str, Any]:
        return (units or {}).get(name if "." in name else f"{name}.service") or {}

    return bool(units) and all(
        test(state(name).get("active", ""), state(name).get("enabled", "")) for name in names
    )


def units_up(names: list[str], units: Mapping[str, Any] | None) -> bool:
    """Every named unit active and enabled: its role's start step (no restart due) is done."""
    return _every_unit(
        names, units, lambda active, enabled: (active, enabled) == ("active", "enabled")
    )


def units_enabled(names: list[str], units: Mapping[str, Any] | None) -> bool:
    """Every named unit enabled (running or not)."""
    return _every_unit(names, units, lambda _active, enabled: enabled == "enabled")


def units_masked(names: list[str], units: Mapping[str, Any] | None) -> bool:
    """Every named unit masked and not active."""
    return _every_unit(
        names, units, lambda active, enabled: enabled == "masked" and active != "active"
    )


def account_is(accounts: Mapping[str, Any] | None, name: str, want: Mapping[str, str]) -> bool:
    """Whether the read found account `name` with every field of `want` (home, shell, group) as
    given: its role's user step is done. Without the read, False: the step runs."""
    found = (accounts or {}).get(name)
    return found is not None and all(found.get(key) == value for key, value in want.items())


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "host_address": host_address,
            "env_quote": env_quote,
            "group_hosts": group_hosts,
            "url_quote": url_quote,
            "bundle_entries": bundle_entries,
            "alert_for_divided": alert_for_divided,
            "host_state": host_state,
            "units_up": units_up,
            "units_masked": units_masked,
            "units_enabled": units_enabled,
            "account_is": account_is,
        }
