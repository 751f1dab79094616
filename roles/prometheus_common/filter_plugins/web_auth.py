"""bcrypt_hash: the bcrypt hash of a basic auth password for an exporter-toolkit web config.

The salt is derived from the password and a seed (the host and user), so that a second run writes
the same hash and changes nothing; two hosts or users never share a hash. bcrypt is in the
controller's requirements (requirements/dev.lock).
"""

from __future__ import annotations

import hashlib
import hmac

import bcrypt

# bcrypt's own base64 alphabet.
_ALPHABET = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _bcrypt64(data: bytes) -> bytes:
    """bcrypt's base64 of 16 bytes: 22 characters, the salt bcrypt expects."""
    out = bytearray()
    bits = int.from_bytes(data + b"\0\0", "big")  # 144 bits, 24 six-bit groups
    for shift in range(138, -1, -6):
        out.append(_ALPHABET[(bits >> shift) & 0x3F])
    return bytes(out[:22])


def bcrypt_hash(password: str, seed: str, rounds: int = 10) -> str:
    digest = hmac.new(password.encode(), seed.encode(), hashlib.sha256).digest()[:16]
    salt = b"$2b$%02d$" % rounds + _bcrypt64(digest)
    return bcrypt.hashpw(password.encode(), salt).decode()


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"bcrypt_hash": bcrypt_hash}
