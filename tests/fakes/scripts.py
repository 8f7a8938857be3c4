"""Scripted SMTP, IMAP and POP3 servers: healthy by default, each reply replaceable by a hostile *act*.

An act is either the bytes to send (`{tag}` is replaced by the IMAP command's tag) or an async function
`act(conn, tag)` that does anything: hang, reset, drip, send garbage, upgrade to TLS... The defaults make
a server the monitor's probes pass against, so a test changes exactly the one thing it is about.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.fakes.server import Conn

__all__ = [
    "CLOSE", "HANG", "RESET", "Act", "ImapScript", "Pop3Script", "SmtpScript", "delay", "drip", "perform", "seq",
]

Act = bytes | Callable[[Conn, bytes], Awaitable[None]]


async def perform(conn: Conn, act: Act, tag: bytes = b"") -> None:
    if isinstance(act, bytes):
        await conn.send(act.replace(b"{tag}", tag))
    else:
        await act(conn, tag)


async def HANG(conn: Conn, tag: bytes) -> None:
    """Say nothing more, keep the connection open."""
    await conn.hang()


async def RESET(conn: Conn, tag: bytes) -> None:
    """Drop the connection with a TCP RST."""
    conn.reset()


async def CLOSE(conn: Conn, tag: bytes) -> None:
    """Close the connection (FIN)."""
    conn.close()


def seq(*acts: Act) -> Act:
    """Several acts one after the other."""
    async def run(conn: Conn, tag: bytes) -> None:
        for act in acts:
            await perform(conn, act, tag)
    return run


def drip(data: bytes, interval: float = 1.0) -> Act:
    """Send `data` one byte per `interval` seconds."""
    async def run(conn: Conn, tag: bytes) -> None:
        await conn.drip(data.replace(b"{tag}", tag), interval)
    return run


def delay(seconds: float, act: Act) -> Act:
    """Wait (reading and dropping what the client says), then act, unless the client left meanwhile."""
    async def run(conn: Conn, tag: bytes) -> None:
        if not await conn.idle(seconds):
            await perform(conn, act, tag)
    return run


def _verb(line: bytes) -> bytes:
    words = line.split()
    return words[0].upper() if words else b""


@dataclass
class SmtpScript:
    """A small ESMTP server: EHLO, STARTTLS (when `tls` is set), AUTH PLAIN, MAIL/RCPT/RSET/DATA, QUIT."""

    greeting: Act = b"220 fake.test ESMTP ready\r\n"
    ehlo: Act | None = None  # None: the default, which offers STARTTLS only when `tls` is set
    starttls: Act = b"220 2.0.0 Ready to start TLS\r\n"
    auth: Act = b"235 2.7.0 Authentication successful\r\n"
    mail: Act = b"250 2.1.0 Ok\r\n"
    rcpt: Act = b"250 2.1.5 Ok\r\n"
    rset: Act = b"250 2.0.0 Ok\r\n"
    quit: Act = b"221 2.0.0 Bye\r\n"
    tls: ssl.SSLContext | None = None

    def default_ehlo(self) -> bytes:
        lines = [b"fake.test", b"PIPELINING", b"SIZE 10240000"]
        if self.tls is not None:
            lines.append(b"STARTTLS")
        lines += [b"AUTH PLAIN LOGIN", b"8BITMIME"]
        return b"".join(b"250-" + line + b"\r\n" for line in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"

    async def __call__(self, conn: Conn) -> None:
        await perform(conn, self.greeting)
        while (line := await conn.line()) is not None:
            verb = _verb(line)
            if verb in (b"EHLO", b"HELO"):
                await perform(conn, self.ehlo if self.ehlo is not None else self.default_ehlo())
            elif verb == b"STARTTLS":
                await perform(conn, self.starttls)
                if isinstance(self.starttls, bytes) and self.starttls.startswith(b"220") and self.tls is not None:
                    await conn.start_tls(self.tls)
            elif verb == b"AUTH":
                await perform(conn, self.auth)
            elif verb == b"MAIL":
                await perform(conn, self.mail)
            elif verb == b"RCPT":
                await perform(conn, self.rcpt)
            elif verb == b"RSET":
                await perform(conn, self.rset)
            elif verb == b"NOOP":
                await conn.send(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                await perform(conn, self.quit)
                return
            else:
                await conn.send(b"502 5.5.2 Error: command not recognized\r\n")


_IMAP_CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS AUTH=PLAIN"


@dataclass
class ImapScript:
    """A small IMAP4rev1 server: CAPABILITY, STARTTLS (when `tls` is set), LOGIN, SELECT, LOGOUT."""

    greeting: Act = b"* OK [CAPABILITY " + _IMAP_CAPS + b"] fake ready\r\n"
    capability: Act | None = None  # None: the default, which offers STARTTLS only when `tls` is set
    starttls: Act = b"{tag} OK Begin TLS negotiation now\r\n"
    login: Act = b"{tag} OK [CAPABILITY " + _IMAP_CAPS + b"] Logged in\r\n"
    select: Act = (b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 0 EXISTS\r\n* 0 RECENT\r\n"
                   b"* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT 1] Predicted next UID\r\n"
                   b"{tag} OK [READ-WRITE] Select completed\r\n")
    logout: Act = b"* BYE Logging out\r\n{tag} OK Logout completed\r\n"
    tls: ssl.SSLContext | None = None

    def default_capability(self) -> bytes:
        starttls = b" STARTTLS" if self.tls is not None else b""
        return b"* CAPABILITY " + _IMAP_CAPS + starttls + b"\r\n{tag} OK Capability completed\r\n"

    async def __call__(self, conn: Conn) -> None:
        await perform(conn, self.greeting)
        while (line := await conn.line()) is not None:
            tag, _, rest = line.strip().partition(b" ")
            verb = _verb(rest)
            if verb == b"CAPABILITY":
                await perform(conn, self.capability if self.capability is not None else self.default_capability(),
                              tag)
            elif verb == b"STARTTLS":
                await perform(conn, self.starttls, tag)
                if isinstance(self.starttls, bytes) and b" OK " in self.starttls and self.tls is not None:
                    await conn.start_tls(self.tls)
            elif verb == b"LOGIN":
                await perform(conn, self.login, tag)
            elif verb in (b"SELECT", b"EXAMINE"):
                await perform(conn, self.select, tag)
            elif verb == b"NOOP":
                await conn.send(tag + b" OK NOOP completed\r\n")
            elif verb == b"LOGOUT":
                await perform(conn, self.logout, tag)
                return
            else:
                await conn.send(tag + b" BAD Error in IMAP command\r\n")


@dataclass
class Pop3Script:
    """A small POP3 server: STLS (when `tls` is set), USER/PASS, STAT, UIDL, QUIT."""

    greeting: Act = b"+OK fake POP3 ready\r\n"
    stls: Act = b"+OK Begin TLS negotiation now\r\n"
    user: Act = b"+OK\r\n"
    password: Act = b"+OK Logged in\r\n"
    stat: Act = b"+OK 0 0\r\n"
    uidl: Act = b"+OK\r\n.\r\n"
    quit: Act = b"+OK Logging out\r\n"
    tls: ssl.SSLContext | None = None
    extra: dict[bytes, Act] = field(default_factory=dict)

    async def __call__(self, conn: Conn) -> None:
        await perform(conn, self.greeting)
        while (line := await conn.line()) is not None:
            verb = _verb(line)
            if verb in self.extra:
                await perform(conn, self.extra[verb])
            elif verb == b"STLS":
                await perform(conn, self.stls)
                if isinstance(self.stls, bytes) and self.stls.startswith(b"+OK") and self.tls is not None:
                    await conn.start_tls(self.tls)
            elif verb == b"USER":
                await perform(conn, self.user)
            elif verb == b"PASS":
                await perform(conn, self.password)
            elif verb == b"STAT":
                await perform(conn, self.stat)
            elif verb == b"UIDL":
                await perform(conn, self.uidl)
            elif verb == b"QUIT":
                await perform(conn, self.quit)
                return
            else:
                await conn.send(b"-ERR Unknown command\r\n")
