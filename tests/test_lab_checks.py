"""The three checks against the real Postfix + Dovecot lab: every TLS mode, and the faults that matter."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import Lab, local_target, run_once

pytestmark = pytest.mark.lab

TLS_CASES = [
    ("smtp", "starttls", 587, True),
    ("smtp", "implicit", 465, True),
    ("smtp", "starttls", 25, False),
    ("smtp", "none", 25, False),
    ("imap", "implicit", 993, True),
    ("imap", "starttls", 143, True),
    ("pop3", "implicit", 995, True),
    ("pop3", "starttls", 110, True),
]


@pytest.mark.parametrize(("check", "tls_mode", "port", "with_auth"), TLS_CASES)
async def test_check_passes_on_every_tls_mode(lab: Lab, check: str, tls_mode: str, port: int, with_auth: bool) -> None:
    """Each check succeeds against the lab on every port and TLS mode it serves."""
    result = await run_once(lab.target(check, tls_mode, port=port, with_auth=with_auth))
    assert result.ok, f"{result.stage}/{result.reason}: {result.detail}\n" + "\n".join(result.transcript)
    assert result.stage is None and result.reason is None
    assert {"dns", "connect"} <= set(result.phases)
    if tls_mode == "none":
        assert result.tls.version is None
    else:
        assert result.tls.version in ("TLSv1.2", "TLSv1.3")
        assert result.tls.cert_not_after is not None and result.tls.cert_not_after > result.started_at


@pytest.mark.parametrize(("check", "tls_mode"), [("smtp", "implicit"), ("imap", "implicit")])
async def test_implicit_tls_is_timed_apart_from_the_greeting(lab: Lab, check: str, tls_mode: str) -> None:
    """With implicit TLS the handshake and the greeting are separate phases."""
    result = await run_once(lab.target(check, tls_mode))
    greeting = "banner" if check == "smtp" else "greeting"
    assert result.ok
    assert result.phases["tls"] > 0 and greeting in result.phases


async def test_smtp_records_the_final_reply(lab: Lab) -> None:
    """The last SMTP reply (QUIT's 221) is kept as code and text."""
    result = await run_once(lab.target("smtp", "starttls"))
    assert result.smtp_code == 221
    assert result.smtp_reply is not None and result.smtp_reply.startswith("221")


async def test_smtp_dry_run_mail_and_rcpt(lab: Lab) -> None:
    """The optional MAIL/RCPT dry run passes for a lab recipient and is timed."""
    target = lab.target("smtp", "starttls", port=25, with_auth=False,
                        mail_from="probe@lab.test", rcpt_to=("probe@lab.test",))
    result = await run_once(target)
    assert result.ok, result.detail
    assert {"mail_from", "rcpt", "rset"} <= set(result.phases)


async def test_smtp_dry_run_rejected_recipient(lab: Lab) -> None:
    """A recipient the MX will not relay for fails at rcpt with a 5xx reply."""
    target = lab.target("smtp", "starttls", port=25, with_auth=False,
                        mail_from="probe@lab.test", rcpt_to=("someone@example.com",))
    result = await run_once(target)
    assert (result.stage, result.reason) == ("rcpt", "reply_5xx")
    assert result.smtp_code is not None and 500 <= result.smtp_code < 600


@pytest.mark.parametrize(("check", "tls_mode"), [("smtp", "starttls"), ("smtp", "implicit"), ("imap", "implicit"),
                                                 ("pop3", "implicit")])
async def test_wrong_password_is_auth_rejected(lab: Lab, check: str, tls_mode: str) -> None:
    """A wrong password is classified auth/auth_rejected on every protocol."""
    result = await run_once(lab.target(check, tls_mode, password="not-the-password"))
    assert (result.stage, result.reason) == ("auth", "auth_rejected"), result.detail


async def test_smtp_auth_is_attempted_once(lab: Lab) -> None:
    """A rejected AUTH is not retried with another mechanism (each retry deepens the server's penalty)."""
    result = await run_once(lab.target("smtp", "starttls", password="not-the-password"))
    assert sum(1 for line in result.transcript if line.startswith("C: AUTH")) == 1


async def test_postfix_down_fails_only_smtp(lab: Lab, postfix_stopped: None) -> None:
    """Postfix stopped, Dovecot up: SMTP is connect/refused while IMAP and POP3 stay OK (the scenario we exist for)."""
    smtp = await run_once(lab.target("smtp", "starttls"))
    imap = await run_once(lab.target("imap", "implicit"))
    pop3 = await run_once(lab.target("pop3", "implicit"))
    assert (smtp.stage, smtp.reason) == ("connect", "refused")
    assert imap.ok, imap.detail
    assert pop3.ok, pop3.detail


@pytest.mark.parametrize("check", ["smtp", "imap", "pop3"])
async def test_refused_port_fails_at_once(check: str, refused_ports: Callable[[], int]) -> None:
    """A port with nothing listening is connect/refused at once, not at the deadline."""
    result = await run_once(local_target(check, refused_ports(), timeout=10.0))
    assert (result.stage, result.reason) == ("connect", "refused")
    assert result.duration_seconds < 1.0  # the deadline is 10 s: refusal must not wait for it


@pytest.mark.parametrize("check", ["smtp", "imap", "pop3"])
async def test_silent_server_times_out_at_greeting(check: str, black_hole: int) -> None:
    """A listener that never answers gives greeting/timeout, within timeout + 1 s."""
    result = await run_once(local_target(check, black_hole, timeout=1.0))
    assert (result.stage, result.reason) == ("greeting", "timeout")
    assert result.duration_seconds < 1.0 + 1.0


@pytest.mark.parametrize(("check", "tls_mode"), [("smtp", "starttls"), ("smtp", "implicit"), ("imap", "implicit"),
                                                 ("imap", "starttls"), ("pop3", "implicit"), ("pop3", "starttls")])
async def test_unknown_ca_is_cert_invalid(lab: Lab, check: str, tls_mode: str) -> None:
    """Verifying the lab's self-signed certificate against the system store fails as tls/cert_invalid."""
    result = await run_once(lab.target(check, tls_mode, ca=False))
    assert (result.stage, result.reason) == ("tls", "cert_invalid"), result.detail


async def test_wrong_server_name_is_cert_invalid(lab: Lab) -> None:
    """A certificate that does not carry the expected name fails as tls/cert_invalid."""
    target = lab.target("imap", "implicit")
    target = type(target)(name=target.name, host=target.host,
                          tls=type(target.tls)(ca_file=lab.ca, server_name="other.lab.test"),
                          auth=target.auth, checks=target.checks)
    result = await run_once(target)
    assert (result.stage, result.reason) == ("tls", "cert_invalid")


async def test_submission_without_tls_cannot_authenticate(lab: Lab) -> None:
    """Port 587 with TLS off offers no AUTH (the lab requires TLS first): auth/protocol, and no AUTH is sent."""
    result = await run_once(lab.target("smtp", "none", port=587))
    assert (result.stage, result.reason) == ("auth", "protocol")
    assert not any(line.startswith("C: AUTH") for line in result.transcript)


async def test_imap_never_sends_login_in_clear_when_disabled(lab: Lab) -> None:
    """IMAP without TLS against a server advertising LOGINDISABLED fails auth/protocol without sending LOGIN."""
    result = await run_once(lab.target("imap", "none", port=143))
    assert (result.stage, result.reason) == ("auth", "protocol")
    assert not any(line.startswith("C: LOGIN") for line in result.transcript)


@pytest.mark.parametrize(("tls_min", "tls_max", "version"), [("1.2", "1.2", "TLSv1.2"), ("1.3", "1.3", "TLSv1.3")])
async def test_client_profile_pins_the_tls_version(lab: Lab, tls_min: str, tls_max: str, version: str) -> None:
    """A client profile limited to one TLS version submits with exactly that version."""
    target = lab.target("smtp", "starttls", profile="modern", tls_min=tls_min, tls_max=tls_max)
    result = await run_once(target)
    assert result.ok, result.detail
    assert result.check == "smtp:modern"
    assert result.tls.version == version


async def test_client_profile_can_imitate_an_old_client(lab: Lab) -> None:
    """A TLS 1.1-only client profile really speaks TLS 1.1 (the lab still accepts it)."""
    result = await run_once(lab.target("smtp", "implicit", profile="legacy", tls_min="1.0", tls_max="1.1"))
    assert result.ok, result.detail
    assert (result.check, result.tls.version) == ("smtp:legacy", "TLSv1.1")


async def test_client_profile_newer_than_the_server_fails_in_tls(lab: Lab, tmp_path: Path) -> None:
    """A TLS 1.3-only profile against a server capped at TLS 1.2 fails as tls/tls_handshake, not as an outage."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(Path(lab.ca).with_name("server.pem"), Path(lab.ca).with_name("server.key"))
    server_context.maximum_version = ssl.TLSVersion.TLSv1_2

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 tls12-only.test ESMTP\r\n")
        await writer.drain()
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        target = lab.target("smtp", "implicit", port=port, profile="tls13-only", tls_min="1.3", tls_max="1.3")
        target = replace(target, host="127.0.0.1")
        result = await run_once(target)
    finally:
        server.close()
        await server.wait_closed()
    assert (result.check, result.stage, result.reason) == ("smtp:tls13-only", "tls", "tls_handshake")


async def test_client_profile_uses_its_auth_mechanism(lab: Lab) -> None:
    """A profile that names AUTH LOGIN authenticates with LOGIN, once."""
    result = await run_once(lab.target("smtp", "starttls", profile="outlook", auth_mechanism="login"))
    assert result.ok, result.detail
    assert [line for line in result.transcript if line.startswith("C: AUTH")] == ["C: AUTH LOGIN ********"]
