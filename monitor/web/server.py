"""A small HTTP/1.1 server on asyncio streams, enough for Prometheus scrapes, probes of health and a status page.

No web framework is in our stack and the needs are modest (a handful of GET/POST routes, one request per
connection), so this stays ours. Requests are bounded in size and time so a slow or hostile client
cannot tie the monitor up: at most `max_connections` at once (the rest are closed at once and counted), the
request head within a short deadline, the response written within another (a reader taking one byte a second
is cut off, its buffered body freed). The cap is what keeps the probes' descriptors theirs (issue 18).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
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
# The kernel's queue of connections not yet accepted (asyncio's default too).
_BACKLOG = 100
# Connections accepted per wake-up of a listening socket: between batches, due probe timers run.
_ACCEPT_BATCH = 32
# After `accept` failed for want of descriptors or memory, accepting resumes this much later.
_ACCEPT_PAUSE = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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
        self.active = 0  # connections being served now (from accept on)
        self._listeners: list[socket.socket] = []
        self._tls: ssl.SSLContext | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Listen on every address `host` resolves to (as asyncio's create_server would) and accept there.

        Accepting is ours, not asyncio's server: a connection over the cap is closed right after `accept`, before
        any transport, protocol, task or TLS handshake exists for it (a flood's refusals cost the loop a system
        call or two each, issue 18); one under it is counted from that moment, so connections still in their TLS
        handshake count toward the cap too.
        """
        loop = asyncio.get_running_loop()
        self._tls = tls
        self._listeners = await _listen(loop, host, port)
        for listener in self._listeners:
            loop.add_reader(listener.fileno(), self._accept, listener)

    @property
    def port(self) -> int:
        assert self._listeners, "not started"
        return int(self._listeners[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting and close the listening sockets (connections being served run to their end)."""
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.remove_reader(listener.fileno())
            listener.close()
        self._listeners = []

    def _accept(self, listener: socket.socket) -> None:
        """Accept up to a batch of waiting connections: close each at once over the cap, else start serving it."""
        for _ in range(_ACCEPT_BATCH):
            try:
                connection, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while waiting in the backlog
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    log.warning("accepting an HTTP connection failed: %s", exc)
                    return
                # Out of descriptors or kernel memory: the connection stays in the backlog, and the listening
                # socket stays readable, so accepting again now would spin the loop. Pause, as asyncio's server
                # does, and leave what is left to the probes meanwhile.
                log.warning("cannot accept HTTP connections for %.0f s: %s", _ACCEPT_PAUSE, exc)
                loop = asyncio.get_running_loop()
                loop.remove_reader(listener.fileno())
                loop.call_later(_ACCEPT_PAUSE, self._resume, listener)
                return
            if self.active >= self.max_connections:
                connection.close()  # without reading or answering: an answer could block on a slow peer
                if self.on_rejected is not None:
                    self.on_rejected()
                continue
            self.active += 1  # here: the next connection of this batch must see it
            task = asyncio.get_running_loop().create_task(self._connect(connection))
            self._connecting.add(task)  # held: the loop keeps only weak references to tasks
            task.add_done_callback(self._connecting.discard)

    def _resume(self, listener: socket.socket) -> None:
        if listener in self._listeners:  # not stopped meanwhile
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    async def _connect(self, connection: socket.socket) -> None:
        """Wrap an admitted connection in streams (and TLS) and serve it; `active` is counted out by `_serve`, or
        here when it never gets that far."""
        loop = asyncio.get_running_loop()
        protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=_MAX_HEAD), self._serve)
        handed_on = False
        try:
            connection.setblocking(False)
            await loop.connect_accepted_socket(lambda: protocol, connection, ssl=self._tls,
                                               ssl_handshake_timeout=self.head_timeout if self._tls else None)
            handed_on = True
        except OSError as exc:  # reset, TLS handshake failed or too slow (SSLError and TimeoutError are OSErrors)
            log.debug("an HTTP connection ended before its request: %s", exc)
        finally:
            if not handed_on:  # whatever ended it (an error, a cancellation at shutdown): count it out, free it
                self.active -= 1
                # A no-op when the transport owned the socket: asyncio closed it, uvloop detached it.
                connection.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One admitted connection (counted in `active` by `_accept`; counted out here)."""
        # Deadlines by `asyncio.timeout`, not `wait_for`: on Python 3.11 each `wait_for` made a task of its own, three
        # per request, work for the loop that a burst of scrapers multiplies (bench/http_overload.py, issue 18).
        try:
            try:
                async with asyncio.timeout(self.head_timeout):
                    request = await _read_request(reader)
            except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError) as exc:
                if not isinstance(exc, asyncio.IncompleteReadError):
                    async with asyncio.timeout(self.write_timeout):
                        await _write(writer, Response.text("bad request\n", 400), head_only=False)
                return
            response = await self._dispatch(request)
            async with asyncio.timeout(self.write_timeout):
                await _write(writer, response, head_only=request.method == "HEAD")
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
            async with asyncio.timeout(self.handler_timeout):
                return await handler(request)
        except TimeoutError:
            log.warning("handler for %s %s timed out", request.method, request.path)
            return Response(503, b"busy, try again\n", headers={"Retry-After": "5"})
        except Exception:
            log.exception("handler for %s %s failed", request.method, request.path)
            return Response.text("internal error\n", 500)


async def _listen(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of `host` (every local one for ""), as asyncio's create_server makes
    them: SO_REUSEADDR, IPv6 sockets v6-only. OSError (with the address in its text) when one cannot be bound."""
    infos = await loop.getaddrinfo(host or None, port, family=socket.AF_UNSPEC,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # one socket per distinct address
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                listener.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address {address!r}: "
                                         f"{(exc.strerror or str(exc)).lower()}") from None
            listener.setblocking(False)
            listener.listen(_BACKLOG)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


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
