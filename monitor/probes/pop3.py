"""The `pop3` check (connect, greeting, STLS or implicit TLS, USER/PASS, STAT, QUIT) and its small client.

There is no asyncio POP3 client in our stack and the protocol is short (RFC 1939, STLS from RFC 2595),
so this is our own, on asyncio streams: deadlines and cancellation then work like everywhere else.
Replies are bounded in length, so a hostile server cannot make us buffer without limit.
"""

from __future__ import annotations

import asyncio
import re

from monitor.config import CheckSettings, Target
from monitor.errors import ProbeError
from monitor.net import open_socket
from monitor.probes.signin import policy_refusal, sign_in
from monitor.result import ProbeContext
from monitor.signin import Credential
from monitor.signin.sasl import describe_challenge, failure_answer, initial_response
from monitor.steps import IMPLICIT_TLS, PASSWORD, STARTTLS, TOKEN, Kind, Reason, Stage, declare, run
from monitor.tls import client_context

__all__ = ["Pop3Session", "probe"]

# The steps of the `pop3` check in order (monitor/steps.py): its metric series, verdict side and docs rows.
STEPS = declare(Kind("pop3", side="receive", steps=run(
    "dns", "connect", (IMPLICIT_TLS, ("tls",)), "greeting", (STARTTLS, ("stls",)), (PASSWORD, ("user", "pass")),
    (TOKEN, ("token", "auth")), "stat", "quit")))

# RFC 1939 caps a response line at 512 octets; allow generous slack for real servers, not megabytes.
_LINE_LIMIT = 64 * 1024
# RFC 3206 response codes that make -ERR temporary.
_TEMPORARY = re.compile(r"^-ERR \[(IN-USE|SYS/TEMP|LOGIN-DELAY)\]", re.IGNORECASE)


class Pop3Session:
    """One POP3 connection of a probe; also used by the round trip to read mail back."""

    def __init__(self, ctx: ProbeContext, target: Target, check: CheckSettings) -> None:
        self.ctx = ctx
        self.target = target
        self.check = check
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connect, read the greeting, secure the connection and log in."""
        ctx, target, check = self.ctx, self.target, self.check
        sock = await open_socket(ctx, target.host, check.port)
        tls_context = client_context(target.tls.ca_file)
        try:
            if check.tls_mode == "implicit":
                ctx.step("tls")
                ctx.step_after_handshake = "greeting"
                self.reader, self.writer = await asyncio.open_connection(
                    sock=sock, ssl=tls_context, server_hostname=target.server_name, limit=_LINE_LIMIT)
            else:
                self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=_LINE_LIMIT)
        except BaseException:
            sock.close()
            raise
        if ctx.current_step != "greeting":
            ctx.step("greeting")
        greeting = await self._line("greeting")
        if not greeting.startswith("+OK"):
            reason: Reason
            if _TEMPORARY.match(greeting):
                reason = "reply_4xx"
            else:
                reason = "reply_5xx" if greeting.startswith("-ERR") else "protocol"
            raise ProbeError("greeting", reason, greeting[:300])
        if check.tls_mode == "starttls":
            ctx.step("stls")
            await self.command("STLS", "tls")
            assert self.writer is not None
            await self.writer.start_tls(tls_context, server_hostname=target.server_name)
        await self._login()

    async def _login(self) -> None:
        auth = self.target.auth
        assert auth is not None
        if auth.oauth2 is not None:
            await self._authenticate()
            return
        self.ctx.step("user")
        await self.command(f"USER {auth.username}", "auth", rejected="auth_rejected")
        self.ctx.step("pass")
        await self.command(f"PASS {auth.password.reveal()}", "auth", shown="PASS ********", rejected="auth_rejected")

    async def _authenticate(self) -> None:
        """AUTH XOAUTH2 / OAUTHBEARER (RFC 5034), renewing a rejected token once."""
        auth = self.target.auth
        assert auth is not None
        mechanism = auth.mechanism or "xoauth2"
        await sign_in(self.ctx, auth, "auth", lambda token: self._sasl(mechanism, token))

    async def _sasl(self, mechanism: str, token: Credential) -> ProbeError | None:
        """One AUTH exchange. RFC 5034 4: an initial response that would make the command longer than 255 octets
        goes after the server's empty challenge instead, which a token always does."""
        assert self.writer is not None
        name = mechanism.upper()
        response_text = initial_response(mechanism, token.username, token.secret.reveal(), self.target.server_name,
                                         self.check.port)
        self.ctx.say(f"AUTH {name}")
        self.writer.write(f"AUTH {name}\r\n".encode())
        reply = await self._line("auth")
        challenge = ""
        if _continuation(reply):
            self.ctx.say("********")
            self.writer.write(response_text.encode() + b"\r\n")
            reply = await self._line("auth")
            if _continuation(reply):
                challenge = describe_challenge(reply[1:].strip())
                answer = failure_answer(mechanism)
                self.ctx.say(answer or "(empty line)")
                self.writer.write(answer.encode() + b"\r\n")
                reply = await self._line("auth")
        if reply.startswith("+OK"):
            return None
        if not reply.startswith("-ERR"):
            return ProbeError("auth", "protocol", f"AUTH {name}: not a POP3 status line: {reply[:200]!r}")
        reason: Reason
        if _TEMPORARY.match(reply):
            reason = "reply_4xx"
        else:
            reason = "auth_disabled" if policy_refusal(reply) else "auth_rejected"
        return ProbeError("auth", reason, f"AUTH {name}: {reply[:300]}" + (f" ({challenge})" if challenge else ""))

    async def _read_line(self, stage: Stage) -> str:
        """One line from the server, without its line end; too long is a protocol error, EOF a reset."""
        assert self.reader is not None
        try:
            raw = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            raise ProbeError(stage, "protocol", f"line longer than {_LINE_LIMIT} bytes") from exc
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("the server closed the connection") from exc
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")

    async def _line(self, stage: Stage) -> str:
        line = await self._read_line(stage)
        self.ctx.heard(line)
        return line

    async def command(self, line: str, stage: Stage, *, shown: str | None = None,
                      rejected: Reason = "reply_5xx") -> str:
        """Send one command and return its +OK status line; -ERR raises a ProbeError for `stage`."""
        assert self.writer is not None
        self.ctx.say(shown or line)
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()
        reply = await self._line(stage)
        if reply.startswith("+OK"):
            return reply
        if reply.startswith("-ERR"):
            reason: Reason = "reply_4xx" if _TEMPORARY.match(reply) else rejected
            if rejected == "auth_rejected" and reason == rejected and policy_refusal(reply):
                reason = "auth_disabled"
            raise ProbeError(stage, reason, f"{(shown or line).split(' ')[0]}: {reply[:300]}")
        raise ProbeError(stage, "protocol", f"not a POP3 status line: {reply[:200]!r}")

    async def multiline(self, stage: Stage, max_lines: int = 1_000_000) -> list[str]:
        """Read a dot-terminated multi-line body (after its +OK line), un-stuffing leading dots."""
        lines: list[str] = []
        while True:
            line = await self._read_line(stage)
            if line == ".":
                return lines
            lines.append(line[1:] if line.startswith("..") else line)
            if len(lines) > max_lines:
                raise ProbeError(stage, "protocol", f"multi-line response longer than {max_lines} lines")

    async def quit(self) -> None:
        await self.command("QUIT", "quit", rejected="protocol")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


async def probe(ctx: ProbeContext, target: Target, check: CheckSettings) -> None:
    """Run the `pop3` check once; raises on failure, returns on success."""
    session = Pop3Session(ctx, target, check)
    try:
        await session.open()
        ctx.step("stat")
        await session.command("STAT", "select")
        ctx.step("quit")
        await session.quit()
    finally:
        session.close()


def _continuation(reply: str) -> bool:
    """A SASL continuation (RFC 5034 4: "+" SP [base64]), not the "+OK" that ends the exchange successfully."""
    return reply == "+" or reply.startswith("+ ")
