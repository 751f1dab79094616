#!/usr/bin/python
"""Ansible module `bundle_pki`: the lab CA, or one host's key and certificate, in one module run.

Why: community.crypto makes a certificate in four module runs (key, request, certificate, and a
copy for the role's stamp), about 0.7 s each; a cold lab paid ~6 s on its critical path for the
CA and then the hosts. This module writes the same files in one run on the controller
(`delegate_to: localhost`), with `cryptography`, which ansible-core itself requires. The pki role
decides when to call it (a missing file or a stamp that differs from its inputs); a call always
writes and reports a change.

- `kind: ca`: `ca.key` (ECDSA P-256, 0600) and a self-signed `ca.crt` (0644): CA:TRUE with
  pathlen 0 and keyCertSign/cRLSign, both critical.
- `kind: server`: `NAME.key` (kept when it exists: a new certificate, same key) and `NAME.crt`
  signed by the CA, with the names (`DNS:`/`IP:`) and extended key usages given.
- `stamp`: written last to `STAMP_PATH` (0600), so that a failure leaves the role's next run to
  try again.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: bundle_pki
short_description: The lab CA, or a host's key and certificate signed by it, in one run
options:
  kind:
    description: C(ca) makes ca.key and ca.crt; C(server) makes NAME.key (if missing) and NAME.crt.
    type: str
    choices: [ca, server]
    required: true
  dir:
    description: The directory on the controller (it exists).
    type: path
    required: true
  common_name:
    description: The certificate's subject CN (the CA's name, or the host's).
    type: str
    required: true
  valid_days:
    description: Days from now until the certificate expires.
    type: int
    required: true
  san:
    description: Subject alternative names, C(DNS:name) or C(IP:address) (server only).
    type: list
    elements: str
    default: []
  eku:
    description: Extended key usages, C(serverAuth) and/or C(clientAuth) (server only).
    type: list
    elements: str
    default: []
  name:
    description: The file name stem of a server's key and certificate (server only).
    type: str
  stamp:
    description: What the files were made from, written to stamp_path once they are written.
    type: str
    required: true
  stamp_path:
    description: Where the stamp goes.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: A host's key and certificate, signed by the CA in the same directory
  bundle_pki:
    kind: server
    dir: /srv/pki
    name: worker1
    common_name: worker1
    san: ["DNS:worker1", "IP:10.0.0.12"]
    eku: [serverAuth, clientAuth]
    valid_days: 825
    stamp: "{{ inputs | to_json }}"
    stamp_path: /srv/pki/worker1.stamp
  delegate_to: localhost
"""

RETURN = r"""
written:
  description: The files written (none in check mode).
  type: list
  elements: str
  returned: always
"""

# What DOCUMENTATION describes (tests/docs/test_module_docs.py holds the two together).
ARGUMENT_SPEC: dict[str, Any] = {
    "kind": {"type": "str", "choices": ["ca", "server"], "required": True},
    "dir": {"type": "path", "required": True},
    "common_name": {"type": "str", "required": True},
    "valid_days": {"type": "int", "required": True},
    "san": {"type": "list", "elements": "str", "default": []},
    "eku": {"type": "list", "elements": "str", "default": []},
    "name": {"type": "str"},
    "stamp": {"type": "str", "required": True},
    "stamp_path": {"type": "path", "required": True},
}

EKU = {"serverAuth": "SERVER_AUTH", "clientAuth": "CLIENT_AUTH"}


def _write(path: str, data: bytes, mode: int) -> None:
    """Atomically: a temporary file beside it, then rename (a reader never sees half a key)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".bundle_pki.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _general_names(san: list[str]) -> list[Any]:
    from cryptography import x509

    names: list[Any] = []
    for entry in san:
        kind, _, value = entry.partition(":")
        if kind == "DNS" and value:
            names.append(x509.DNSName(value))
        elif kind == "IP" and value:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            raise ValueError(f"san entry {entry!r}: expected DNS:name or IP:address")
    return names


def make(params: dict[str, Any], now: datetime.datetime | None = None) -> list[str]:
    """Write the files the parameters ask for; return their paths (the stamp last)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.datetime.now(datetime.UTC)
    directory = params["dir"]
    ca_key_path = os.path.join(directory, "ca.key")
    ca_crt_path = os.path.join(directory, "ca.crt")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, params["common_name"])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a host clock a little behind
        .not_valid_after(now + datetime.timedelta(days=params["valid_days"]))
    )
    written: list[str] = []

    def pem_key(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )

    if params["kind"] == "ca":
        key = ec.generate_private_key(ec.SECP256R1())
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            builder.issuer_name(subject)
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(ca_key_path, pem_key(key), 0o600)
        _write(ca_crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        written += [ca_key_path, ca_crt_path]
    else:
        if not params.get("name"):
            raise ValueError("kind=server needs name")
        names = _general_names(params["san"])  # a bad entry fails before any file is written
        unknown = [u for u in params["eku"] if u not in EKU]
        if unknown:
            raise ValueError(f"eku {unknown}: expected serverAuth or clientAuth")
        with open(ca_key_path, "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), password=None)
        with open(ca_crt_path, "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
        key_path = os.path.join(directory, params["name"] + ".key")
        crt_path = os.path.join(directory, params["name"] + ".crt")
        if os.path.exists(key_path):
            with open(key_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            _write(key_path, pem_key(key), 0o600)
            written.append(key_path)
        builder = (
            builder.issuer_name(ca_cert.subject)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if params["eku"]:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(
                    [getattr(ExtendedKeyUsageOID, EKU[u]) for u in params["eku"]]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        written.append(crt_path)
    _write(params["stamp_path"], params["stamp"].encode(), 0o600)
    return [*written, params["stamp_path"]]


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    if module.check_mode:
        module.exit_json(changed=True, written=[])
    try:
        written = make(module.params)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"bundle_pki ({module.params['kind']}): {exc}")
    module.exit_json(changed=True, written=written)


if __name__ == "__main__":
    main()
