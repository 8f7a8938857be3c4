"""The `pop3` check (connect, greeting, CAPA, STLS or implicit TLS, USER/PASS, STAT, QUIT) and its small client.

There is no asyncio POP3 client in our stack and the protocol is short (RFC 1939, STLS from RFC 2595,
CAPA and response codes from RFC 2449/3206), so this is our own, on asyncio streams: deadlines and
cancellation then work like everywhere else. Replies are bounded in length, so a hostile server cannot
make us buffer without limit.

A server may allow only one login per mailbox every so often (CAPA `LOGIN-DELAY n`, RFC 2449 6.8; Debian's
Cyrus ships with 60 s). Every login of this process to one mailbox (the `pop3` check's and the round
trip's read-back) is recorded in `LOGINS`, so no session logs in before the server would allow it: it
waits when the wait fits its deadline, and otherwise fails with reason `login_delay` saying what would work.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field

from monitor.config import Pop3Settings, RoundTripSettings, Target
from monitor.errors import ProbeError
from monitor.families import address_family
from monitor.net import open_socket
from monitor.probes.signin import policy_refusal, sign_in
from monitor.result import ProbeContext
from monitor.signin import Credential
from monitor.signin.sasl import describe_challenge, failure_answer, initial_response
from monitor.steps import IMPLICIT_TLS, PASSWORD, STARTTLS, TOKEN, Kind, Reason, Stage, declare, run
from monitor.tls import client_context

__all__ = ["LOGINS", "LoginClock", "Pop3Session", "probe", "response_reason"]

log = logging.getLogger(__name__)

# The steps of the `pop3` check in order (monitor/steps.py): its metric series, verdict side and docs rows.
STEPS = declare(Kind("pop3", side="receive", steps=run(
    "dns", "connect", (IMPLICIT_TLS, ("tls",)), "greeting", (STARTTLS, ("stls",)), (PASSWORD, ("user", "pass")),
    (TOKEN, ("token", "auth")), "stat", "quit"),
    # RFC 2449/3206 response codes at login: a locked mailbox, a login sooner than the server's LOGIN-DELAY.
    extra_failures=(("auth", "mailbox_busy"), ("auth", "login_delay"))))

# RFC 1939 caps a response line at 512 octets; allow generous slack for real servers, not megabytes.
_LINE_LIMIT = 64 * 1024
# RFC 2449 8 / RFC 3206: the response code in brackets right after -ERR.
_RESPONSE_CODE = re.compile(r"^-ERR \[([A-Za-z0-9/-]+)\]")
# What each code says: a mailbox locked by another client or a login too soon after the last one is neither a
# server outage nor wrong credentials; SYS/TEMP and SYS/PERM are the server's own trouble, AUTH the credentials'.
_CODE_REASONS: dict[str, Reason] = {
    "LOGIN-DELAY": "login_delay",
    "IN-USE": "mailbox_busy",
    "SYS/TEMP": "reply_4xx",
    "SYS/PERM": "reply_5xx",
    "AUTH": "auth_rejected",
}
# Kept from a login the server refused with [LOGIN-DELAY] but whose CAPA named no delay: RFC 2449's own example.
_ASSUMED_DELAY = 60.0


def response_reason(reply: str, otherwise: Reason) -> Reason:
    """The reason for a -ERR reply: from its RFC 2449/3206 response code when it has one, else `otherwise`."""
    match = _RESPONSE_CODE.match(reply)
    reason = _CODE_REASONS.get(match.group(1).upper()) if match else None
    if reason == "auth_rejected" and otherwise not in ("auth_rejected", "auth_disabled"):
        return otherwise  # [AUTH] outside a login says nothing more than the stage does
    return reason or otherwise


@dataclass
class LoginClock:
    """When this process last logged in to each POP3 mailbox, and the LOGIN-DELAY each server announced."""

    delays: dict[tuple[str, int, str], float] = field(default_factory=dict)
    last: dict[tuple[str, int, str], float] = field(default_factory=dict)
    warned: set[tuple[tuple[str, int, str], str]] = field(default_factory=set)

    def delay(self, key: tuple[str, int, str]) -> float:
        return self.delays.get(key, 0.0)

    def allowed_at(self, key: tuple[str, int, str]) -> float:
        """The monotonic time from which the server allows the next login (now or earlier: no wait)."""
        last = self.last.get(key)
        return 0.0 if last is None else last + self.delay(key)

    def wait(self, key: tuple[str, int, str]) -> float:
        return max(0.0, self.allowed_at(key) - time.monotonic())

    def logged_in(self, key: tuple[str, int, str]) -> None:
        self.last[key] = time.monotonic()

    def learn(self, key: tuple[str, int, str], capabilities: dict[str, str], ctx: ProbeContext, target: Target,
              check: Pop3Settings | RoundTripSettings) -> None:
        """Record the server's LOGIN-DELAY from its CAPA answer (`LOGIN-DELAY 900`, or `LOGIN-DELAY 900 USER` before
        login: per user), and warn once per mailbox and check when the check would log in more often."""
        value = capabilities.get("LOGIN-DELAY", "").split(" ", 1)[0]
        delay = float(value) if value.isdigit() else 0.0
        if delay != self.delay(key):
            self.delays[key] = delay
            if delay:
                ctx.note(f"the server allows one login per {delay:.0f}s to this mailbox (CAPA LOGIN-DELAY)")
        too_often = check.interval < 2 * delay or (check.name == "roundtrip" and check.timeout < delay + 10)
        if delay and too_often and (key, check.name) not in self.warned:
            self.warned.add((key, check.name))
            # Said once, at the first connection: each run's failure says it again in its detail.
            log.warning("target %s: the POP3 server %s:%d allows one login per %.0fs to %s (CAPA LOGIN-DELAY %.0f); "
                        "the %s check (interval %.0fs, timeout %.0fs) cannot log in that rarely. %s",
                        target.name, target.host, check.port, delay, key[2], delay,
                        check.name if check.via is None else f"{check.name} via {check.via}", check.interval,
                        check.timeout, login_delay_advice(delay))


LOGINS = LoginClock()


def login_delay_advice(delay: float) -> str:
    """What would work with a server that allows one login per `delay` seconds."""
    return (f"With this server use a roundtrip via imap, or give a roundtrip via pop3 a timeout of at least "
            f"{delay + 10:.0f}s and an interval of at least {2 * delay:.0f}s, and the pop3 check an interval of at "
            f"least {2 * delay:.0f}s (every POP3 login to the mailbox counts).")


class Pop3Session:
    """One POP3 connection of a probe; also used by the round trip to read mail back."""

    def __init__(self, ctx: ProbeContext, target: Target, check: Pop3Settings | RoundTripSettings) -> None:
        self.ctx = ctx
        self.target = target
        self.check = check
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # CAPA's answer, name → arguments; None when the server has no CAPA (RFC 1939 servers).
        self.capabilities: dict[str, str] | None = None
        self.key = (target.host, check.port, target.auth.username if target.auth else "")

    async def open(self) -> None:
        """Connect, read the greeting, secure the connection and log in."""
        await self.connect()
        await self.login()

    async def connect(self) -> None:
        """Connect, read the greeting, ask CAPA and secure the connection: everything before the login."""
        ctx, target, check = self.ctx, self.target, self.check
        sock = await open_socket(ctx, target.host, check.port, address_family(check.ip_family))
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
            otherwise: Reason = "reply_5xx" if greeting.startswith("-ERR") else "protocol"
            raise ProbeError("greeting", response_reason(greeting, otherwise), greeting[:300])
        await self._capa("greeting")
        if check.tls_mode == "starttls":
            ctx.step("stls")
            if self.capabilities is not None and "STLS" not in self.capabilities:
                # RFC 2595 4: a server that can do STLS says so in CAPA; like SMTP/IMAP without STARTTLS.
                raise ProbeError("tls", "protocol", "the server does not offer STLS (not in its CAPA answer)")
            await self.command("STLS", "tls", rejected="protocol")
            assert self.writer is not None
            await self.writer.start_tls(tls_context, server_hostname=target.server_name)
            await self._capa("tls")  # RFC 2595 4: what was learnt before TLS is forgotten

    async def _capa(self, stage: Stage) -> None:
        """Ask CAPA (RFC 2449); a server without it answers -ERR, which is allowed and leaves `capabilities` None."""
        assert self.writer is not None
        self.ctx.say("CAPA")
        self.writer.write(b"CAPA\r\n")
        reply = await self._line(stage)
        if not reply.startswith("+OK"):
            self.capabilities = None
            return
        capabilities: dict[str, str] = {}
        for line in await self.multiline(stage, max_lines=1000):
            name, _, arguments = line.strip().partition(" ")
            if name:
                capabilities[name.upper()] = arguments.strip()
        self.capabilities = capabilities
        LOGINS.learn(self.key, capabilities, self.ctx, self.target, self.check)

    async def login(self) -> None:
        """Log in, first waiting for the server's LOGIN-DELAY to pass when that fits this check's deadline."""
        wait = LOGINS.wait(self.key)
        if wait > 0:
            delay = LOGINS.delay(self.key)
            if wait > self.ctx.time_left(default=wait) - 0.5:
                raise ProbeError("auth", "login_delay", (
                    f"the server allows one login per {delay:.0f}s to this mailbox (CAPA LOGIN-DELAY {delay:.0f}) and "
                    f"this process logged in {delay - wait:.0f}s ago; the next login would come after this check's "
                    f"deadline. {login_delay_advice(delay)}"))
            self.ctx.note(f"waiting {wait:.1f}s for the server's LOGIN-DELAY {delay:.0f}s before logging in")
            await asyncio.sleep(wait)
        try:
            await self._login()
        except ProbeError as exc:
            if exc.reason == "login_delay":
                LOGINS.delays.setdefault(self.key, _ASSUMED_DELAY)
                LOGINS.logged_in(self.key)  # the server counts from a login we cannot see: wait a full delay
            raise
        LOGINS.logged_in(self.key)
        if self.capabilities is not None and "LOGIN-DELAY" in self.capabilities:
            await self._capa("auth")  # RFC 2449 6.8: after login CAPA says this user's own delay

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
        reason = response_reason(reply, "auth_rejected")
        if reason == "auth_rejected" and policy_refusal(reply):
            reason = "auth_disabled"
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
            reason = response_reason(reply, rejected)
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


async def probe(ctx: ProbeContext, target: Target, check: Pop3Settings) -> None:
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
