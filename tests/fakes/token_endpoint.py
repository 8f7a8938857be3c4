"""A fake OAuth2 token endpoint (RFC 6749 section 5) on 127.0.0.1, for unit tests of the token sources.

The lab's identity provider (scripts/lab/idp.py) is the real-protocol peer for the acceptance tests; this fake is
for what must be provoked per test without it: exact request counting and concurrency, error replies, a hang,
a connection closed without an answer. It speaks HTTP/1.1 on asyncio streams, one request per connection.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.server import Conn, FakeServer

__all__ = ["Reply", "TokenEndpoint"]


@dataclass
class Reply:
    """What the endpoint answers: a status and a JSON body (RFC 6749 5.1 / 5.2), or `hang` / `close`."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    hang: bool = False
    close: bool = False
    delay: float = 0.0


def ok(token: str, expires_in: int | None = 3600, **extra: Any) -> Reply:
    body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", **extra}
    if expires_in is not None:
        body["expires_in"] = expires_in
    return Reply(200, body)


def error(status: int, code: str, description: str = "") -> Reply:
    body = {"error": code}
    if description:
        body["error_description"] = description
    return Reply(status, body)


class TokenEndpoint:
    """`async with TokenEndpoint(answer) as idp:` then POST to `idp.url`. `answer(form)` gives each Reply (default:
    a fresh token per request); `requests` holds every form received, `max_concurrent` the most at one time."""

    def __init__(self, answer: Callable[[dict[str, str]], Reply] | None = None) -> None:
        self.answer = answer or (lambda form: ok(f"token-{len(self.requests)}"))
        self.requests: list[dict[str, str]] = []
        self.headers: list[dict[str, str]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self._server = FakeServer(self._serve)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/token"

    async def _serve(self, conn: Conn) -> None:
        request = await conn.line()
        if request is None:
            return
        headers: dict[str, str] = {}
        while (line := await conn.line()) not in (None, b"\r\n", b"\n"):
            assert line is not None
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await conn.reader.readexactly(length) if length else b""
        form = dict(urllib.parse.parse_qsl(body.decode()))
        self.requests.append(form)
        self.headers.append(headers)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            reply = self.answer(form)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.hang:
                await conn.hang()
                return
            if reply.close:
                conn.close()
                return
            payload = json.dumps(reply.body).encode()
            head = (f"HTTP/1.1 {reply.status} X\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
            await conn.send(head.encode() + payload)
            conn.close()
        finally:
            self.concurrent -= 1

    async def __aenter__(self) -> TokenEndpoint:
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()
