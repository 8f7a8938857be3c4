"""A fake TCP server for hostile-peer tests: an asyncio server on 127.0.0.1:0 in the test's own event loop.

Each accepted connection runs one *behaviour* (an async function of a `Conn`). The server keeps track of
every connection task and transport it created, so closing it leaves nothing behind: tests compare tasks and
file descriptors before and after, and a fake that leaked its own would hide (or fake) a leak in the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from types import TracebackType

__all__ = ["Behaviour", "Conn", "FakeServer"]

# What a fake reads from the client is short (commands); anything longer is the client misbehaving.
_READ_LIMIT = 64 * 1024


class Conn:
    """One client connection as a behaviour sees it: send bytes, read lines, upgrade to TLS, hang, reset."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def drip(self, data: bytes, interval: float = 1.0) -> None:
        """Send `data` one byte at a time, `interval` seconds apart."""
        for i in range(len(data)):
            self.writer.write(data[i:i + 1])
            await self.writer.drain()
            await asyncio.sleep(interval)

    async def line(self) -> bytes | None:
        """The client's next line (with its line ending), or None when the client closed the connection."""
        try:
            line = await self.reader.readuntil(b"\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        return line

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade this (server-side) connection to TLS, as after STARTTLS/STLS."""
        await self.writer.start_tls(context)

    async def hang(self) -> None:
        """Keep the connection open and say nothing, until the client goes away (or the fake is closed).

        Whatever the client sends meanwhile is read and dropped, so a hung fake notices the client leave
        and frees its side of the connection: the soak counts sockets, and must count only the monitor's.
        """
        await self.idle(None)

    async def idle(self, seconds: float | None) -> bool:
        """Say nothing for `seconds` (None: for ever); True when the client went away meanwhile."""
        async def until_eof() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while await self.reader.read(65536):
                    pass
        try:
            await asyncio.wait_for(until_eof(), seconds)
        except TimeoutError:
            return False
        return True

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) rather than a FIN: a crashed server or a middlebox."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        """Close with a FIN."""
        self.writer.close()


Behaviour = Callable[[Conn], Awaitable[None]]


class FakeServer:
    """`async with FakeServer(behaviour) as fake:` then connect to 127.0.0.1:`fake.port`.

    `ssl` makes it an implicit-TLS server (the handshake happens before the behaviour runs). Leaving the
    block cancels every connection's behaviour and aborts its transport, then closes the listener.
    """

    def __init__(self, behaviour: Behaviour, *, ssl: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.ssl = ssl
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def live(self) -> int:
        """Connections whose behaviour is still running."""
        return len(self._tasks)

    async def start(self) -> FakeServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl,
                                                  limit=_READ_LIMIT, backlog=1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self.behaviour(Conn(reader, writer))
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            pass  # the client went away or rejected us: that is what these tests provoke
        except asyncio.CancelledError:
            pass  # closed by close(): asyncio's stream callback logs a cancelled connection task as an error
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        # Aborted transports close their sockets on the next loop iterations.
        for _ in range(3):
            await asyncio.sleep(0)

    async def __aenter__(self) -> FakeServer:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
