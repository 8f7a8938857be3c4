"""Read-back pieces that a real server shows only in races: staleness rules and untagged news inside SEARCH."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

from aioimaplib.aioimaplib import Response

from monitor.config import DEFAULT_JUNK_FOLDERS, Auth, CheckSettings, RoundTripSettings, Secret, Target
from monitor.probe_message import new_probe, parse_header, verify
from monitor.probes.readback import OTHER_VANTAGE_GRACE_MS, is_stale
from monitor.probes.readback_imap import ImapReadback
from monitor.probes.readback_pop3 import Pop3Readback
from monitor.probes.roundtrip import RoundTrip
from monitor.result import ProbeContext
from monitor.runner import Runner
from tests import builders

KEY = b"unit-test-probe-key-0123456789"


def _readback() -> ImapReadback:
    check = builders.settings(RoundTripSettings, port=993, tls_mode="implicit", timeout=20, via="imap",
                              recipient="p@x.test", junk_folders=DEFAULT_JUNK_FOLDERS)
    target = builders.target("t", check, host="127.0.0.1", auth=Auth("p@x.test", Secret("pw")))
    return ImapReadback(ProbeContext(), target, check, KEY)


class _ScriptedSession:
    """Stands in for the IMAP session: every command gets the scripted response."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self.protocol = self

    def search(self, *criteria: str, charset: str | None = None, by_uid: bool = False) -> Response:
        return self.response

    async def watch(self, value: Any) -> Any:
        return await value if isinstance(value, Awaitable) else value


async def test_untagged_exists_in_search_is_news_not_a_uid() -> None:
    """`12 EXISTS` arriving inside a SEARCH response is not read as UID 12, and marks news for the next wait."""
    readback = _readback()
    readback.session = _ScriptedSession(Response("OK", [b"12 EXISTS", b"1 RECENT", b"45 46", b"Search completed"]))  # type: ignore[assignment]
    assert await readback._search("UID", "40:*") == [45, 46]
    assert readback.news is True


def test_own_message_is_stale_only_after_its_deadline() -> None:
    """Our own probe message is left alone until its signed deadline passes."""
    header = new_probe(KEY, "east", "t", "imap", 10.0, now=1000.0)
    assert not is_stale(header, "east", header.deadline_ms)
    assert is_stale(header, "east", header.deadline_ms + 1)


def test_other_vantage_message_gets_a_grace_period() -> None:
    """Another vantage's message is kept for a grace period past its deadline (it may be in flight there)."""
    header = new_probe(KEY, "west", "t", "imap", 10.0, now=1000.0)
    assert not is_stale(header, "east", header.deadline_ms + OTHER_VANTAGE_GRACE_MS)
    assert is_stale(header, "east", header.deadline_ms + OTHER_VANTAGE_GRACE_MS + 1)


def test_signature_covers_every_field() -> None:
    """Changing any signed field (here the deadline) makes the header fail verification."""
    header = new_probe(KEY, "east", "t", "imap", 10.0)
    forged = header.value().replace(f"deadline={header.deadline_ms}", f"deadline={header.deadline_ms + 1}")
    assert verify(KEY, header.value()) == header
    assert parse_header(forged) is not None and verify(KEY, forged) is None


def test_folded_header_still_verifies() -> None:
    """A relay that folds the header does not break verification (whitespace is normalised)."""
    header = new_probe(KEY, "east", "t", "imap", 10.0)
    folded = header.value().replace(" target=", "\r\n target=")
    assert verify(KEY, folded) == header


def test_wrong_key_never_verifies() -> None:
    """A header signed with another key is not ours."""
    header = new_probe(b"another-key-entirely-123456", "east", "t", "imap", 10.0)
    assert verify(KEY, header.value()) is None


def test_pop3_known_plain_cache_belongs_to_its_round_trip() -> None:
    """The UIDLs known not to be probes are kept per round-trip probe and mailbox, not in a process-wide class cache
    (which outlived reloads, App instances and tests)."""
    check = builders.settings(RoundTripSettings, via="pop3", recipient="p@x.test")
    pop3 = builders.target("t", check)
    trip = RoundTrip(Secret("k" * 32), "test")
    first = trip.reader(ProbeContext(), pop3, check)
    again = trip.reader(ProbeContext(), pop3, check)
    other = RoundTrip(Secret("k" * 32), "test").reader(ProbeContext(), pop3, check)
    assert isinstance(first, Pop3Readback) and isinstance(again, Pop3Readback) and isinstance(other, Pop3Readback)
    first._known.add("uidl-1")
    assert "uidl-1" in again._known
    assert "uidl-1" not in other._known


async def test_deadline_while_waiting_for_delivery_is_not_delivered() -> None:
    """A round trip cut off by its deadline while it waits for its message reports `delivery/not_delivered`, the one
    name for "probe not found in time" (never `delivery/timeout`)."""
    async def waits_forever(ctx: ProbeContext, target: Target, check: CheckSettings) -> None:
        ctx.step("delivery")
        await asyncio.sleep(60)

    readback = _readback()
    check = replace(readback.check, timeout=0.3)
    result = await Runner("v", probes={"roundtrip": waits_forever}).execute(readback.session.target, check)
    assert (result.stage, result.reason) == ("delivery", "not_delivered")
    assert "not visible" in result.detail
