"""`errors.classify`: which exception means which (stage, reason), and that both stay inside the closed sets."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import aiosmtplib
import pytest

from monitor.errors import REASONS, STAGES, ProbeError, classify
from monitor.steps import Stage


def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    """`outer` as a library raises it: `raise outer from inner`."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as caught:
        return caught


def raised_during(outer: BaseException, inner: BaseException) -> BaseException:
    """`outer` raised while handling `inner` (implicit context, no `from`)."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 - the implicit chain is what this helper builds
    except BaseException as caught:
        return caught


def cert_error(verify_code: int) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    exc.verify_code = verify_code
    exc.verify_message = "test"
    return exc


CASES: list[tuple[str, BaseException, str, tuple[str, str]]] = [
    ("refused", ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connect", ("connect", "refused")),
    ("refused-wrapped-by-aiosmtplib",
     raised_from(aiosmtplib.SMTPConnectError("Error connecting to h on port 25"),
                 ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
     "connect", ("connect", "refused")),
    ("refused-implicit-context",
     raised_during(RuntimeError("wrapper"), ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
     "connect", ("connect", "refused")),
    ("timeout", TimeoutError(), "greeting", ("greeting", "timeout")),
    ("aiosmtplib-timeout", aiosmtplib.SMTPTimeoutError("Timed out"), "ehlo", ("ehlo", "timeout")),
    ("reset", ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "greeting", ("greeting", "reset")),
    ("incomplete-read", asyncio.IncompleteReadError(b"", 10), "login", ("login", "reset")),
    ("server-disconnected", aiosmtplib.SMTPServerDisconnected("Server disconnected"), "ehlo", ("ehlo", "reset")),
    ("broken-pipe", BrokenPipeError(errno.EPIPE, "Broken pipe"), "data", ("data", "reset")),
    ("dns", socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "connect", ("dns", "unreachable")),
    ("net-unreachable", OSError(errno.ENETUNREACH, "Network is unreachable"), "connect", ("connect", "unreachable")),
    ("host-unreachable", OSError(errno.EHOSTUNREACH, "No route to host"), "connect", ("connect", "unreachable")),
    ("etimedout", OSError(errno.ETIMEDOUT, "Connection timed out"), "connect", ("connect", "timeout")),
    ("cert-expired", cert_error(10), "greeting", ("tls", "cert_expired")),
    ("cert-untrusted", cert_error(20), "greeting", ("tls", "cert_invalid")),
    ("cert-hostname-mismatch", cert_error(62), "tls", ("tls", "cert_invalid")),
    ("tls-handshake", ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "connect",
     ("tls", "tls_handshake")),
    ("tls-wrapped",
     raised_from(aiosmtplib.SMTPConnectError("Error connecting"), ssl.SSLError(1, "[SSL] handshake failure")),
     "connect", ("tls", "tls_handshake")),
    ("probe-error", ProbeError("auth", "auth_rejected", "535 no"), "connect", ("auth", "auth_rejected")),
    ("probe-error-wrapping-refused",
     raised_from(ProbeError("rcpt", "reply_5xx", "550 no such user"), ConnectionRefusedError()),
     "connect", ("rcpt", "reply_5xx")),
    ("probe-error-inside-wrapper", raised_from(RuntimeError("wrapper"), ProbeError("select", "protocol")),
     "login", ("select", "protocol")),
    ("reply-421", aiosmtplib.SMTPResponseException(421, "Service not available"), "mail_from",
     ("mail_from", "reply_4xx")),
    ("reply-554", aiosmtplib.SMTPResponseException(554, "Transaction failed"), "rcpt", ("rcpt", "reply_5xx")),
    ("internal", ValueError("bug"), "ehlo", ("ehlo", "internal")),
    ("internal-key-error", KeyError("x"), "select", ("select", "internal")),
]


@pytest.mark.parametrize(("exc", "stage", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(exc: BaseException, stage: Stage, want: tuple[str, str]) -> None:
    """Each exception maps to the expected (stage, reason)."""
    assert classify(exc, stage) == want


@pytest.mark.parametrize("exc", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_stays_in_the_closed_sets(exc: BaseException) -> None:
    """Whatever the exception and the stage it struck in, classify returns a known stage and a known reason."""
    for stage in STAGES:
        got_stage, got_reason = classify(exc, stage)
        assert got_stage in STAGES, (stage, got_stage)
        assert got_reason in REASONS, (stage, got_reason)


def test_classify_handles_a_cyclic_chain() -> None:
    """An exception chain that loops back on itself is walked once, not forever."""
    first, second = RuntimeError("a"), ConnectionResetError()
    first.__cause__ = second
    second.__cause__ = first
    assert classify(first, "ehlo") == ("ehlo", "reset")


def test_suppressed_context_is_not_consulted() -> None:
    """`raise ... from None` hides the original error from classification."""
    try:
        try:
            raise ConnectionRefusedError()
        except ConnectionRefusedError:
            raise ValueError("plain") from None
    except ValueError as exc:
        assert classify(exc, "connect") == ("connect", "internal")


def test_bad_smtp_banner_is_a_reply_not_a_reset() -> None:
    """aiosmtplib's error for a non-220 banner carries the code and classifies by it."""
    assert classify(aiosmtplib.SMTPConnectResponseError(554, "go away"), "greeting") == ("greeting", "reply_5xx")


def test_probe_error_rejects_unknown_stage() -> None:
    """ProbeError refuses a stage outside STAGES."""
    with pytest.raises(ValueError, match="unknown stage 'handshake'"):
        ProbeError("handshake", "timeout")  # type: ignore[arg-type]  # mypy refuses it too: a closed set


def test_probe_error_rejects_unknown_reason() -> None:
    """ProbeError refuses a reason outside REASONS."""
    with pytest.raises(ValueError, match="unknown reason 'slow'"):
        ProbeError("connect", "slow")  # type: ignore[arg-type]  # mypy refuses it too: a closed set


def test_probe_error_carries_its_fields() -> None:
    """ProbeError keeps stage, reason, detail and SMTP code, and says them in its message."""
    exc = ProbeError("rcpt", "reply_5xx", "550 no such user", smtp_code=550)
    assert (exc.stage, exc.reason, exc.detail, exc.smtp_code) == ("rcpt", "reply_5xx", "550 no such user", 550)
    assert str(exc) == "rcpt/reply_5xx: 550 no such user"
    assert str(ProbeError("quit", "timeout")) == "quit/timeout"


def test_silent_resolver_is_dns_timeout() -> None:
    """A resolver that does not answer (EAI_AGAIN) is dns/timeout; "no such name" (EAI_NONAME) is dns/unreachable."""
    assert classify(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "dns") == \
        ("dns", "timeout")
    assert classify(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns") == ("dns", "unreachable")
