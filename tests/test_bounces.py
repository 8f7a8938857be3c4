"""RFC 3464 bounces of probe messages: believed only when they carry our own signed probe header."""

from __future__ import annotations

from monitor.bounces import parse_dsn
from monitor.probe_message import build_message, new_probe

KEY = b"a probe key of sixteen characters"


def _dsn(returned: bytes, status: str = "5.2.2") -> bytes:
    """A DSN as Postfix writes one: text, delivery-status, the returned message."""
    return (b"From: MAILER-DAEMON@mail.example\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            b"--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n"
            b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mail.example\r\n\r\n"
            b"Final-Recipient: rfc822; full@example.org\r\nAction: failed\r\nStatus: " + status.encode() +
            b"\r\nDiagnostic-Code: smtp; 552 5.2.2 <full@example.org> Quota exceeded\r\n\r\n"
            b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + returned + b"\r\n--B--\r\n")


def test_our_bounce_gives_status_and_diagnostic() -> None:
    header = new_probe(KEY, "v", "t", "imap", 30.0)
    message, _ = build_message(header, "a@example.net", "full@example.org")
    bounce = parse_dsn(_dsn(message), KEY)
    assert bounce is not None
    assert (bounce.probe.probe_id, bounce.status) == (header.probe_id, "5.2.2")
    assert bounce.diagnostic == "smtp; 552 5.2.2 <full@example.org> Quota exceeded"


def test_a_bounce_of_a_forged_or_foreign_probe_is_ignored() -> None:
    """Another key (another monitor family, or a forger) signed it: not ours, never believed or deleted."""
    header = new_probe(b"another key of sixteen characters", "v", "t", "imap", 30.0)
    message, _ = build_message(header, "a@example.net", "full@example.org")
    assert parse_dsn(_dsn(message), KEY) is None


def test_a_plain_message_is_not_a_bounce() -> None:
    header = new_probe(KEY, "v", "t", "imap", 30.0)
    message, _ = build_message(header, "a@example.net", "full@example.org")
    assert parse_dsn(message, KEY) is None
