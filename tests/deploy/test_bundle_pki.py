"""The bundle's `bundle_pki` module (plugins/modules/bundle_pki.py), run by real Ansible on the
controller (`ansible localhost -m bundle_pki`): the CA and a host's certificate it writes, checked
by openssl itself (chain, names, usages), the key kept across a re-sign, and a bad name refused."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

from adhoc import run_module


def run(**args: Any) -> dict[str, Any]:
    return run_module("bundle_pki", args)


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def ca(d: Path) -> dict[str, Any]:
    return run(
        kind="ca",
        dir=str(d),
        common_name="test CA",
        valid_days=30,
        stamp="ca-in",
        stamp_path=str(d / "ca.inputs"),
    )


def server(d: Path, san: list[str], eku: list[str]) -> dict[str, Any]:
    return run(
        kind="server",
        dir=str(d),
        name="data1",
        common_name="data1",
        san=san,
        eku=eku,
        valid_days=10,
        stamp="data1-in",
        stamp_path=str(d / "data1.inputs"),
    )


def test_ca_and_server_certificate_verify_with_their_names_and_usages(tmp_path: Path) -> None:
    made = ca(tmp_path)
    assert made["status"] == "CHANGED", made
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.crt").stat().st_mode) == 0o644
    ca_text = openssl("x509", "-in", str(tmp_path / "ca.crt"), "-noout", "-text")
    assert "CA:TRUE, pathlen:0" in ca_text and "Certificate Sign, CRL Sign" in ca_text, ca_text
    made = server(tmp_path, ["DNS:data1", "IP:10.1.2.3", "IP:127.0.0.1"], ["serverAuth"])
    assert made["status"] == "CHANGED", made
    crt, key = str(tmp_path / "data1.crt"), str(tmp_path / "data1.key")
    assert stat.S_IMODE(Path(key).stat().st_mode) == 0o600
    assert (tmp_path / "data1.inputs").read_text() == "data1-in"
    assert openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), crt).strip() == f"{crt}: OK"
    # openssl's own name checks, as the clients make them (verify-full, ssl_cert_reqs=required)
    for check in (["-verify_hostname", "data1"], ["-verify_ip", "10.1.2.3"]):
        openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), *check, crt)
    refused = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), "-verify_ip", "10.9.9.9", crt],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0, refused.stdout
    text = openssl("x509", "-in", crt, "-noout", "-text")
    assert "TLS Web Server Authentication" in text and "Client Authentication" not in text, text
    assert openssl("pkey", "-in", key, "-pubout") == openssl(
        "x509", "-in", crt, "-noout", "-pubkey"
    )


def test_a_re_sign_keeps_the_key_and_adds_client_auth(tmp_path: Path) -> None:
    ca(tmp_path)
    server(tmp_path, ["DNS:data1"], ["serverAuth"])
    key = (tmp_path / "data1.key").read_bytes()
    again = server(tmp_path, ["DNS:data1"], ["serverAuth", "clientAuth"])
    assert again["status"] == "CHANGED" and str(tmp_path / "data1.key") not in again["written"], (
        again
    )
    assert (tmp_path / "data1.key").read_bytes() == key
    text = openssl("x509", "-in", str(tmp_path / "data1.crt"), "-noout", "-text")
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text, text


def test_a_bad_name_fails_with_the_entry_and_writes_no_certificate(tmp_path: Path) -> None:
    ca(tmp_path)
    bad = server(tmp_path, ["DNS:data1", "10.1.2.3"], ["serverAuth"])
    assert bad["status"] == "FAILED!", bad
    assert "san entry '10.1.2.3'" in bad["msg"], bad
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("data1")]
