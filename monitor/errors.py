"""The probe error and exception classification; the closed stage and reason sets live in monitor/steps.py."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl

from monitor.steps import REASONS, STAGES, Reason, Stage

__all__ = [
    "LOCAL_RESOURCE_ERRNOS",
    "REASONS",
    "STAGES",
    "MailmonError",
    "ProbeError",
    "classify",
]

# RFC 3463 X.2.2 "Mailbox full": the recipient's quota, not the server's health (452 4.3.1 is the server's disk).
_MAILBOX_FULL = re.compile(r"^[45]\.2\.2\b")

# OpenSSL's X509_V_ERR_CERT_HAS_EXPIRED: the one verification error that gets its own reason.
_X509_CERT_HAS_EXPIRED = 10
_UNREACHABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN})
# This host ran out of something (descriptors, buffers, memory, ephemeral ports): the monitor's fault, never the
# server's. EADDRNOTAVAIL belongs here, not with the unreachable errnos: on connect and bind Linux raises it when no
# local address/port can be assigned (ephemeral ports exhausted); an unrouted peer is ENETUNREACH/EHOSTUNREACH.
LOCAL_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})
_RESOLVER_SILENT = frozenset({socket.EAI_AGAIN, socket.EAI_FAIL})
_RESOLVER_LOCAL = frozenset({socket.EAI_MEMORY})  # the resolver library could not allocate: our host, not DNS
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN})


class MailmonError(Exception):
    """Root of every error mailmon raises on purpose."""


class ProbeError(MailmonError):
    """A probe step failed in a known way: where (`stage`), why (`reason`), and the server's words."""

    def __init__(self, stage: Stage, reason: Reason, detail: str = "", *, smtp_code: int | None = None) -> None:
        # The types say it to mypy; this says it to callers that pass strings from outside (a stage is a label).
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(f"{stage}/{reason}: {detail}" if detail else f"{stage}/{reason}")
        self.stage: Stage = stage
        self.reason: Reason = reason
        self.detail = detail
        self.smtp_code = smtp_code


def reply_reason(code: int) -> Reason:
    """The reason for an unexpected numeric reply: 4xx is temporary, 5xx permanent, anything else a protocol error."""
    if 400 <= code < 500:
        return "reply_4xx"
    if 500 <= code < 600:
        return "reply_5xx"
    return "protocol"


def smtp_reply_reason(code: int, message: str) -> Reason:
    """The reason for an unexpected SMTP reply: a full mailbox (enhanced status X.2.2) is named as such."""
    if 400 <= code < 600 and _MAILBOX_FULL.match(message.lstrip()):
        return "mailbox_full"
    return reply_reason(code)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and the errors it was raised from, outermost first: libraries wrap the OS error we want."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _reason_of(exc: BaseException) -> Reason | None:
    """The reason for one exception in the chain, or None when it says nothing specific."""
    if isinstance(exc, ProbeError):
        return exc.reason
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "cert_expired" if exc.verify_code == _X509_CERT_HAS_EXPIRED else "cert_invalid"
    if isinstance(exc, ssl.CertificateError):
        return "cert_invalid"
    if isinstance(exc, ssl.SSLError):
        return "tls_handshake"
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in LOCAL_RESOURCE_ERRNOS) or (
            isinstance(exc, socket.gaierror) and exc.errno in _RESOLVER_LOCAL):
        return "local_resources"  # before everything else: an exhausted host says nothing about the server
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    code = getattr(exc, "code", None)
    if isinstance(code, int) and (400 <= code < 600 or isinstance(getattr(exc, "message", None), str)):
        # A library's "unexpected reply" error (aiosmtplib's carry `code` and `message`); checked before
        # ConnectionError because aiosmtplib's rejected-banner error is both. Any other code is a protocol
        # error: aiosmtplib reports a malformed or oversized reply as code -1, and an EHLO answered with,
        # say, 220 as that code.
        message = getattr(exc, "message", None)
        return smtp_reply_reason(code, message) if isinstance(message, str) else reply_reason(code)
    if isinstance(exc, (ConnectionError, asyncio.IncompleteReadError, EOFError)):
        return "reset"  # after refused: a peer that went away, however the library words it
    if isinstance(exc, socket.gaierror):
        # The resolver did not answer (its problem, usually this vantage's) versus answered "no such name".
        return "timeout" if exc.errno in _RESOLVER_SILENT else "unreachable"
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in _UNREACHABLE_ERRNOS:
            return "unreachable"
        if exc.errno in _RESET_ERRNOS:
            return "reset"
        if exc.errno == errno.ECONNREFUSED:
            return "refused"
        if exc.errno == errno.ETIMEDOUT:
            return "timeout"
    return None


def classify(exc: BaseException, stage: Stage) -> tuple[Stage, Reason]:
    """Map an exception raised during `stage` to (stage, reason).

    A ProbeError anywhere in the chain says it all. Otherwise the innermost error that names a reason
    wins, so a library error wrapping `ConnectionRefusedError` still reads as `refused`. TLS problems
    always belong to the `tls` stage and name resolution to `dns`, whatever step raised them.
    """
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, ProbeError):
            return link.stage, link.reason
    for link in reversed(chain):
        reason = _reason_of(link)
        if reason is None:
            continue
        if reason in ("cert_expired", "cert_invalid", "tls_handshake"):
            return "tls", reason
        if isinstance(link, socket.gaierror):
            return "dns", reason
        if stage == "tls" and reason == "reset":
            # A server that rejects a handshake (no common version or cipher) often just drops the connection.
            return stage, "tls_handshake"
        return stage, reason
    return stage, "internal"
