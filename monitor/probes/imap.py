"""The `imap` check: connect, greeting, STARTTLS or implicit TLS, LOGIN, SELECT, LOGOUT.

Built on aioimaplib's protocol class, driven over a socket we connected ourselves (see `monitor.net`):
aioimaplib's own client hides a refused connection until its timeout and has no STARTTLS, so we do
both here. aioimaplib reports a failed command as a `NO`/`BAD` result, not an exception: every result is
checked. A connection the server drops is noticed at once rather than at the deadline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from aioimaplib import aioimaplib

from monitor.config import ImapSettings, RoundTripSettings, Target
from monitor.errors import ProbeError
from monitor.families import address_family
from monitor.net import open_socket
from monitor.probes.signin import policy_refusal, sign_in
from monitor.result import ProbeContext
from monitor.signin import Credential
from monitor.signin.sasl import describe_challenge, failure_answer, initial_response
from monitor.steps import IMPLICIT_TLS, STARTTLS, TOKEN, Kind, Reason, declare, run
from monitor.tls import client_context

__all__ = ["ImapSession", "probe"]

# The steps of the `imap` check in order (monitor/steps.py): its metric series, verdict side and docs rows.
STEPS = declare(Kind("imap", side="receive", steps=run(
    "dns", "connect", (IMPLICIT_TLS, ("tls",)), "greeting", "capability", (STARTTLS, ("starttls",)),
    (TOKEN, ("token",)), "login", "select", "logout")))

T = TypeVar("T")
# RFC 5530 response codes that make a NO temporary rather than a verdict on the credentials.
_TEMPORARY = re.compile(rb"\[(UNAVAILABLE|SERVERBUG|INUSE|LIMIT)\]", re.IGNORECASE)
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


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
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


class ImapSession:
    """One IMAP connection of a probe; also used by the round trip to read mail back."""

    def __init__(self, ctx: ProbeContext, target: Target, check: ImapSettings | RoundTripSettings) -> None:
        self.ctx = ctx
        self.target = target
        self.check = check
        self.protocol: _Protocol | None = None

    async def watch(self, awaitable: Awaitable[T]) -> T:
        """Await a library call, but fail as soon as the connection is gone: `reset` when the server closed
        it, `protocol` when it broke the protocol."""
        assert self.protocol is not None
        task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        lost: asyncio.Future[None] = self.protocol.lost
        try:
            done, _ = await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        except BaseException:
            task.cancel()
            raise
        if self.protocol.violation is not None:  # whatever the call returned: we dropped the connection
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the violation is the error to report
            task.cancel()
            raise ProbeError(self.ctx.stage, "protocol", self.protocol.violation)
        if task in done:
            return task.result()
        task.cancel()
        raise ConnectionResetError(self.protocol.closed_text())

    async def open(self) -> None:
        """Connect, read the greeting, secure the connection and log in."""
        ctx, target, check = self.ctx, self.target, self.check
        loop = asyncio.get_running_loop()
        sock = await open_socket(ctx, target.host, check.port, address_family(check.ip_family))
        self.protocol = protocol = _Protocol(loop)
        tls_context = client_context(target.tls.ca_file)
        try:
            if check.tls_mode == "implicit":
                ctx.step("tls")
                ctx.step_after_handshake = "greeting"
                await loop.create_connection(lambda: protocol, sock=sock, ssl=tls_context,
                                             server_hostname=target.server_name)
            else:
                await loop.create_connection(lambda: protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        if ctx.current_step != "greeting":
            ctx.step("greeting")
        greeting = await self.watch(protocol.greeting)
        ctx.heard(greeting.decode(errors="replace"))
        if greeting.startswith(b"* BYE"):
            # RFC 3501 7.1.5: the server refuses this client, like an SMTP 554 (or 421, when it says why
            # with a temporary RFC 5530 code): the server answered, so this is not a protocol error.
            reason: Reason = "reply_4xx" if _TEMPORARY.search(greeting) else "reply_5xx"
            text = greeting[:300].decode(errors="replace")
            raise ProbeError("greeting", reason, f"the server refused the session: {text}")
        if not greeting.startswith((b"* OK", b"* PREAUTH")):
            raise ProbeError("greeting", "protocol", f"not an IMAP greeting: {greeting[:200]!r}")
        ctx.step("capability")
        await self.watch(protocol.wait("AUTH|NONAUTH"))
        if check.tls_mode == "starttls":
            await self._starttls(tls_context)
        ctx.step("login")
        await self._login()

    async def _starttls(self, tls_context: object) -> None:
        ctx, protocol = self.ctx, self.protocol
        assert protocol is not None
        ctx.step("starttls")
        if "STARTTLS" not in protocol.capabilities:
            raise ProbeError("tls", "protocol", "the server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        ctx.say(f"{command.tag} STARTTLS")
        response = await self.watch(protocol.execute(command))
        self._heard(response)
        if response.result != "OK":
            raise ProbeError("tls", "protocol", f"STARTTLS refused: {response.result} {_text(response)}")
        loop = asyncio.get_running_loop()
        assert protocol.transport is not None
        protocol.transport = await loop.start_tls(protocol.transport, protocol, tls_context,  # type: ignore[arg-type]
                                                  server_hostname=self.target.server_name)
        # RFC 3501 6.2.1: capabilities learnt before TLS must be discarded.
        await self.watch(protocol.capability())

    async def _login(self) -> None:
        protocol, auth = self.protocol, self.target.auth
        assert protocol is not None and auth is not None
        if protocol.state == aioimaplib.AUTH:
            # A `* PREAUTH` greeting: the server authenticated the connection itself, and LOGIN is now
            # illegal (RFC 3501 7.1.4). Sending it anyway only earns a library error.
            self.ctx.note("the server pre-authenticated the connection (PREAUTH): LOGIN skipped")
            return
        if auth.oauth2 is not None:
            await self._authenticate()
            return
        if "LOGINDISABLED" in protocol.capabilities:
            # RFC 3501: the server refuses LOGIN on this connection; sending it would expose the password.
            raise ProbeError("auth", "protocol", "the server disables LOGIN on this connection (LOGINDISABLED): "
                                                 "use tls: starttls or implicit")
        self.ctx.say(f"LOGIN {auth.username} ********")
        response = await self.watch(protocol.login(auth.username, auth.password.reveal()))
        self._heard(response)
        if response.result != "OK":
            temporary = any(_TEMPORARY.search(line) for line in response.lines if isinstance(line, bytes))
            reason: Reason = "reply_4xx" if temporary else "auth_disabled" if policy_refusal(_text(response)) else \
                "auth_rejected"
            raise ProbeError("auth", reason, f"LOGIN {response.result}: {_text(response)}")

    async def _authenticate(self) -> None:
        """AUTHENTICATE XOAUTH2 / OAUTHBEARER (SASL-IR when offered), renewing a rejected token once."""
        protocol, auth = self.protocol, self.target.auth
        assert protocol is not None and auth is not None
        mechanism = auth.mechanism or "xoauth2"
        if f"AUTH={mechanism.upper()}" not in protocol.capabilities:
            offered = sorted(c[5:] for c in protocol.capabilities if c.startswith("AUTH="))
            raise ProbeError("auth", "protocol", f"the server does not offer AUTHENTICATE {mechanism.upper()} "
                                                 f"(it offers: {', '.join(offered) or 'none'})")
        await sign_in(self.ctx, auth, "login", lambda token: self._sasl(mechanism, token))

    async def _sasl(self, mechanism: str, token: Credential) -> ProbeError | None:
        protocol, ctx = self.protocol, self.ctx
        assert protocol is not None and protocol.transport is not None
        transport = protocol.transport
        name = mechanism.upper()
        response_text = initial_response(mechanism, token.username, token.secret.reveal(), self.target.server_name,
                                         self.check.port)
        sasl_ir = "SASL-IR" in protocol.capabilities
        sent = [sasl_ir]
        challenges: list[str] = []

        def on_continuation(line: bytes) -> None:
            text = line[1:].strip().decode(errors="replace")
            ctx.heard(f"+ {text}".rstrip())
            if not sent[0]:
                sent[0] = True
                ctx.say("********")
                transport.write(response_text.encode() + b"\r\n")
                return
            # An error challenge: answer it so the server sends its tagged NO (RFC 7628 3.2.3).
            challenges.append(describe_challenge(text))
            answer = failure_answer(mechanism)
            ctx.say(answer or "(empty line)")
            transport.write(answer.encode() + b"\r\n")

        args = (name, response_text) if sasl_ir else (name,)
        command = aioimaplib.Command("AUTHENTICATE", protocol.new_tag(), *args, loop=protocol.loop)
        ctx.say(f"{command.tag} AUTHENTICATE {name}" + (" ********" if sasl_ir else ""))
        protocol.on_continuation = on_continuation
        try:
            response = await self.watch(protocol.execute(command, scrub=response_text))
        finally:
            protocol.on_continuation = None
        self._heard(response)
        if response.result == "OK":
            protocol.state = aioimaplib.AUTH
            return None
        text = _text(response)
        temporary = any(_TEMPORARY.search(line) for line in response.lines if isinstance(line, bytes))
        reason: Reason = "reply_4xx" if temporary else "auth_disabled" if policy_refusal(text) else "auth_rejected"
        detail = f"AUTHENTICATE {name} {response.result}: {text}" + (f" ({challenges[-1]})" if challenges else "")
        return ProbeError("auth", reason, detail)

    async def select(self, mailbox: str) -> None:
        protocol = self.protocol
        assert protocol is not None
        self.ctx.say(f"SELECT {mailbox}")
        response = await self.watch(protocol.select(mailbox))
        self._heard(response)
        if response.result != "OK":
            raise ProbeError("select", "protocol", f"SELECT {mailbox} {response.result}: {_text(response)}")

    async def quota(self, mailbox: str) -> None:
        """RFC 9208 GETQUOTAROOT for the mailbox, when the server offers QUOTA: its usage and limits go to the
        result (a full mailbox explains a round trip that stalls). A refusal only means no quota to report."""
        protocol = self.protocol
        assert protocol is not None
        if "QUOTA" not in protocol.capabilities:
            return
        quoted = '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'
        command = aioimaplib.Command("GETQUOTAROOT", protocol.new_tag(), quoted, untagged_resp_name="QUOTA",
                                     loop=protocol.loop)
        self.ctx.say(f"{command.tag} GETQUOTAROOT {quoted}")
        response = await self.watch(protocol.execute(command))
        self._heard(response)
        if response.result == "OK":
            self.ctx.quota = parse_quota(response.lines)

    async def logout(self) -> None:
        protocol = self.protocol
        assert protocol is not None
        self.ctx.say("LOGOUT")
        response = await self.watch(protocol.logout())
        self._heard(response)

    def close(self) -> None:
        """Drop the connection and any background work of the library; safe to call twice."""
        protocol = self.protocol
        if protocol is None:
            return
        for task in list(protocol.tasks):
            task.cancel()
        if protocol.transport is not None:
            protocol.transport.abort()

    def _heard(self, response: aioimaplib.Response) -> None:
        for line in response.lines[-3:]:
            if isinstance(line, bytes):
                self.ctx.heard(line.decode(errors="replace"))
        self.ctx.heard(f"{response.result}")


_QUOTA_LIST = re.compile(rb"\(([^()]*)\)")


def parse_quota(lines: list[bytes | bytearray | str]) -> dict[str, tuple[int, int]]:
    """`(STORAGE 2 1024 MESSAGE 3 3)` of every QUOTA response → {resource: (usage, limit)}; of several roots
    limiting one resource, the fullest counts."""
    found: dict[str, tuple[int, int]] = {}
    for line in lines:
        if not isinstance(line, (bytes, bytearray)):
            continue
        for group in _QUOTA_LIST.findall(bytes(line)):
            words = group.split()
            for name, usage, limit in zip(words[0::3], words[1::3], words[2::3], strict=False):
                if not (usage.isdigit() and limit.isdigit()) or int(limit) == 0:
                    continue
                resource = name.decode(errors="replace").upper()
                best = found.get(resource)
                if best is None or int(usage) / int(limit) > best[0] / best[1]:
                    found[resource] = (int(usage), int(limit))
    return found


def _text(response: aioimaplib.Response) -> str:
    lines = [line.decode(errors="replace") for line in response.lines if isinstance(line, bytes)]
    return " ".join(lines)[-300:]


async def probe(ctx: ProbeContext, target: Target, check: ImapSettings) -> None:
    """Run the `imap` check once; raises on failure, returns on success."""
    session = ImapSession(ctx, target, check)
    try:
        await session.open()
        ctx.step("select")
        await session.select(check.mailbox)
        await session.quota(check.mailbox)
        ctx.step("logout")
        await session.logout()
    finally:
        session.close()
