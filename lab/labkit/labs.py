"""The lab's description: its names and addresses (from its index), its hosts, its state file."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .config import HOST_OFFSET, INVENTORY, LAB_RE, NAME_RE, NET_PREFIX, STATE_ROOT
from .shell import LabError, locked, write


class Lab:
    def __init__(self, name: str) -> None:
        if not LAB_RE.match(name):
            raise LabError(f"bad lab name {name!r}: letters, digits, '_', '.', '-' (at most 41)")
        self.name = name
        self.dir = STATE_ROOT / name
        self.state_file = self.dir / "state.json"
        self.state: dict[str, Any] = {}
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text())

    @property
    def index(self) -> int:
        return int(self.state["index"])

    @property
    def bridge(self) -> str:
        return f"clab{self.index}"

    @property
    def subnet(self) -> str:
        return f"{NET_PREFIX}.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"{NET_PREFIX}.{self.index}.1"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def hosts(self) -> dict[str, dict[str, Any]]:
        hosts: dict[str, dict[str, Any]] = self.state.setdefault("hosts", {})
        return hosts

    def add_host(self, name: str) -> None:
        """A new host takes the lowest free index (its address, its veth); a known one keeps its."""
        if name not in self.hosts:
            used = {int(v["index"]) for v in self.hosts.values()}
            self.hosts[name] = {"index": min(set(range(1, 240)) - used)}

    def host(self, name: str) -> dict[str, Any]:
        if name not in self.hosts:
            known = ", ".join(self.hosts) or "none"
            raise LabError(f"no host {name!r} in lab {self.name!r} (hosts: {known})")
        return self.hosts[name]

    def hdir(self, name: str) -> Path:
        return self.dir / "hosts" / name

    def root(self, name: str) -> Path:
        return self.hdir(name) / "root"

    def netns(self, name: str) -> str:
        return f"clab{self.index}-{name}"

    def veth(self, name: str) -> str:
        return f"clab{self.index}h{self.hosts[name]['index']}"

    def address(self, name: str) -> str:
        return f"{NET_PREFIX}.{self.index}.{HOST_OFFSET + int(self.hosts[name]['index'])}"

    def save(self) -> None:
        write(self.state_file, json.dumps(self.state, indent=2) + "\n")

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return locked(STATE_ROOT / f".{self.name}.lock")


def check_host_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise LabError(f"bad host name {name!r}: lowercase letters, digits and '-', at most 31")


def inventory_hosts() -> list[str]:
    try:
        import yaml
    except ImportError as exc:
        raise LabError("PyYAML is missing: run the tool with .venv/bin/python (make venv)") from exc
    names = inventory_host_names(yaml.safe_load(INVENTORY.read_text()))
    if not names:
        raise LabError(f"no hosts in {INVENTORY}")
    return names


def inventory_host_names(data: dict[str, Any]) -> list[str]:
    """Every host of an Ansible YAML inventory, each once, in the order they first appear."""
    names: list[str] = []

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for host in node.get("hosts") or {}:
            if host not in names:
                names.append(host)
        for child in (node.get("children") or {}).values():
            walk(child)

    for group in data.values():
        walk(group)
    return names


def all_labs() -> list[Lab]:
    if not STATE_ROOT.exists():
        return []
    return [Lab(d.name) for d in sorted(STATE_ROOT.iterdir()) if (d / "state.json").exists()]
