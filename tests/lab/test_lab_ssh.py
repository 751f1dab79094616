"""What a lab writes for SSH and for its hosts: ssh_config, hosts.json, /etc/hosts, argv."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

from labkit.hosts import etc_hosts_text
from labkit.labs import Lab
from labkit.procs import supervisor_argv
from labkit.ssh import hosts_json, known_hosts_lines, ssh_argv, ssh_config_text, write_ssh_files

MakeLab = Callable[..., Lab]


def test_ssh_config(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("mol-x", index=4, hosts=("node1", "node2"))
    d = tmp_path / "mol-x"
    block = (
        "Host {h}\n  HostName 10.231.4.{a}\n  User root\n  Port 22\n"
        f"  IdentityFile {d}/id_ed25519\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n"
        "  LogLevel ERROR\n  ServerAliveInterval 15\n  ServerAliveCountMax 4\n"
    )
    assert ssh_config_text(lab) == "\n".join(
        [
            f"# Written by lab/lab.py for lab mol-x: ssh -F {d}/ssh_config HOST\n",
            block.format(h="node1", a=11),
            block.format(h="node2", a=12),
        ]
    )


def test_hosts_json(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("mol-x", index=4, hosts=("node1",))
    d = tmp_path / "mol-x"
    assert hosts_json(lab) == {
        "lab": "mol-x",
        "subnet": "10.231.4.0/24",
        "gateway": "10.231.4.1",
        "ssh_config": f"{d}/ssh_config",
        "hosts": {
            "node1": {
                "address": "10.231.4.11",
                "user": "root",
                "port": 22,
                "identity_file": f"{d}/id_ed25519",
                "known_hosts": f"{d}/known_hosts",
            }
        },
    }


def test_known_hosts_from_the_root_or_the_upper_layer(make_lab: MakeLab) -> None:
    lab = make_lab(index=4, hosts=("up", "down", "new"))
    for where, host in (("root", "up"), ("upper", "down")):
        keys = lab.hdir(host) / where / "etc/ssh"
        keys.mkdir(parents=True)
        for kind in ("ed25519", "ecdsa"):
            (keys / f"ssh_host_{kind}_key.pub").write_text(f"ssh-{kind} KEY-{host} root@{host}\n")
    assert known_hosts_lines(lab) == [
        "up,10.231.4.11 ssh-ecdsa KEY-up",
        "up,10.231.4.11 ssh-ed25519 KEY-up",
        "down,10.231.4.12 ssh-ecdsa KEY-down",
        "down,10.231.4.12 ssh-ed25519 KEY-down",
    ]


def test_write_ssh_files(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab("mol-x", index=4, hosts=("node1",))
    write_ssh_files(lab)
    assert lab.ssh_config.read_text() == ssh_config_text(lab)
    assert json.loads((lab.dir / "hosts.json").read_text()) == hosts_json(lab)
    assert not lab.known_hosts.exists()  # no host key yet
    assert not (tmp_path / "ssh_config").exists()  # only the default lab's goes there


def test_etc_hosts(make_lab: MakeLab) -> None:
    lab = make_lab(index=4, hosts=("node1", "node2"))
    assert etc_hosts_text(lab) == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n\n"
        "10.231.4.11\tnode1\n10.231.4.12\tnode2\n"
    )


def test_ssh_argv(make_lab: MakeLab) -> None:
    lab = make_lab("mol-x")
    assert shlex.join(ssh_argv(lab, "node1", "systemctl", "is-system-running")) == (
        f"ssh -F {lab.ssh_config} -o BatchMode=yes -o ConnectTimeout=5 node1 "
        "systemctl is-system-running"
    )


def test_supervisor_argv(make_lab: MakeLab) -> None:
    lab = make_lab("mol-x", index=4, hosts=("node1",))
    argv = supervisor_argv(lab, "node1")
    assert argv[:2] == ["sh", "-c"]
    assert "133" in argv[2]  # systemd-nspawn's exit status on a reboot: start it again
    assert argv[3] == "lab-supervisor:mol-x:node1"  # $0, what `ps` and `down` see
    assert argv[4] == "systemd-nspawn"
    assert f"--directory={lab.root('node1')}" in argv
    assert "--machine=node1" in argv
    assert "--network-namespace-path=/run/netns/clab4-node1" in argv
