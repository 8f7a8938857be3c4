"""Hostile peers: every way a server can misbehave ends in time, classified, with nothing left behind.

"A monitor that hangs, leaks or lies when the server misbehaves is worse than none." Each case runs one
check through `Runner.execute` against a fake server (tests/fakes) in this event loop and asserts:

- the (stage, reason) listed for it: what an operator should read on the dashboard;
- the run ends within its timeout + 1 s (the runner's cancellation grace), and a failure the server makes
  obvious (reset, refusal, BYE, -ERR, a bad certificate) ends well before the deadline: at timeout 5 s it
  must take under 2 s. That is behaviour (not waiting for a deadline it does not need), not a benchmark;
- no asyncio task and no file descriptor is left behind once the fake is closed, and asyncio logged no
  error (a "Task exception was never retrieved" is a lie told to the log instead of the result).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from monitor.config import RoundTripSettings, Secret, SmtpSettings, Target, TlsSettings
from monitor.probes import PROBES, for_kind
from monitor.probes.roundtrip import RoundTrip
from monitor.result import Result
from monitor.runner import Runner
from tests.conftest import free_port, local_target, open_fds
from tests.fakes import (
    CLOSE,
    HANG,
    RESET,
    SERVER_NAME,
    Act,
    Behaviour,
    Conn,
    FakeServer,
    ImapScript,
    Pop3Script,
    SmtpScript,
    TlsMaterial,
    delay,
    drip,
    make_tls_material,
    seq,
)

pytestmark = pytest.mark.slow  # peers that drip or never answer: each case waits out a deadline

MB = 1024 * 1024
# Failures the server makes obvious are run with this deadline and must end before FAST.
SLOW_TIMEOUT = 5.0
FAST = 2.0


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


def fake_target(check: str, port: int, *, tls_mode: str = "none", timeout: float = 2.0,
                ca_file: str | None = None, server_name: str | None = SERVER_NAME, **extra: object) -> Target:
    """`conftest.local_target`, plus what TLS cases need: a CA file, the expected name, other settings."""
    base = local_target(check, port, tls_mode, timeout)
    settings = replace(base.checks[0], **extra)  # type: ignore[arg-type]
    return replace(base, tls=TlsSettings(ca_file=ca_file, server_name=server_name), checks=(settings,))


def roundtrip_target(port: int, *, via: str, timeout: float, ca_file: str | None) -> Target:
    """A round trip reading back from the fake on `port` (the read-back session opens before any SMTP)."""
    smtp = SmtpSettings(port=free_port(), tls_mode="none", interval=60.0, timeout=timeout)
    roundtrip = RoundTripSettings(port=port, tls_mode="none", interval=60.0, timeout=timeout, via=via,
                                  recipient="u@example.test")
    base = local_target("smtp", port)
    return replace(base, tls=TlsSettings(ca_file=ca_file, server_name=SERVER_NAME), checks=(roundtrip, smtp))


def runner() -> Runner:
    trip = RoundTrip(Secret("k" * 32), "test")
    return Runner("test", probes={**PROBES, "roundtrip": for_kind(RoundTripSettings, trip)})


# --- behaviours that are not a scripted reply -------------------------------------------------------------

async def endless_line(conn: Conn, tag: bytes) -> None:
    """Stream bytes without a line end, forever: the client must give up on its own, not buffer it all."""
    chunk = b"x" * 65536
    while True:
        await conn.send(chunk)


async def noise_for_client_hello(conn: Conn, tag: bytes) -> None:
    """Answer the client's TLS ClientHello (once it is here: earlier bytes would be read as plain text and
    dropped by the client) with noise instead of a ServerHello."""
    await conn.reader.read(5)
    await conn.send(b"this is not a TLS record, just noise\r\n" * 30)


async def close_on_client_hello(conn: Conn) -> None:
    """An implicit-TLS port whose server hangs up when the handshake starts."""
    await conn.reader.read(5)
    conn.close()


def starttls_noise(ok_line: bytes) -> Act:
    return seq(ok_line, noise_for_client_hello)


def imap_flood(lines: int) -> Act:
    """A valid SELECT answer with many untagged lines in one write (a big mailbox, a chatty server)."""
    body = b"".join(b"* OK [PERMANENTFLAGS ()] line %d\r\n" % i for i in range(lines))
    return body + b"* 0 EXISTS\r\n* OK [UIDNEXT 1] ok\r\n{tag} OK [READ-WRITE] Select completed\r\n"


# --- the matrix -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    check: str  # smtp | imap | pop3 | roundtrip-pop3
    server: Callable[[TlsMaterial], Behaviour]
    expected: tuple[str | None, str | None]
    timeout: float = SLOW_TIMEOUT
    tls_mode: str = "none"
    implicit_cert: str | None = None  # the fake is an implicit-TLS server presenting this certificate
    extra: dict[str, object] | None = None  # more CheckSettings (an SMTP dry run's mail_from and rcpt_to)

    @property
    def fast(self) -> bool:
        """Everything but a timeout is something the server said or did: it must not wait for the deadline."""
        return self.expected[1] != "timeout"


def smtp(**acts: object) -> Callable[[TlsMaterial], Behaviour]:
    return lambda tls: SmtpScript(**acts)  # type: ignore[arg-type]


def smtp_tls(cert: str, **acts: object) -> Callable[[TlsMaterial], Behaviour]:
    return lambda tls: SmtpScript(tls=tls.server_context(cert), **acts)  # type: ignore[arg-type]


# RFC 3501 7.1.5: a server may say why it closes; the words belong in `detail`.
BYE_ALERT = b"* BYE [ALERT] System going down for maintenance in 0 minutes\r\n"


def imap(**acts: object) -> Callable[[TlsMaterial], Behaviour]:
    return lambda tls: ImapScript(**acts)  # type: ignore[arg-type]


def imap_tls(cert: str, **acts: object) -> Callable[[TlsMaterial], Behaviour]:
    return lambda tls: ImapScript(tls=tls.server_context(cert), **acts)  # type: ignore[arg-type]


# RFC 2449 CAPA of a server that cannot do STLS.
POP3_CAPA_NO_STLS = b"+OK Capability list follows\r\nUSER\r\nUIDL\r\nTOP\r\nRESP-CODES\r\n.\r\n"


def pop3(**acts: object) -> Callable[[TlsMaterial], Behaviour]:
    return lambda tls: Pop3Script(**acts)  # type: ignore[arg-type]


def pop3_tls(cert: str, **acts: object) -> Callable[[TlsMaterial], Behaviour]:
    return lambda tls: Pop3Script(tls=tls.server_context(cert), **acts)  # type: ignore[arg-type]


OK: tuple[None, None] = (None, None)

CASES: list[Case] = [
    # Healthy controls: the fakes are good enough to pass, so every failure below is the one thing changed.
    Case("smtp-healthy-plain", "smtp", smtp(), OK),
    Case("smtp-healthy-starttls", "smtp", smtp_tls("good"), OK, tls_mode="starttls"),
    Case("smtp-healthy-implicit", "smtp", smtp(), OK, tls_mode="implicit", implicit_cert="good"),
    Case("imap-healthy-plain", "imap", imap(), OK),
    Case("imap-healthy-starttls", "imap", imap_tls("good"), OK, tls_mode="starttls"),
    Case("pop3-healthy-implicit", "pop3", pop3(), OK, tls_mode="implicit", implicit_cert="good"),
    Case("pop3-healthy-stls", "pop3", pop3_tls("good"), OK, tls_mode="starttls"),
    Case("imap-select-5000-untagged-lines-in-one-write", "imap", imap(select=imap_flood(5000)), OK),

    # Silence and slowness: timeout at the step the probe is in, within timeout + 1 s.
    Case("smtp-accept-never-speak", "smtp", smtp(greeting=HANG), ("greeting", "timeout"), timeout=1.0),
    Case("smtp-greeting-after-30s", "smtp", smtp(greeting=delay(30, b"220 late\r\n")), ("greeting", "timeout"),
         timeout=1.0),
    Case("smtp-greeting-drip-1-byte-per-s", "smtp", smtp(greeting=drip(b"220 fake.test ESMTP ready\r\n")),
         ("greeting", "timeout"), timeout=2.0),
    Case("smtp-ehlo-drip-1-byte-per-s", "smtp", smtp(ehlo=drip(b"250-fake.test\r\n250 8BITMIME\r\n")),
         ("ehlo", "timeout"), timeout=2.0),
    Case("smtp-ehlo-missing-final-line", "smtp", smtp(ehlo=seq(b"250-fake.test\r\n250-PIPELINING\r\n", HANG)),
         ("ehlo", "timeout"), timeout=1.0),
    Case("smtp-auth-never-answers", "smtp", smtp(auth=HANG), ("auth", "timeout"), timeout=1.0),
    Case("smtp-implicit-tls-port-never-handshakes", "smtp", smtp(greeting=HANG), ("tls", "timeout"), timeout=1.0,
         tls_mode="implicit"),
    Case("smtp-implicit-tls-then-silence", "smtp", smtp(greeting=HANG), ("greeting", "timeout"), timeout=1.0,
         tls_mode="implicit", implicit_cert="good"),
    Case("smtp-starttls-220-then-silence", "smtp", smtp_tls("good", starttls=seq(b"220 go ahead\r\n", HANG)),
         ("tls", "timeout"), timeout=1.0, tls_mode="starttls"),
    Case("smtp-quit-never-answers", "smtp", smtp(quit=HANG), ("quit", "timeout"), timeout=1.0),
    Case("smtp-rcpt-never-answers", "smtp", smtp(rcpt=HANG), ("rcpt", "timeout"), timeout=1.0,
         extra={"mail_from": "probe@example.test", "rcpt_to": ("postmaster@example.test",)}),
    Case("imap-capability-never-answers", "imap", imap(capability=HANG), ("greeting", "timeout"), timeout=1.0),
    Case("imap-logout-never-answers", "imap", imap(logout=HANG), ("quit", "timeout"), timeout=1.0),
    Case("pop3-quit-never-answers", "pop3", pop3(quit=HANG), ("quit", "timeout"), timeout=1.0),
    Case("imap-accept-never-speak", "imap", imap(greeting=HANG), ("greeting", "timeout"), timeout=1.0),
    Case("imap-login-drip-1-byte-per-s", "imap", imap(login=drip(b"{tag} OK Logged in\r\n")),
         ("auth", "timeout"), timeout=2.0),
    Case("imap-literal-never-ends", "imap", imap(select=seq(b"* FLAGS {100}\r\n(\\Seen \\Dele", HANG)),
         ("select", "timeout"), timeout=1.0),
    Case("imap-starttls-ok-then-silence", "imap", imap_tls("good", starttls=seq(b"{tag} OK Begin TLS\r\n", HANG)),
         ("tls", "timeout"), timeout=1.0, tls_mode="starttls"),
    Case("pop3-implicit-tls-then-silence", "pop3", pop3(greeting=HANG), ("greeting", "timeout"), timeout=1.0,
         tls_mode="implicit", implicit_cert="good"),
    Case("pop3-accept-never-speak", "pop3", pop3(greeting=HANG), ("greeting", "timeout"), timeout=1.0),
    Case("pop3-stat-drip-1-byte-per-s", "pop3", pop3(stat=drip(b"+OK 0 0\r\n")), ("select", "timeout"),
         timeout=2.0),
    Case("pop3-multiline-without-terminator", "roundtrip-pop3",
         pop3(uidl=seq(b"+OK\r\n1 aaa\r\n2 bbb\r\n", HANG)), ("fetch", "timeout"), timeout=1.0),

    # Garbage, oversized and odd replies: protocol errors, at once, without buffering megabytes.
    Case("smtp-garbage-greeting", "smtp", smtp(greeting=b"HELLO \x00\xff this is no SMTP\r\n"),
         ("greeting", "protocol")),
    Case("smtp-greeting-1mb-line", "smtp", smtp(greeting=b"220 " + b"x" * MB + b"\r\n"), ("greeting", "protocol")),
    Case("smtp-greeting-endless-line", "smtp", smtp(greeting=endless_line), ("greeting", "protocol")),
    Case("smtp-ehlo-garbage-continuation", "smtp", smtp(ehlo=b"250-fake.test\r\nxyz-what\r\n250 8BITMIME\r\n"),
         ("ehlo", "protocol")),
    # A multi-line reply whose lines disagree: like Postfix and smtplib, the final line's code is the reply.
    Case("smtp-ehlo-final-line-220", "smtp", smtp(ehlo=b"250-fake.test\r\n250-PIPELINING\r\n220 huh\r\n"),
         ("ehlo", "protocol")),
    Case("smtp-ehlo-final-line-550", "smtp", smtp(ehlo=b"250-fake.test\r\n250-PIPELINING\r\n550 no\r\n"),
         ("ehlo", "reply_5xx")),
    Case("imap-garbage-greeting", "imap", imap(greeting=b"HELLO this is no IMAP\r\n"), ("greeting", "protocol")),
    Case("imap-greeting-1mb-line", "imap", imap(greeting=b"* OK " + b"x" * MB + b"\r\n"), ("greeting", "protocol")),
    Case("imap-capability-without-imap4rev1", "imap",
         imap(capability=b"* CAPABILITY IMAP2 AUTH=PLAIN\r\n{tag} OK done\r\n"), ("greeting", "protocol")),
    Case("imap-login-answer-with-foreign-tag", "imap", imap(login=b"ZZ99 OK Logged in\r\n"), ("auth", "protocol")),
    Case("imap-greeting-endless-line", "imap", imap(greeting=endless_line), ("greeting", "protocol")),
    Case("imap-select-huge-literal-streamed", "imap", imap(select=seq(b"* FLAGS {99999999999}\r\n", endless_line)),
         ("select", "protocol")),
    Case("imap-preauth-greeting", "imap", imap(greeting=b"* PREAUTH [CAPABILITY IMAP4rev1] welcome back\r\n"), OK),
    Case("pop3-greeting-endless-line", "pop3", pop3(greeting=endless_line), ("greeting", "protocol")),
    Case("pop3-greeting-1mb-line", "pop3", pop3(greeting=b"+OK " + b"x" * MB + b"\r\n"), ("greeting", "protocol")),
    Case("pop3-garbage-user-reply", "pop3", pop3(user=b"HELLO?\r\n"), ("auth", "protocol")),

    # The server says no: the reply class, at once.
    Case("smtp-rcpt-550", "smtp", smtp(rcpt=b"550 5.1.1 No such user\r\n"), ("rcpt", "reply_5xx"),
         extra={"mail_from": "probe@example.test", "rcpt_to": ("nobody@example.test",)}),
    Case("smtp-mail-from-451", "smtp", smtp(mail=b"451 4.3.0 Try later\r\n"), ("mail_from", "reply_4xx"),
         extra={"mail_from": "probe@example.test", "rcpt_to": ("postmaster@example.test",)}),
    Case("smtp-421-at-greeting", "smtp", smtp(greeting=b"421 4.3.2 Service not available\r\n"),
         ("greeting", "reply_4xx")),
    Case("smtp-554-at-greeting", "smtp", smtp(greeting=b"554 5.7.1 No SMTP service here\r\n"),
         ("greeting", "reply_5xx")),
    Case("smtp-starttls-454", "smtp", smtp_tls("good", starttls=b"454 4.7.0 TLS not available\r\n"),
         ("tls", "reply_4xx"), tls_mode="starttls"),
    Case("smtp-starttls-502", "smtp", smtp_tls("good", starttls=b"502 5.5.1 Not implemented\r\n"),
         ("tls", "reply_5xx"), tls_mode="starttls"),
    Case("smtp-auth-535", "smtp", smtp(auth=b"535 5.7.8 Authentication failed\r\n"), ("auth", "auth_rejected")),
    Case("imap-bye-at-greeting", "imap", imap(greeting=b"* BYE Too many connections\r\n"),
         ("greeting", "reply_5xx")),
    Case("imap-bye-unavailable-at-greeting", "imap",
         imap(greeting=b"* BYE [UNAVAILABLE] Try again later\r\n"), ("greeting", "reply_4xx")),
    Case("imap-login-no", "imap", imap(login=b"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
         ("auth", "auth_rejected")),
    Case("imap-starttls-no", "imap", imap_tls("good", starttls=b"{tag} NO TLS unavailable\r\n"),
         ("tls", "protocol"), tls_mode="starttls"),
    Case("pop3-err-at-greeting", "pop3", pop3(greeting=b"-ERR go away\r\n"), ("greeting", "reply_5xx")),
    Case("pop3-pass-err", "pop3", pop3(password=b"-ERR [AUTH] Authentication failed.\r\n"),
         ("auth", "auth_rejected")),
    # A refused STLS reads like a refused STARTTLS in SMTP and IMAP (issue 11 item 5).
    Case("pop3-stls-err", "pop3", pop3_tls("good", stls=b"-ERR TLS not available\r\n"), ("tls", "protocol"),
         tls_mode="starttls"),
    # RFC 2595 4: CAPA without STLS: the server cannot do it, so it is not asked (its STLS here would succeed).
    Case("pop3-capa-without-stls", "pop3", pop3_tls("good", extra={b"CAPA": POP3_CAPA_NO_STLS}), ("tls", "protocol"),
         tls_mode="starttls"),
    # RFC 2449 8 / RFC 3206 response codes at login: a locked mailbox and a login too soon are not wrong passwords,
    # SYS/TEMP and SYS/PERM are the server's trouble.
    Case("pop3-pass-in-use", "pop3", pop3(password=b"-ERR [IN-USE] Mailbox locked by another client\r\n"),
         ("auth", "mailbox_busy")),
    Case("pop3-pass-login-delay", "pop3", pop3(password=b"-ERR [LOGIN-DELAY] Logins must be 1 minute apart\r\n"),
         ("auth", "login_delay")),
    Case("pop3-pass-sys-temp", "pop3", pop3(password=b"-ERR [SYS/TEMP] Try again later\r\n"), ("auth", "reply_4xx")),
    Case("pop3-pass-sys-perm", "pop3", pop3(password=b"-ERR [SYS/PERM] Mailbox corrupt\r\n"), ("auth", "reply_5xx")),
    Case("pop3-greeting-sys-temp", "pop3", pop3(greeting=b"-ERR [SYS/TEMP] Overloaded\r\n"), ("greeting", "reply_4xx")),

    # TLS: the handshake or the certificate, always the tls stage.
    Case("smtp-starttls-220-then-noise", "smtp", smtp_tls("good", starttls=starttls_noise(b"220 go ahead\r\n")),
         ("tls", "tls_handshake"), tls_mode="starttls"),
    Case("imap-starttls-ok-then-noise", "imap",
         imap_tls("good", starttls=starttls_noise(b"{tag} OK Begin TLS\r\n")), ("tls", "tls_handshake"),
         tls_mode="starttls"),
    Case("pop3-stls-ok-then-noise", "pop3", pop3_tls("good", stls=starttls_noise(b"+OK Begin TLS\r\n")),
         ("tls", "tls_handshake"), tls_mode="starttls"),
    Case("smtp-implicit-close-on-client-hello", "smtp", lambda tls: close_on_client_hello, ("tls", "tls_handshake"),
         tls_mode="implicit"),
    Case("smtp-starttls-expired-cert", "smtp", smtp_tls("expired"), ("tls", "cert_expired"), tls_mode="starttls"),
    Case("smtp-starttls-wrong-host-cert", "smtp", smtp_tls("wrong_host"), ("tls", "cert_invalid"),
         tls_mode="starttls"),
    Case("smtp-implicit-self-signed-cert", "smtp", smtp(), ("tls", "cert_invalid"), tls_mode="implicit",
         implicit_cert="self_signed"),
    Case("imap-implicit-expired-cert", "imap", imap(), ("tls", "cert_expired"), tls_mode="implicit",
         implicit_cert="expired"),
    Case("imap-implicit-wrong-host-cert", "imap", imap(), ("tls", "cert_invalid"), tls_mode="implicit",
         implicit_cert="wrong_host"),
    Case("pop3-stls-self-signed-cert", "pop3", pop3_tls("self_signed"), ("tls", "cert_invalid"),
         tls_mode="starttls"),
    Case("pop3-implicit-expired-cert", "pop3", pop3(), ("tls", "cert_expired"), tls_mode="implicit",
         implicit_cert="expired"),

    # The connection goes away: reset at the step it was in, at once (never at the deadline).
    Case("smtp-close-right-after-accept", "smtp", smtp(greeting=CLOSE), ("greeting", "reset")),
    Case("smtp-rst-right-after-accept", "smtp", smtp(greeting=RESET), ("greeting", "reset")),
    Case("smtp-rst-in-the-middle-of-ehlo", "smtp", smtp(ehlo=seq(b"250-fake.test\r\n", RESET)), ("ehlo", "reset")),
    Case("smtp-rst-after-ehlo-at-auth", "smtp", smtp(auth=RESET), ("auth", "reset")),
    Case("smtp-close-after-ehlo-at-auth", "smtp", smtp(auth=CLOSE), ("auth", "reset")),
    Case("imap-close-right-after-accept", "imap", imap(greeting=CLOSE), ("greeting", "reset")),
    Case("imap-close-instead-of-login-answer", "imap", imap(login=CLOSE), ("auth", "reset")),
    Case("imap-close-right-after-login", "imap", imap(login=seq(b"{tag} OK Logged in\r\n", CLOSE)),
         ("select", "reset")),
    Case("imap-rst-right-after-login", "imap", imap(login=seq(b"{tag} OK Logged in\r\n", RESET)),
         ("select", "reset")),
    Case("imap-bye-alert-instead-of-select", "imap", imap(select=seq(BYE_ALERT, CLOSE)), ("select", "reset")),
    Case("imap-bye-alert-right-after-login", "imap", imap(login=seq(b"{tag} OK Logged in\r\n", BYE_ALERT, CLOSE)),
         ("select", "reset")),
    Case("pop3-close-right-after-accept", "pop3", pop3(greeting=CLOSE), ("greeting", "reset")),
    Case("pop3-rst-after-user", "pop3", pop3(user=RESET), ("auth", "reset")),
]


async def _settle(tasks_before: set[asyncio.Task[object]], fds_before: int,
                  limit: float = 1.0) -> tuple[set[asyncio.Task[object]], int]:
    """Wait (briefly) until tasks and descriptors are back to their baseline; return what is left."""
    loop = asyncio.get_running_loop()
    until = loop.time() + limit
    while True:
        extra = {task for task in asyncio.all_tasks() if task not in tasks_before and not task.done()}
        fds = open_fds()
        if (not extra and fds <= fds_before) or loop.time() > until:
            return extra, fds
        await asyncio.sleep(0.02)


async def run_case(case: Case, tls: TlsMaterial) -> Result:
    server_ssl: ssl.SSLContext | None = tls.server_context(case.implicit_cert) if case.implicit_cert else None
    async with FakeServer(case.server(tls), ssl=server_ssl) as fake:
        if case.check == "roundtrip-pop3":
            target = roundtrip_target(fake.port, via="pop3", timeout=case.timeout, ca_file=str(tls.ca))
        else:
            target = fake_target(case.check, fake.port, tls_mode=case.tls_mode, timeout=case.timeout,
                                 ca_file=str(tls.ca), **(case.extra or {}))  # type: ignore[arg-type]
        return await runner().execute(target, target.checks[0])


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_hostile_peer(case: Case, tls_material: TlsMaterial, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every record, to look for the password in them too
    tasks_before = asyncio.all_tasks()
    fds_before = open_fds()

    result = await run_case(case, tls_material)

    left_tasks, fds_after = await _settle(tasks_before, fds_before)
    gc.collect()  # surfaces "exception was never retrieved" of futures dropped on the floor
    why = f"{result.stage}/{result.reason}: {result.detail}\n" + "\n".join(result.transcript[-15:])
    assert (result.stage, result.reason) == case.expected, why
    assert result.ok is (case.expected == OK)
    assert result.duration_seconds < case.timeout + 1.0, why
    if case.fast:
        assert case.timeout >= SLOW_TIMEOUT
        assert result.duration_seconds < FAST, f"took {result.duration_seconds:.2f}s, not at once: {why}"
    password = "pw-fake"  # conftest.local_target's: it must not leak, whatever the server did
    assert password not in result.detail and not any(password in line for line in result.transcript), why
    leaked = [r.getMessage() for r in caplog.records
              if password in r.getMessage() or (r.exc_info and password in repr(r.exc_info[1]))]
    assert not leaked, leaked
    assert not left_tasks, f"tasks left behind: {left_tasks}"
    assert fds_after <= fds_before, f"file descriptors: {fds_before} before, {fds_after} after"
    asyncio_errors = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not asyncio_errors, asyncio_errors


def test_matrix_is_big_enough() -> None:
    hostile = [case for case in CASES if case.expected != OK]
    assert len(hostile) >= 20
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "code"), [("smtp-ehlo-final-line-550", 550), ("smtp-starttls-454", 454),
                                            ("smtp-rcpt-550", 550)])
async def test_rejecting_reply_is_the_one_recorded(name: str, code: int, tls_material: TlsMaterial) -> None:
    """The reply that failed the check is the last SMTP reply recorded (code, text and transcript)."""
    case = next(c for c in CASES if c.id == name)
    result = await run_case(case, tls_material)
    assert result.smtp_code == code
    assert result.smtp_reply is not None and result.smtp_reply.startswith(str(code))
    assert any(line.startswith(f"S: {code}") for line in result.transcript)


async def test_implicit_tls_failure_names_the_real_port(tls_material: TlsMaterial) -> None:
    """An implicit-TLS SMTP handshake that fails says which port, never "port None"."""
    case = next(c for c in CASES if c.id == "smtp-implicit-close-on-client-hello")
    async with FakeServer(case.server(tls_material)) as fake:
        target = fake_target("smtp", fake.port, tls_mode="implicit", timeout=case.timeout, ca_file=str(tls_material.ca))
        result = await runner().execute(target, target.checks[0])
    assert (result.stage, result.reason) == ("tls", "tls_handshake")
    assert f"on port {fake.port}" in result.detail and "None" not in result.detail, result.detail


@pytest.mark.parametrize("name", ["imap-bye-alert-instead-of-select", "imap-bye-alert-right-after-login"])
async def test_server_bye_words_are_kept_in_detail(name: str, tls_material: TlsMaterial) -> None:
    """A `* BYE [ALERT] ...` before the server closes reaches `detail`, not a bare "closed the connection"."""
    result = await run_case(next(c for c in CASES if c.id == name), tls_material)
    assert "BYE [ALERT] System going down for maintenance" in result.detail, result.detail
