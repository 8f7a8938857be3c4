"""A small HTTP/1.1 server on asyncio streams, enough for Prometheus scrapes, probes of health and a status page.

No web framework is in our stack and the needs are modest (a handful of GET/POST routes, one request per
connection), so this stays ours. Requests are bounded in size and time so a slow or hostile client
cannot tie the monitor up: at most `max_connections` at once (the rest are closed at once and counted), the
request head within a short deadline, the response written within another (a reader taking one byte a second
is cut off, its buffered body freed). The cap is what keeps the probes' descriptors theirs (issue 18).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qs, urlsplit

__all__ = ["Handler", "HttpServer", "Request", "Response"]

log = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_MAX_BODY = 64 * 1024
# The whole request (head and the small bodies we accept) within this: a scraper sends it in one packet, a
# half-request held open for longer only holds a descriptor (the flood of issue 18 held them for 10 s).
HEAD_TIMEOUT = 3.0
# The response within this: a 5,000-target scrape body leaves in well under a second on loopback; a reader slower
# than this keeps its whole body in memory until cut off.
WRITE_TIMEOUT = 30.0
# Response bodies are written this much at a time (see _write).
_WRITE_SLICE = 256 * 1024
# A handler's answer within this, else 503: requests queued behind a busy history or thread pool give up
# instead of piling up (the connection cap bounds how many wait).
HANDLER_TIMEOUT = 20.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode("utf-8"))


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Routes `(method, path)` to handlers; serves until `stop()`."""

    def __init__(self, routes: dict[tuple[str, str], Handler],
                 authorize: Callable[[str | None], Awaitable[bool]] | None = None,
                 max_connections: int = 64, on_rejected: Callable[[], None] | None = None,
                 head_timeout: float = HEAD_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 handler_timeout: float = HANDLER_TIMEOUT) -> None:
        self.routes = routes
        # Checks the Authorization header of every request (basic auth from the web config), if set.
        self.authorize = authorize
        self.max_connections = max_connections
        self.on_rejected = on_rejected
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.handler_timeout = handler_timeout
        self.active = 0  # connections being served now
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Gate(self), host, port, ssl=tls)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _admit(self, transport: asyncio.Transport) -> bool:
        """Count a new connection in, or close it at once if the cap is reached (without reading or answering: an
        answer could block on a slow peer)."""
        if self.active >= self.max_connections:
            transport.abort()
            if self.on_rejected is not None:
                self.on_rejected()
            return False
        self.active += 1  # here, not in _serve: the next connection of the same accept batch must see it
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One admitted connection (counted in `active` by `_admit`; counted out here)."""
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), self.head_timeout)
            except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError) as exc:
                if not isinstance(exc, asyncio.IncompleteReadError):
                    await asyncio.wait_for(_write(writer, Response.text("bad request\n", 400), head_only=False),
                                           self.write_timeout)
                return
            response = await self._dispatch(request)
            await asyncio.wait_for(_write(writer, response, head_only=request.method == "HEAD"), self.write_timeout)
        except TimeoutError:
            writer.transport.abort()  # a reader too slow for the deadline: drop its buffered body now
        except (ConnectionError, ssl.SSLError):
            pass  # the client went away; nothing to tell it
        finally:
            self.active -= 1
            writer.close()

    async def _dispatch(self, request: Request) -> Response:
        if self.authorize is not None and not await self.authorize(request.headers.get("authorization")):
            return Response(401, b"unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="mailmon"'})
        method = "GET" if request.method == "HEAD" else request.method
        handler = self.routes.get((method, request.path))
        if handler is None:
            if any(path == request.path for _, path in self.routes):
                allowed = sorted({m for m, path in self.routes if path == request.path})
                return Response(405, b"method not allowed\n", headers={"Allow": ", ".join(allowed)})
            return Response.text("not found\n", 404)
        try:
            return await asyncio.wait_for(handler(request), self.handler_timeout)
        except TimeoutError:
            log.warning("handler for %s %s timed out", request.method, request.path)
            return Response(503, b"busy, try again\n", headers={"Retry-After": "5"})
        except Exception:
            log.exception("handler for %s %s failed", request.method, request.path)
            return Response.text("internal error\n", 500)


class _Gate(asyncio.Protocol):
    """Every new connection's first protocol: over the cap it is closed before a stream reader, writer or task
    exists for it (a flood's refused connections cost the loop little, issue 18); admitted, it hands the connection
    to a stream protocol that runs `HttpServer._serve`."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if not server._admit(cast(asyncio.Transport, transport)):  # a stream transport: create_server made it
            return
        protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=_MAX_HEAD), server._serve)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


async def _read_request(reader: asyncio.StreamReader) -> Request:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("malformed request line")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("malformed header")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or "0")
    if length < 0 or length > _MAX_BODY:
        raise ValueError("body too large")
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    return Request(method=method.upper(), path=url.path or "/", query=parse_qs(url.query), headers=headers, body=body)


async def _write(writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
    reason = HTTPStatus(response.status).phrase
    headers = {
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        "Connection": "close",
        **response.headers,
    }
    head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1"))
    if not head_only:
        # In slices, each drained before the next: the transport copies whatever the socket does not take at once,
        # so one write of the body would hold a second copy of it per slow reader (tens of MB per scrape).
        body = memoryview(response.body)
        for start in range(0, len(body), _WRITE_SLICE):
            writer.write(body[start:start + _WRITE_SLICE])
            await writer.drain()
    await writer.drain()
