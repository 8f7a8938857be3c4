"""The `imap` check: connect, greeting, STARTTLS or implicit TLS, LOGIN, SELECT, LOGOUT.

Built on aioimaplib's protocol class (made fit for hostile servers in `imap_protocol.py`), driven over a socket we
connected ourselves (see `monitor.net`): aioimaplib's own client hides a refused connection until its timeout and
has no STARTTLS, so we do both here. aioimaplib reports a failed command as a `NO`/`BAD` result, not an exception:
every result is checked. A connection the server drops is noticed at once rather than at the deadline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TypeVar

from aioimaplib import aioimaplib

from monitor.config import ImapSettings, RoundTripSettings, Target
from monitor.errors import ProbeError
from monitor.families import address_family
from monitor.net import open_socket
from monitor.probes.imap_protocol import ImapProtocol
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


class ImapSession:
    """One IMAP connection of a probe; also used by the round trip to read mail back."""

    def __init__(self, ctx: ProbeContext, target: Target, check: ImapSettings | RoundTripSettings) -> None:
        self.ctx = ctx
        self.target = target
        self.check = check
        self.protocol: ImapProtocol | None = None

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
        self.protocol = protocol = ImapProtocol(loop)
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
            raise ProbeError("auth", _refusal(response), f"LOGIN {response.result}: {_text(response)}")

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
        detail = f"AUTHENTICATE {name} {response.result}: {_text(response)}" + (
            f" ({challenges[-1]})" if challenges else "")
        return ProbeError("auth", _refusal(response), detail)

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
        if self.protocol is not None:
            self.protocol.abort()

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


def _refusal(response: aioimaplib.Response) -> Reason:
    """The reason for a refused LOGIN or AUTHENTICATE: temporary (RFC 5530 code), a policy, or the credentials."""
    if any(_TEMPORARY.search(line) for line in response.lines if isinstance(line, bytes)):
        return "reply_4xx"
    return "auth_disabled" if policy_refusal(_text(response)) else "auth_rejected"


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
