"""A host's disk and identity: its root (overlayfs or a copy), names, keys, /etc/hosts."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from .config import PROXY_ADDR, PROXY_PORT
from .labs import Lab
from .proxy import proxy_wanted
from .shell import LabError, log, mounted, run, write


def mount_root(lab: Lab, name: str, image: Path) -> None:
    hdir, root = lab.hdir(name), lab.root(name)
    if mounted(root):
        return
    for d in ("upper", "work", "root"):
        (hdir / d).mkdir(parents=True, exist_ok=True)
    mode = lab.hosts[name].setdefault("storage", os.environ.get("LAB_STORAGE", "overlay"))
    if mode == "overlay":
        opts = f"lowerdir={image},upperdir={hdir / 'upper'},workdir={hdir / 'work'}"
        if (
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], check=False
            ).returncode
            == 0
        ):
            return
        if any((hdir / "upper").iterdir()):
            raise LabError(f"cannot mount the overlay root of {name} (was overlay before)")
        log(f"{name}: overlayfs unavailable here, copying the image instead")
        lab.hosts[name]["storage"] = "copy"
    if not (hdir / "copied").exists():
        run("cp", "-a", "--reflink=auto", f"{image}/.", str(root))
        (hdir / "copied").touch()


def host_identity(lab: Lab, name: str) -> None:
    """First boot only: the host's own name, machine-id, SSH host keys and the lab's key."""
    root, hdir = lab.root(name), lab.hdir(name)
    if (hdir / "identity").exists():
        return
    write(root / "etc/hostname", f"{name}\n")
    write(root / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Ed25519 and ECDSA host keys only: an RSA key takes seconds to generate on a loaded machine.
    for keytype in ("ed25519", "ecdsa"):
        keyfile = str(root / f"etc/ssh/ssh_host_{keytype}_key")
        run("ssh-keygen", "-q", "-t", keytype, "-N", "", "-C", f"root@{name}", "-f", keyfile)
    write(
        root / "etc/ssh/sshd_config.d/lab-host-keys.conf",
        "# The lab's hosts have no RSA host key (lab/lab.py).\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n",
    )
    pub = lab.key.with_suffix(".pub").read_text()
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    write(root / "root/.ssh/authorized_keys", pub, 0o600)
    if proxy_wanted():
        write(
            root / "etc/apt/apt.conf.d/01lab-proxy",
            "// The lab's apt cache on the controller (lab/lab.py): one download per machine.\n"
            f'Acquire::http::Proxy "http://{PROXY_ADDR}:{PROXY_PORT}/";\n'
            "// A stalled transfer (the cache under heavy load) fails fast and is retried, rather\n"
            "// than hanging apt for many minutes.\n"
            'Acquire::http::Timeout "30";\nAcquire::Retries "5";\n'
            "// No pipelining: when the cache drops a connection with requests in flight (it does\n"
            "// on a race refreshing an InRelease), apt's http method and apt-get could both\n"
            "// wait on each other for ever, unseen by the timeout (a cold converge hung so).\n"
            'Acquire::http::Pipeline-Depth "0";\n',
        )
    (hdir / "identity").touch()


def write_hosts_files(lab: Lab) -> None:
    """/etc/hosts of every host: every host of the lab by name (itself at its lab address)."""
    text = etc_hosts_text(lab)
    for name in lab.hosts:
        if mounted(lab.root(name)) or lab.hosts[name].get("storage") == "copy":
            write(lab.root(name) / "etc/hosts", text)


def etc_hosts_text(lab: Lab) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
        "",
    ]
    lines += [f"{lab.address(h)}\t{h}" for h in lab.hosts]
    return "\n".join(lines) + "\n"
