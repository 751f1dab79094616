"""Paths, the address plan, names and the base image recipe: what every module shares."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # lab/labkit/config.py
STATE_ROOT = Path(os.environ.get("LAB_STATE_DIR", REPO / ".lab"))
INVENTORY = REPO / "inventories" / "lab" / "hosts.yml"
DEFAULT_LAB = "lab"

# Machine-wide, shared by every checkout: the image cache survives clones,
# the registry (which lab owns which subnet) does not survive a reboot.
CACHE = Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/celery-bundle-lab"))
RUN = Path("/run/celery-bundle-lab")
REGISTRY = RUN / "registry.json"

# The base image recipe: changing anything here builds a new image (the cache key is its hash).
RECIPE: dict[str, Any] = {
    "version": 1,  # bump when customize_image() changes
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "security_mirror": "http://deb.debian.org/debian-security",
    "variant": "minbase",
    "include": [
        "systemd",
        "systemd-sysv",
        "dbus",
        "openssh-server",
        "python3",
        "iproute2",
        "sudo",
        "ca-certificates",
    ],
}

# Lab N uses 10.231.N.0/24; 10.231.255.0/24 is reserved for the controller's services.
NET_PREFIX = "10.231"
MAX_LABS = 250
HOST_OFFSET = 10  # host J of a lab is 10.231.N.(10+J)
PROXY_DEV = "clabproxy"
# The apt cache listens on an interface of its own: reachable from labs, not from eth0's network.
PROXY_ADDR = f"{NET_PREFIX}.255.1"
PROXY_PORT = 3143  # not 3142, so a system-wide apt-cacher-ng may run alongside
SSH_TIMEOUT = 60.0
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
LAB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")

TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "iptables": "iptables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
