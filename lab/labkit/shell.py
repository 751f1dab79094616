"""Running commands, locks, atomic writes, the user's messages and errors, mounts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .config import TOOLS


class LabError(Exception):
    """A failure with a message for the user."""


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(
    *cmd: str, check: bool = True, capture: bool = False, env: dict[str, str] | None = None
) -> str:
    # Uncaptured output goes to stderr: stdout carries only results (`up --json`), and a command
    # such as debootstrap, run on the first `up` of a machine, would corrupt them.
    proc = subprocess.run(
        cmd,
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if capture else None,
        env=env,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip() if capture else ""
        raise LabError(
            f"command failed ({proc.returncode}): {shlex.join(cmd)}"
            + (f": {detail}" if detail else "")
        )
    return proc.stdout if capture else ""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def preflight(need_image: bool = False) -> None:
    if os.geteuid() != 0:
        raise LabError(
            "run as root: the lab creates network namespaces and boots systemd-nspawn hosts"
        )
    tools = dict(TOOLS) if need_image else {k: v for k, v in TOOLS.items() if k != "debootstrap"}
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(
            f"missing Debian packages: {' '.join(missing)} "
            f"(run `make deps` or `apt-get install {' '.join(missing)}`)"
        )


# --- mounts: never delete through one -------------------------------------------------------------


def mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    points = [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines()]
    return sorted((m for m in points if m.startswith(prefix)), reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that never descends into a mount (a host's root, or debootstrap's /proc and /sys)."""
    for mnt in mounts_under(path):
        if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode != 0:
            run("umount", "--lazy", mnt)
    if mounts_under(path):
        raise LabError(f"mounts remain under {path}: not deleting it")
    if path.exists():
        shutil.rmtree(path)


def mounted(path: Path) -> bool:
    target = str(path)
    return any(
        line.split()[1] == target for line in Path("/proc/self/mounts").read_text().splitlines()
    )
