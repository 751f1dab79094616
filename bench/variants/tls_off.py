"""The deployed Redis URLs without TLS, for bench/decompose.py's `tls` switch: rediss://HOST:6380
and :6382 become redis://HOST:6379 and :6381 (plain listeners the bench opens on data1 for its
run, the firewall too), without the ssl_* parameters. Never shipped."""

from __future__ import annotations

import re

PLAIN_PORTS = {"6380": "6379", "6382": "6381"}


def plain(url: str) -> str:
    url = re.sub(r"^rediss://", "redis://", url)
    url = re.sub(r":(6380|6382)/", lambda m: f":{PLAIN_PORTS[m.group(1)]}/", url)
    base, _, query = url.partition("?")
    kept = [p for p in query.split("&") if p and not p.startswith("ssl_")]
    return base + ("?" + "&".join(kept) if kept else "")
