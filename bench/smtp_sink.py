"""A tiny SMTP sink for the lab's worker hosts (python3 standard library only).

    systemd-run --unit=bench-smtp python3 smtp_sink.py [--port 25] [--delay 0.1] [--seconds 7200]

Accepts every message and discards it, answering DATA after --delay seconds (a relay's latency:
what makes notifications I/O-bound). Listens on 127.0.0.1 (the lab's APP_SMTP_HOST is localhost)
and exits by itself after --seconds. Counts the messages in /run/bench-smtp.count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

COUNT = Path("/run/bench-smtp.count")


class Sink:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.messages = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(line: str) -> None:
            writer.write(f"{line}\r\n".encode())
            await writer.drain()

        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reply("220 bench-smtp ESMTP")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    await reply("250-bench-smtp\r\n250 8BITMIME")
                elif verb == b"DATA":
                    await reply("354 end with <CRLF>.<CRLF>")
                    await reader.readuntil(b"\r\n.\r\n")
                    await asyncio.sleep(self.delay)
                    self.messages += 1
                    COUNT.write_text(f"{self.messages}\n")
                    await reply("250 queued")
                elif verb == b"QUIT":
                    await reply("221 bye")
                    break
                else:  # MAIL, RCPT, RSET, NOOP
                    await reply("250 ok")
        writer.close()


async def serve(port: int, delay: float, seconds: float) -> None:
    sink = Sink(delay)
    server = await asyncio.start_server(sink.session, "127.0.0.1", port)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.serve_forever(), timeout=seconds)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=25)
    p.add_argument("--delay", type=float, default=0.1)
    p.add_argument("--seconds", type=float, default=7200)
    a = p.parse_args()
    asyncio.run(serve(a.port, a.delay, min(a.seconds, 86400)))


if __name__ == "__main__":
    main()
