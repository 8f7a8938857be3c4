"""Reading probe messages back: the contract both readers keep, and what they share.

Both readers share one contract (`Readback`). `open()` logs in and records what is already there; `poll()` looks
once for the probe message among what arrived since; `wait_push()` waits cheaply for news; `delete()` removes
exactly the message found; `sweep()` removes the monitor's own stale probe messages. They touch nothing else.
The IMAP reader is `readback_imap.py`, the POP3 reader `readback_pop3.py`; this module holds what both use: the
found message, the sweep's report, the staleness rule and the probe header of a header block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Protocol

from monitor.probe_message import HEADER, ProbeHeader, verify

__all__ = ["OTHER_VANTAGE_GRACE_MS", "SLOW_POLL", "Found", "Readback", "SweepReport", "is_stale", "probe_header",
           "verified"]

# A message of another vantage is left alone until this long after its own deadline: it may still be in
# flight for that monitor, whose clock may also differ from ours.
OTHER_VANTAGE_GRACE_MS = 10 * 60 * 1000
# Seconds between looks when nothing cheaper tells of new mail (POP3; IMAP without IDLE).
SLOW_POLL = 1.0


@dataclass
class Found:
    """A probe message located in a mailbox: where, what it says, and when the poll that saw it returned."""

    ref: str
    header: ProbeHeader
    seen_at: float
    folder: str
    # The whole header block when the look already fetched it (POP3's TOP), for Authentication-Results.
    block: bytes | None = None


@dataclass
class SweepReport:
    deleted: int = 0
    late: list[ProbeHeader] = field(default_factory=list)

    def deleted_one(self, header: ProbeHeader, vantage: str) -> None:
        """Count a deleted stale probe message; our own vantage's are late arrivals too."""
        self.deleted += 1
        if header.vantage == vantage:
            self.late.append(header)


def is_stale(header: ProbeHeader, vantage: str, now_ms: int) -> bool:
    """True when a verified probe message may be deleted by the sweeper of `vantage`.

    Our own messages are stale once their deadline passed (no round trip of ours waits for them any more).
    Another vantage's messages get a grace period on top, so a monitor never removes a message that a
    peer sharing the mailbox is still waiting for.
    """
    if header.vantage == vantage:
        return now_ms > header.deadline_ms
    return now_ms > header.deadline_ms + OTHER_VANTAGE_GRACE_MS


def probe_header(raw: bytes | bytearray) -> str | None:
    """The X-Mailmon-Probe value of a header block, or None when absent or present more than once."""
    values = BytesHeaderParser().parsebytes(bytes(raw)).get_all(HEADER) or []
    return str(values[0]) if len(values) == 1 else None


def verified(key: bytes, value: str | None) -> ProbeHeader | None:
    """The probe header `value` when it is present and signed with `key`: only then is the message ours."""
    return verify(key, value) if value else None


class Readback(Protocol):
    async def open(self) -> None: ...
    async def poll(self, probe_id: str) -> Found | None: ...
    async def wait_push(self, timeout: float) -> None: ...
    async def delete(self, found: Found) -> None: ...
    async def find_in_junk(self, probe_id: str) -> str | None: ...
    async def quota(self) -> dict[str, tuple[int, int]]: ...
    async def header_block(self, found: Found) -> bytes | None: ...
    async def sweep(self, vantage: str, now_ms: int) -> SweepReport: ...
    def close(self) -> None: ...
