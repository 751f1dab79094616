"""The machine-wide registry: which lab (keyed by its state directory) owns which index."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import MAX_LABS, NET_PREFIX, REGISTRY, RUN
from .proxy import proxy_stop
from .shell import LabError, locked, run, write


def registry_load() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(REGISTRY.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault("labs", {})
    return data


def registry_save(data: dict[str, Any]) -> None:
    write(REGISTRY, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


def foreign_routes() -> list[ipaddress.IPv4Network]:
    """Networks routed on the controller by something other than a lab bridge."""
    return parse_foreign_routes(run("ip", "-4", "route", "show", "table", "all", capture=True))


def parse_foreign_routes(routes: str) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks in `ip -4 route show table all` output, except defaults, local and
    broadcast routes, and the labs' own."""
    nets = []
    for line in routes.splitlines():
        parts = line.split()
        if (
            not parts
            or parts[0] in ("default", "broadcast", "local", "unreachable")
            or "clab" in line
        ):
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(parts[0], strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def allocate_index(state_dir: Path) -> int:
    with locked(RUN / "lock"):
        reg = registry_load()
        key = str(state_dir)
        if key in reg["labs"]:
            return int(reg["labs"][key]["index"])
        n = claim_index(reg, state_dir, foreign_routes(), bridge_exists)
        registry_save(reg)
        return n


def bridge_exists(n: int) -> bool:
    return Path(f"/sys/class/net/clab{n}").exists()


def claim_index(
    reg: dict[str, Any],
    state_dir: Path,
    foreign: list[ipaddress.IPv4Network],
    taken: Callable[[int], bool],
) -> int:
    """A free index for STATE_DIR, recorded in the registry REG (the caller saves it): not
    registered, its subnet not routed by something else (FOREIGN), no bridge of its name (TAKEN)."""
    used = {int(v["index"]) for v in reg["labs"].values()}
    # Round robin, not the lowest free index: a lab that was just removed does not hand its
    # addresses to the next one while SSH connection masters to them may still linger.
    start = int(reg.get("next", 0))
    for n in ((start + i) % MAX_LABS for i in range(MAX_LABS)):
        subnet = ipaddress.ip_network(f"{NET_PREFIX}.{n}.0/24")
        if n in used or any(subnet.overlaps(f) for f in foreign) or taken(n):
            continue
        reg["next"] = (n + 1) % MAX_LABS
        reg["labs"][str(state_dir)] = {
            "index": n,
            "name": state_dir.name,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return n
    raise LabError(f"no free lab subnet in {NET_PREFIX}.0.0/16 ({len(used)} labs registered)")


def registry_release(state_dir: Path) -> None:
    with locked(RUN / "lock"):
        reg = registry_load()
        reg["labs"].pop(str(state_dir), None)
        registry_save(reg)
        if not reg["labs"]:
            proxy_stop()


def registry_index(state_dir: Path) -> int | None:
    entry = registry_load()["labs"].get(str(state_dir))
    return int(entry["index"]) if entry else None
