"""The lab platform: real systemd, a network between the hosts, the Debian mirror."""

import json

import pytest

# Every platform of the scenario: the hosts must reach each other by name.
PEERS = ["node1", "node2"]


def test_systemd_is_pid_1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_system_running_without_failed_units(host):
    state = host.run("systemctl is-system-running --wait")
    failed = host.check_output("systemctl --failed --no-legend --plain")
    assert state.stdout.strip() == "running", failed
    assert failed == ""


def test_own_identity(host):
    name = host.check_output("hostname")
    assert host.ansible.get_variables()["inventory_hostname"] == name
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert len(machine_id) == 32


def test_unique_identity_across_hosts(host):
    ids = set()
    keys = set()
    for peer in PEERS:
        inventory = host.backend.ansible_inventory
        remote = host.get_host(f"ansible://{peer}", ansible_inventory=inventory)
        ids.add(remote.file("/etc/machine-id").content_string.strip())
        keys.add(remote.check_output("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"))
    assert len(ids) == len(PEERS)
    assert len(keys) == len(PEERS)


@pytest.mark.parametrize("peer", PEERS)
def test_peer_reachable_by_name(host, peer):
    address = host.check_output(f"getent hosts {peer}").split()[0]
    assert address.startswith("10.231.")
    probe = (
        "import socket, sys; s = socket.create_connection((sys.argv[1], 22), 3); "
        "print(s.recv(64).decode().strip())"
    )
    banner = host.check_output(f"python3 -c {json.dumps(probe)} {peer}")
    assert banner.startswith("SSH-2.0-OpenSSH")


def test_sshd_active_and_enabled(host):
    sshd = host.service("ssh")
    assert sshd.is_running
    assert sshd.is_enabled


def test_package_from_the_mirror(host):
    assert host.package("tree").is_installed
    policy = host.check_output("apt-cache policy tree")
    assert "deb.debian.org/debian bookworm/main" in policy
    assert host.run("tree --version").rc == 0
