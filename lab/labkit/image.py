"""The base image: debootstrap once per machine, cached under a hash of the recipe."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .config import CACHE, PROXY_ADDR, PROXY_PORT, RECIPE
from .shell import locked, log, preflight, remove_tree, run, write


def image_dir() -> Path:
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / "images" / f"debian-{RECIPE['suite']}-{digest}"


def customize_image(rootfs: Path) -> None:
    """What every host shares; per-host identity (names, keys, machine-id) is written at `up`."""
    suite, mirror, security = RECIPE["suite"], RECIPE["mirror"], RECIPE["security_mirror"]
    # A real Debian host follows updates and security, not only the release.
    write(
        rootfs / "etc/apt/sources.list",
        f"deb {mirror} {suite} main\n"
        f"deb {mirror} {suite}-updates main\n"
        f"deb {security} {suite}-security main\n",
    )
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    write(rootfs / "etc/machine-id", "", 0o444)
    write(rootfs / "etc/hostname", "localhost\n")
    (rootfs / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for lists in (rootfs / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()


def ensure_image(use_proxy: bool) -> Path:
    final = image_dir()
    if (final / "complete").exists():
        return final / "rootfs"
    with locked(CACHE / "images" / ".lock"):
        if (final / "complete").exists():
            return final / "rootfs"
        preflight(need_image=True)
        for stale in final.parent.glob(f"{final.name}.*"):  # a build that was killed
            remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
        env = dict(os.environ)
        if use_proxy:
            env["http_proxy"] = f"http://{PROXY_ADDR}:{PROXY_PORT}/"
        log(f"building the base image {final.name} with debootstrap (once per machine, ~1 min)")
        started = time.monotonic()
        try:
            run(
                "debootstrap",
                f"--variant={RECIPE['variant']}",
                f"--include={','.join(RECIPE['include'])}",
                RECIPE["suite"],
                str(tmp / "rootfs"),
                RECIPE["mirror"],
                env=env,
            )
            customize_image(tmp / "rootfs")
            write(tmp / "recipe.json", json.dumps(RECIPE, indent=2, sort_keys=True) + "\n")
            write(tmp / "complete", f"{time.monotonic() - started:.1f}\n")
            remove_tree(final)
            tmp.rename(final)
        finally:
            remove_tree(tmp)
        log(f"base image built in {time.monotonic() - started:.1f} s: {final}")
    return final / "rootfs"
