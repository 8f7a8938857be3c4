"""Probe messages: building them, and proving (HMAC) that a message found in a mailbox is one of ours.

Every probe message carries one `X-Mailmon-Probe` header:

    X-Mailmon-Probe: v1 id=<32 hex> vantage=<v> target=<t> via=<imap|pop3> sent=<ms> deadline=<ms> mac=<64 hex>

`mac` is HMAC-SHA256, under the configured probe key, of everything before ` mac=`. Only a message whose
header verifies is ever deleted, so a look-alike header (a forwarded probe, a test, an attacker) is never
touched. The fields are covered by the MAC, so the sweeper can trust `deadline` to tell a message still in
flight (leave it) from a stale one (delete it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formatdate

__all__ = ["HEADER", "ProbeHeader", "build_message", "new_probe", "parse_header", "verify"]

HEADER = "X-Mailmon-Probe"
_VERSION = "v1"
_FIELDS = re.compile(
    r"^v1 id=(?P<id>[0-9a-f]{32}) vantage=(?P<vantage>\S+) target=(?P<target>\S+) via=(?P<via>[a-z0-9]+) "
    r"sent=(?P<sent>[0-9]{1,16}) deadline=(?P<deadline>[0-9]{1,16}) mac=(?P<mac>[0-9a-f]{64})$")
# Written without folding; readers compare header values with whitespace normalised, so a relay that
# folds the header anyway does not break the match.
_WIRE = SMTP.clone(max_line_length=None)


@dataclass(frozen=True)
class ProbeHeader:
    """The signed facts of one probe message."""

    probe_id: str
    vantage: str
    target: str
    via: str
    sent_ms: int
    deadline_ms: int
    mac: str

    def unsigned(self) -> str:
        return (f"{_VERSION} id={self.probe_id} vantage={self.vantage} target={self.target} via={self.via} "
                f"sent={self.sent_ms} deadline={self.deadline_ms}")

    def value(self) -> str:
        """The exact header value as sent."""
        return f"{self.unsigned()} mac={self.mac}"


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()


def new_probe(key: bytes, vantage: str, target: str, via: str, timeout: float, now: float | None = None) -> ProbeHeader:
    """A fresh, signed probe header for one round trip that must complete within `timeout` seconds."""
    sent = time.time() if now is None else now
    draft = ProbeHeader(probe_id=secrets.token_hex(16), vantage=vantage, target=target, via=via,
                        sent_ms=int(sent * 1000), deadline_ms=int((sent + timeout) * 1000), mac="")
    return ProbeHeader(**{**draft.__dict__, "mac": _mac(key, draft.unsigned())})


def parse_header(value: str) -> ProbeHeader | None:
    """The fields of a header value, or None if it is not shaped like ours (the MAC is not checked here)."""
    match = _FIELDS.match(" ".join(value.split()))  # unfold and normalise whitespace
    if match is None:
        return None
    return ProbeHeader(probe_id=match["id"], vantage=match["vantage"], target=match["target"], via=match["via"],
                       sent_ms=int(match["sent"]), deadline_ms=int(match["deadline"]), mac=match["mac"])


def verify(key: bytes, value: str) -> ProbeHeader | None:
    """The header's fields if its MAC verifies under `key`, else None."""
    header = parse_header(value)
    if header is None or not hmac.compare_digest(header.mac, _mac(key, header.unsigned())):
        return None
    return header


def build_message(header: ProbeHeader, sender: str, recipient: str) -> tuple[bytes, str]:
    """The probe message (wire bytes, CRLF) and its Message-ID. It says what it is, so nobody is alarmed."""
    message = EmailMessage(policy=SMTP)
    message_id = f"<{header.probe_id}.{header.sent_ms}@mailmon.invalid>"
    sent = header.sent_ms / 1000
    message["From"] = f"mailmon probe <{sender}>"
    message["To"] = recipient
    message["Subject"] = f"mailmon probe {header.target} from {header.vantage} via {header.via}"
    message["Date"] = formatdate(sent, usegmt=True)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message[HEADER] = header.value()
    message.set_content(
        "This is a synthetic test message sent by mailmon, a mail monitoring probe.\n"
        f"Vantage: {header.vantage}\nTarget: {header.target}\nRead back over: {header.via}\n"
        f"Sent: {format_datetime(datetime.fromtimestamp(sent, UTC))}\n"
        "It is deleted automatically once it has been seen. No action is needed.\n")
    return message.as_bytes(policy=_WIRE), message_id
