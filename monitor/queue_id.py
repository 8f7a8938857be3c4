"""The queue id in an MTA's final reply to DATA: the key support greps the server's logs with.

Each MTA words its `250` differently (docs/queue-ids.md lists the formats and where each is documented).
The patterns are tried in order, first match wins; a reply none of them knows leaves the queue id empty,
and the whole reply is kept in the result either way (`smtp_reply`, the transcript).
"""

from __future__ import annotations

import re

__all__ = ["QUEUE_ID_FORMATS", "parse_queue_id"]

# (MTA, pattern with the id as group 1), over the reply text after the code (aiosmtplib's `message`).
QUEUE_ID_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # Postfix `250 2.0.0 Ok: queued as 4B0F2C1234` (long ids: `queued as 4Xyz...`); several relays copy it.
    ("postfix", re.compile(r"\bqueued as ([A-Za-z0-9_]+)", re.IGNORECASE)),
    # Exim `250 OK id=1xYo2w-0006hN-0p` (6-6-2 base 62; 4.97 and later 6-11-4, `1rZ1vS-00000000Bfz-1Y1x`).
    ("exim", re.compile(r"\bid=([0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})\b")),
    # Exchange / Microsoft 365 `250 2.6.0 <message-id> [InternalId=12345, Hostname=...] Queued mail for delivery`.
    ("exchange", re.compile(r"\[InternalId=(\d+)")),
    # Gmail `250 2.0.0 OK  1700000000 d9443c01a7336-1dbbfa1d5a9si12345678plb.12 - gsmtp`.
    ("gmail", re.compile(r"\bOK\s+(?:\d+\s+)?(\S+) - gsmtp\b")),
    # OpenSMTPD `250 2.0.0 f9b5723e Message accepted for delivery` (older: `2.0.0: f9b5723e ...`) and
    # Sendmail `250 2.0.0 wB2K3a1A012345 Message accepted for delivery`.
    ("opensmtpd/sendmail", re.compile(r"^(?:\d\.\d{1,3}\.\d{1,3}:?\s+)?([A-Za-z0-9]+) Message accepted for delivery",
                                      re.IGNORECASE | re.MULTILINE)),
    # qmail `250 ok 1700000000 qp 12345`: the qmail-queue process id, which qmail-send logs as `qp 12345`.
    ("qmail", re.compile(r"^ok \d+ qp (\d+)\b", re.MULTILINE)),
)


def parse_queue_id(reply: str) -> str | None:
    """The queue id in the text of a final `250` (the code stripped), or None when no known format matches."""
    for _mta, pattern in QUEUE_ID_FORMATS:
        match = pattern.search(reply)
        if match:
            return match.group(1)
    return None
