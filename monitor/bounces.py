"""Bounces of probe messages (RFC 3464 delivery status notifications) found in the sender's mailbox.

A server that accepts the probe and refuses it later (Dovecot's LMTP over quota behind Postfix, a relay that cannot
deliver) sends a DSN to the envelope sender. When a round trip submits through another target (`submit_via`), that
sender's mailbox is readable: the DSN there says why the probe never arrived (`Status: 5.2.2` is a full mailbox).
Only a DSN that carries our own signed probe header (in its returned headers) is believed, and only that one is
deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message

from monitor.probe_message import HEADER, ProbeHeader, verify

__all__ = ["Bounce", "parse_dsn"]

_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class Bounce:
    probe: ProbeHeader
    status: str        # RFC 3463 enhanced status, e.g. 5.2.2
    diagnostic: str    # the remote server's words (Diagnostic-Code), shortened


def _returned_headers(message: Message) -> bytes:
    """The returned message or its headers (text/rfc822-headers or message/rfc822 part), as bytes."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else str(part.get_payload()).encode()
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return bytes(inner[0].as_bytes())
    return b""


def parse_dsn(raw: bytes, key: bytes) -> Bounce | None:
    """The bounce of one of our probes, or None (not a DSN, not ours, or no failed recipient)."""
    message = message_from_bytes(raw, policy=policy.compat32)
    if message.get_content_type() != "multipart/report":
        return None
    returned = message_from_bytes(_returned_headers(message), policy=policy.compat32)
    values = returned.get_all(HEADER) or []
    probe = verify(key, str(values[0])) if len(values) == 1 else None
    if probe is None:
        return None
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        # The per-message and per-recipient field blocks are parsed as sub-messages by the email package.
        blocks = part.get_payload()
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, Message):
                continue
            status = str(block.get("Status", "")).strip()
            if block.get("Action", "").strip().lower() == "failed" and _STATUS.match(status):
                diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())[:300]
                return Bounce(probe, status, diagnostic)
    return None
