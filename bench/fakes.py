#!/usr/bin/env python3
"""Tiny plaintext SMTP, IMAP and POP3 servers on 127.0.0.1 for the scale benchmark (bench/scale.py).

They speak just enough of each protocol for mailmon's `smtp`, `imap` and `pop3` checks with `tls: none` to
succeed (banner/EHLO/AUTH PLAIN/QUIT; greeting/CAPABILITY/LOGIN/SELECT/LOGOUT; greeting/CAPA/USER/PASS/STAT/QUIT),
as bare asyncio Protocols, so that the server side costs as little CPU as possible and mailmon is what is
measured. Not a mail server, not a test fake: no TLS, no state, every login succeeds.

Usage: python bench/fakes.py [--max-seconds 3600]   prints one JSON line {"smtp": port, "imap": port, "pop3": port}
and serves until stdin closes (or the time limit), then prints the sessions served per protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

SERVED = {"smtp": 0, "imap": 0, "pop3": 0}


class _LineProtocol(asyncio.Protocol):
    name = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        SERVED[self.name] += 1
        transport.write(self.greeting())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 65536:
            self.transport.abort()
            return
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            reply, close = self.answer(line.rstrip(b"\r"))
            if reply:
                self.transport.write(reply)
            if close:
                self.transport.close()
                return

    def greeting(self) -> bytes:
        raise NotImplementedError

    def answer(self, line: bytes) -> tuple[bytes, bool]:
        raise NotImplementedError


class Smtp(_LineProtocol):
    name = "smtp"

    def greeting(self) -> bytes:
        return b"220 fake.bench ESMTP\r\n"

    def answer(self, line: bytes) -> tuple[bytes, bool]:
        verb = line.split(b" ", 1)[0].upper()
        if verb in (b"EHLO", b"HELO"):
            return b"250-fake.bench\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n", False
        if verb == b"AUTH":
            return b"235 2.7.0 Authentication successful\r\n", False
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n", True
        return b"250 2.0.0 Ok\r\n", False


class Imap(_LineProtocol):
    name = "imap"

    def greeting(self) -> bytes:
        return b"* OK fake.bench IMAP4rev1 ready\r\n"

    def answer(self, line: bytes) -> tuple[bytes, bool]:
        parts = line.split(b" ", 2)
        if len(parts) < 2:
            return b"* BAD what?\r\n", False
        tag, command = parts[0], parts[1].upper()
        if command == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK CAPABILITY completed\r\n", False
        if command == b"LOGIN":
            return tag + b" OK [CAPABILITY IMAP4rev1] Logged in\r\n", False
        if command in (b"SELECT", b"EXAMINE"):
            return (b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 0 EXISTS\r\n* 0 RECENT\r\n"
                    b"* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT 1] Predicted next UID\r\n"
                    + tag + b" OK [READ-WRITE] Select completed\r\n"), False
        if command == b"LOGOUT":
            return b"* BYE Logging out\r\n" + tag + b" OK Logout completed\r\n", True
        return tag + b" OK done\r\n", False


class Pop3(_LineProtocol):
    name = "pop3"

    def greeting(self) -> bytes:
        return b"+OK fake.bench POP3 ready\r\n"

    def answer(self, line: bytes) -> tuple[bytes, bool]:
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"CAPA":  # RFC 2449: a multi-line answer; USER says plain USER/PASS login is offered
            return b"+OK Capability list follows\r\nUSER\r\n.\r\n", False
        if verb == b"STAT":
            return b"+OK 0 0\r\n", False
        if verb == b"QUIT":
            return b"+OK Bye\r\n", True
        return b"+OK\r\n", False


async def serve(max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    servers = {}
    for cls in (Smtp, Imap, Pop3):
        servers[cls.name] = await loop.create_server(cls, "127.0.0.1", 0, backlog=1024)
    ports = {name: server.sockets[0].getsockname()[1] for name, server in servers.items()}
    print(json.dumps(ports), flush=True)
    stdin_closed = loop.create_future()

    def on_stdin() -> None:
        if not sys.stdin.buffer.raw.read(4096) and not stdin_closed.done():  # type: ignore[attr-defined]
            stdin_closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin_closed, max_seconds)
    loop.remove_reader(sys.stdin.fileno())
    for server in servers.values():
        server.close()
    print(json.dumps({"served": SERVED}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(serve(args.max_seconds))


if __name__ == "__main__":
    main()
