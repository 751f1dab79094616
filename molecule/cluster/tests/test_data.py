"""The data host serves the cluster: the broker and result store Redis (TLS) and PostgreSQL on its
cluster address."""

from __future__ import annotations

from typing import Any

testinfra_hosts = ["data1"]


def test_data_ports_on_the_cluster_address(host: Any) -> None:
    address = host.check_output("hostname -I").split()[0]
    for port in (6380, 6382, 5432):
        assert host.socket(f"tcp://{address}:{port}").is_listening, port
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening, port
