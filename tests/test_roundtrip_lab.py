"""Round trips through the real lab: delivered, held (not delivered, then late), junk, and never touching other mail."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Iterator

import pytest

from monitor.config import (
    DEFAULT_JUNK_FOLDERS,
    Auth,
    ImapSettings,
    Pop3Settings,
    RoundTripSettings,
    Secret,
    SmtpSettings,
    Target,
    TlsSettings,
)
from monitor.probe_message import ProbeHeader, build_message, new_probe, parse_header, verify
from monitor.probes import PROBES, for_kind
from monitor.probes.readback_imap import ImapReadback
from monitor.probes.readback_pop3 import Pop3Readback
from monitor.probes.roundtrip import RoundTrip
from monitor.result import ProbeContext, Result
from monitor.runner import Runner
from tests import mailbox
from tests.conftest import Lab

pytestmark = pytest.mark.lab

KEY = Secret("test-probe-key-0123456789abcdef")


def roundtrip_target(lab: Lab, timeout: float = 20.0, name: str = "lab") -> Target:
    """The lab as a target with SMTP submission, IMAP and POP3 blocks and round trips over both."""
    smtp = SmtpSettings(port=587, tls_mode="starttls", interval=60.0, timeout=10.0)
    imap = ImapSettings(port=993, tls_mode="implicit", interval=60.0, timeout=10.0)
    pop3 = Pop3Settings(port=995, tls_mode="implicit", interval=60.0, timeout=10.0)
    trips = tuple(RoundTripSettings(port=c.port, tls_mode=c.tls_mode, interval=60.0, timeout=timeout, via=c.name,
                                    recipient=lab.user, sender=lab.user, junk_folders=DEFAULT_JUNK_FOLDERS)
                  for c in (imap, pop3))
    return Target(name=name, host=lab.host, tls=TlsSettings(ca_file=lab.ca, server_name=lab.server_name),
                  auth=Auth(lab.user, Secret(lab.password)), checks=(smtp, imap, pop3, *trips))


def runner(vantage: str = "test") -> Runner:
    return Runner(vantage, probes={**PROBES, "roundtrip": for_kind(RoundTripSettings, RoundTrip(KEY, vantage))})


def via(target: Target, protocol: str) -> RoundTripSettings:
    return next(c for c in target.checks if isinstance(c, RoundTripSettings) and c.via == protocol)


def probe_messages(lab: Lab) -> list[mailbox.Message]:
    return [m for m in mailbox.snapshot(lab).values() if m.probe_header]


@pytest.fixture
def clean_inbox(lab: Lab) -> Iterator[None]:
    """Each test starts from an empty probe inbox with Postfix not holding mail."""
    lab.control("hold", "off")
    mailbox.clear(lab)
    yield
    lab.control("hold", "off")


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_a_reopened_readback_still_finds_a_probe_that_arrived_before_it(lab: Lab, clean_inbox: None,
                                                                             protocol: str) -> None:
    """The read-back connection drops while the probe is delivered and is reopened: the probe is not taken for
    mail that was already there (that would report a delivered message as not delivered)."""
    target = roundtrip_target(lab)
    check = via(target, protocol)
    key = KEY.reveal().encode()
    reader = (ImapReadback if protocol == "imap" else Pop3Readback)(ProbeContext(), target, check, key)
    try:
        await reader.open()
        header = new_probe(key, "test", target.name, protocol, timeout=20.0)
        raw, _ = build_message(header, lab.user, lab.user)
        mailbox.append(lab, raw)  # arrives while the connection is down
        await reader.open()  # what RoundTrip does after a ConnectionError
        found = await reader.poll(header.probe_id)
        assert found is not None and found.header.probe_id == header.probe_id
        await reader.delete(found)
    finally:
        reader.close()
    assert probe_messages(lab) == []


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_round_trip_delivers_and_cleans_up(lab: Lab, clean_inbox: None, protocol: str) -> None:
    """A round trip submits, finds the message, measures a plausible latency, and leaves nothing behind."""
    target = roundtrip_target(lab)
    result = await runner().execute(target, via(target, protocol))
    assert result.ok, f"{result.stage}/{result.reason}: {result.detail}\n" + "\n".join(result.transcript)
    assert result.via == protocol
    assert 0 < result.phases["delivery"] < 5.0
    assert result.queue_id and result.message_id and result.message_id.endswith("@mailmon.invalid>")
    assert probe_messages(lab) == []


async def test_round_trip_keeps_the_whole_reply_to_data(lab: Lab, clean_inbox: None) -> None:
    """The result keeps the reply to DATA (the one with the queue id), not QUIT's 221."""
    target = roundtrip_target(lab)
    result = await runner().execute(target, via(target, "imap"))
    assert result.ok, result.detail
    assert result.smtp_code == 250
    assert result.smtp_reply is not None and result.queue_id is not None
    assert result.smtp_reply.endswith(f"queued as {result.queue_id}")


async def test_imap_long_tail_uses_idle(lab: Lab, clean_inbox: None) -> None:
    """A message released after the fast-poll window is noticed through IDLE and timed from acceptance."""
    target = roundtrip_target(lab, timeout=20.0)
    lab.control("hold", "on")
    task = asyncio.create_task(runner().execute(target, via(target, "imap")))
    await asyncio.sleep(7.0)  # past the 5 s fast-poll window
    await asyncio.to_thread(lab.control, "hold", "off")
    result = await task
    assert result.ok, result.detail
    assert any(line.strip() == "C: IDLE" for line in result.transcript)
    assert 7.0 <= result.phases["delivery"] < 16.0
    assert probe_messages(lab) == []


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_held_mail_is_not_delivered_then_late_and_cleaned(lab: Lab, clean_inbox: None, protocol: str) -> None:
    """Accepted but held: delivery/not_delivered at the deadline; once released it is counted late and swept."""
    target = roundtrip_target(lab, timeout=6.0)
    lab.control("hold", "on")
    held = await runner().execute(target, via(target, protocol))
    assert (held.stage, held.reason) == ("delivery", "not_delivered")
    assert held.queue_id is not None and held.queue_id in held.detail
    assert held.duration_seconds < 6.0 + 1.0
    assert (held.late, held.swept) == ((), 0)
    lab.control("hold", "off")
    await _wait_until(lambda: len(probe_messages(lab)) == 1, "the released message to arrive")
    await _past_signed_deadline(held)
    after = await runner().execute(target, via(target, protocol))
    assert after.ok, after.detail
    # The late arrival and its deletion travel on the Result (the recorder counts them in the target's series).
    assert (after.late, after.swept) == (((protocol, 1),), 1)
    assert probe_messages(lab) == []


async def test_message_in_junk_folder_is_its_own_outcome(lab: Lab, clean_inbox: None) -> None:
    """A probe message that lands in Junk (here: put there directly) is reported as delivery/junk and deleted."""
    mailbox.create_folder(lab, "Junk")
    mailbox.clear(lab, "Junk")
    target = roundtrip_target(lab, timeout=6.0)
    check = via(target, "imap")
    lab.control("hold", "on")  # the submitted copy stays in the queue; a signed copy sits in Junk
    trip = RoundTrip(KEY, "test")
    seen: list[ProbeHeader] = []
    original = trip._submit

    async def submit_and_file_in_junk(ctx, target, submission, check, header):  # type: ignore[no-untyped-def]
        seen.append(header)
        raw, _ = build_message(header, lab.user, lab.user)
        await asyncio.to_thread(mailbox.append, lab, raw, "", "Junk")
        return await original(ctx, target, submission, check, header)

    trip._submit = submit_and_file_in_junk  # type: ignore[method-assign]
    result = await Runner("test", probes={**PROBES, "roundtrip": for_kind(RoundTripSettings, trip)}).execute(target,
                                                                                                          check)
    assert (result.stage, result.reason) == ("delivery", "junk"), result.detail
    assert "Junk" in result.detail
    assert [m for m in mailbox.snapshot(lab, "Junk").values() if m.probe_header] == []
    assert len(seen) == 1


async def _past_signed_deadline(result: Result) -> None:
    """Wait until the run that gave up on a message is surely past the deadline signed into it."""
    await asyncio.sleep(max(0.0, result.started_at + result.duration_seconds + 0.1 - time.time()))


async def _wait_until(predicate, what: str, limit: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await asyncio.to_thread(predicate):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def _ordinary_mail(rng: random.Random, index: int) -> tuple[bytes, str]:
    """One pre-existing message: plain, or a look-alike probe whose signature does not verify."""
    flags = rng.choice(["", "\\Seen", "\\Flagged", "\\Seen \\Flagged", "\\Answered"])
    if index % 10 == 0:
        # Shaped exactly like ours, ours by vantage and long past its deadline, signed with another key.
        fake = new_probe(b"some-other-key-entirely", "test", "lab", rng.choice(["imap", "pop3"]), 1.0, now=1.0)
        raw, _ = build_message(fake, "someone@lab.test", "probe@lab.test")
        return raw, flags
    if index % 10 == 1:
        # Built by the production code with our own key, then one digit of the MAC changed: the header parses as
        # ours (so the test follows the format if it changes) and only the signature check can reject it.
        key = KEY.reveal().encode()
        real = new_probe(key, "test", "lab", rng.choice(["imap", "pop3"]), 1.0, now=1.0)
        forged = dataclasses.replace(real, mac=real.mac[:-1] + ("0" if real.mac[-1] != "0" else "1"))
        assert parse_header(forged.value()) == forged and verify(key, forged.value()) is None
        raw, _ = build_message(forged, "someone@lab.test", "probe@lab.test")
        return raw, flags
    return (f"From: person{index}@lab.test\r\nTo: probe@lab.test\r\nSubject: ordinary {index}\r\n"
            f"Message-ID: <ordinary-{index}@lab.test>\r\n\r\nBody {index}\r\n".encode(), flags)


async def test_other_mail_is_never_touched(lab: Lab, clean_inbox: None) -> None:
    """500 ordinary and look-alike messages keep their UIDs and flags through 200 round trips; no probe is left."""
    rng = random.Random(20261128)
    mailbox.append_many(lab, [_ordinary_mail(rng, i) for i in range(500)])
    before = mailbox.snapshot(lab)
    assert len(before) == 500
    target = roundtrip_target(lab)
    run = runner()
    results: list[Result] = []
    for index in range(200):
        results.append(await run.execute(target, via(target, "imap" if index % 2 == 0 else "pop3")))
    failures = [f"{r.via}: {r.stage}/{r.reason} {r.detail}" for r in results if not r.ok]
    assert failures == []
    after = mailbox.snapshot(lab)
    assert after == before


async def test_two_vantages_sharing_a_mailbox_never_take_each_others_messages(lab: Lab, clean_inbox: None) -> None:
    """Two monitors with the same key and mailbox, running at once, each find their own message every time."""
    target = roundtrip_target(lab)
    east, west = runner("east"), runner("west")
    for _ in range(10):
        results = await asyncio.gather(
            east.execute(target, via(target, "imap")), west.execute(target, via(target, "imap")),
            east.execute(target, via(target, "pop3")), west.execute(target, via(target, "pop3")))
        assert [r.ok for r in results] == [True] * 4, [f"{r.vantage}/{r.via}: {r.detail}" for r in results]
    assert probe_messages(lab) == []


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_a_failing_round_trip_still_sweeps_stale_probes(lab: Lab, clean_inbox: None, protocol: str) -> None:
    """Round trips that keep failing (here: a held queue) still delete this vantage's stale probe messages, so they
    never pile up while the failure lasts (issue 11 item 2)."""
    stale = new_probe(KEY.reveal().encode(), "test", "lab", protocol, 1.0, now=time.time() - 120)
    raw, _ = build_message(stale, lab.user, lab.user)
    mailbox.append(lab, raw)
    target = roundtrip_target(lab, timeout=6.0)
    lab.control("hold", "on")
    held = await runner().execute(target, via(target, protocol))
    assert (held.stage, held.reason) == ("delivery", "not_delivered"), held.detail
    assert held.swept == 1
    assert [m for m in probe_messages(lab) if m.probe_header and stale.probe_id in m.probe_header] == []
