"""aioimaplib's IMAP protocol class, made fit for probing hostile and broken servers.

The library's protocol, driven over a socket we connected ourselves (`imap.py`), plus what a probe needs and the
library lacks: futures for the greeting and for the connection going away, the server's BYE kept for `detail`, new
mail (`* n EXISTS`) noticed whichever command it came with, SASL continuations answered by us (never logged), and
bounds on what a server can make us buffer. It is the one place that touches the library's private state
(`incomplete_line`, `tasks`, `_continuation`, `_handle_line`; tests/test_aioimaplib_contract.py pins them), apart
from the IDLE queue read in `readback_imap.py`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator

from aioimaplib import aioimaplib

__all__ = ["ImapProtocol"]

# A hostile server must not make us buffer without bound: one response line (a literal does not count)
# and everything received in answer to one command are capped. Real answers are far below both.
_LINE_LIMIT = 256 * 1024
_RESPONSE_LIMIT = 32 * 1024 * 1024
# aioimaplib parses the lines of one `data_received` call recursively, one stack frame per line: a few
# thousand short lines in one read (a big SELECT, a chatty server) would raise RecursionError. We feed it
# at most this many lines per call.
_LINES_PER_CALL = 200
# How much of a server's BYE line is kept for `detail`.
_BYE_KEPT = 300
_EXISTS = re.compile(rb"\* \d+ EXISTS\s*$", re.IGNORECASE)


def _pieces(data: bytes) -> Iterator[bytes]:
    """`data` cut after every `_LINES_PER_CALL`-th CRLF (any cut is fine: TCP cuts anywhere too)."""
    start = 0
    while start < len(data):
        end = start
        for _ in range(_LINES_PER_CALL):
            end = data.find(b"\r\n", end)
            if end < 0:
                yield data[start:]
                return
            end += 2
        yield data[start:end]
        start = end


class ImapProtocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, plus futures for the greeting and for the connection going away.

    `lost` is done when the connection is unusable: the server closed it, or it broke the protocol in a
    way the library cannot go on from (then `violation` says how, and we abort the connection).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, None)
        self.greeting: asyncio.Future[bytes] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.violation: str | None = None
        # The last untagged BYE (RFC 3501 7.1.5), e.g. `* BYE [ALERT] shutting down`: the server's own words
        # for why it closes, which must reach `detail` rather than be lost in the library.
        self.bye: str | None = None
        # Set by every untagged `* n EXISTS` (RFC 3501 7.3.1), whichever command it came with or none: the mailbox
        # grew. Taken (and reset) by the read-back's poll, which then fetches what is new.
        self.grew = False
        self._received = 0
        # During AUTHENTICATE: answers the server's `+` continuation lines (ours, not the library's: it would log
        # the pending command, whose SASL-IR argument carries the token).
        self.on_continuation: Callable[[bytes], None] | None = None

    def _continuation(self, line: bytes) -> None:
        if self.on_continuation is not None:
            self.on_continuation(line)
        else:
            super()._continuation(line)

    def _handle_line(self, line: bytes, current_cmd: aioimaplib.Command | None) -> aioimaplib.Command | None:
        if line[:6].upper() == b"* BYE ":
            self.bye = line[:_BYE_KEPT].decode(errors="replace")
        elif _EXISTS.match(line):
            self.grew = True
        return super()._handle_line(line, current_cmd)

    def closed_text(self) -> str:
        """Why the connection went away, in the server's words where it gave any."""
        return f"the server closed the connection: {self.bye}" if self.bye else "the server closed the connection"

    async def welcome(self, command: bytes) -> None:
        if self.greeting.done():
            return  # more lines before the library left the CONNECTED state: the first one was the greeting
        self.greeting.set_result(command)
        # Only a positive greeting goes on to the library's handling (which asks for CAPABILITY);
        # a BYE is ours to report, not an exception lost in a background task.
        if command.startswith((b"* OK", b"* PREAUTH")):
            try:
                await super().welcome(command)
            except Exception as exc:  # e.g. a CAPABILITY without IMAP4rev1: the library gives up here
                self.violated(f"after the greeting: {type(exc).__name__}: {exc}")

    def send(self, line: str, scrub: str | None = None) -> None:
        self._received = 0
        if self.transport is not None and self.transport.is_closing():
            # The server closed the connection before this command: a reset on every event loop. (asyncio's
            # transport drops the bytes and the loss shows later; uvloop's raises RuntimeError, which would
            # read as a fault of mailmon itself.)
            raise ConnectionResetError(self.closed_text())
        super().send(line, scrub=scrub)

    def data_received(self, d: bytes) -> None:
        if self.violation is not None:
            return
        self._received += len(d)
        if self._received > _RESPONSE_LIMIT:
            self.violated(f"more than {_RESPONSE_LIMIT} bytes in answer to one command")
            return
        try:
            for piece in _pieces(d):
                super().data_received(piece)
        except Exception as exc:  # the library's parser gave up (say, a tagged reply to no command of ours)
            # Not the library's message: it quotes the pending command, and that can be LOGIN with the password.
            self.violated(f"a response the IMAP client cannot follow ({type(exc).__name__})")
            return
        if len(self.incomplete_line) > _LINE_LIMIT:
            self.violated(f"response line longer than {_LINE_LIMIT} bytes")

    def violated(self, why: str) -> None:
        """The server broke the protocol: remember how, and drop the connection."""
        if self.violation is None:
            self.violation = why
        self.incomplete_line = b""
        if not self.lost.done():
            self.lost.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        super().connection_lost(exc)

    def abort(self) -> None:
        """Drop the connection and any background work of the library; safe to call twice."""
        for task in list(self.tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.abort()
