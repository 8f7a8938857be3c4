"""Why a round trip's probe message never arrived, when the servers can say: the read-back could not look (a POP3
LOGIN-DELAY), the message bounced to its sender, or the mailbox is at its quota.

Each function returns when it has nothing to tell and raises the round trip's `ProbeError` when it has; the round trip
(`roundtrip.py`) asks them in turn after the junk folders, and says `delivery/not_delivered` when none knows more.
"""

from __future__ import annotations

import logging
import time

from monitor.bounces import Bounce, parse_dsn
from monitor.config import ImapSettings, RoundTripSettings, Target
from monitor.errors import ProbeError
from monitor.probe_message import ProbeHeader
from monitor.probes.pop3 import login_delay_advice
from monitor.probes.readback import Found, Readback
from monitor.probes.readback_imap import ImapReadback
from monitor.probes.readback_pop3 import Pop3Readback
from monitor.result import ProbeContext
from monitor.steps import Reason

__all__ = ["bounced", "never_looked", "over_quota", "refused_for_quota"]

log = logging.getLogger(__name__)


def over_quota(quota: dict[str, tuple[int, int]], size: int) -> tuple[str, tuple[int, int]] | None:
    """The resource that leaves no room for one more message of `size` bytes, or None.

    MESSAGE counts messages; STORAGE counts KiB (RFC 9208), so the probe's own size is added to it."""
    for name, (usage, limit) in sorted(quota.items()):
        if name == "MESSAGE" and usage + 1 > limit:
            return name, (usage, limit)
        if name == "STORAGE" and usage + (size + 1023) // 1024 > limit:
            return name, (usage, limit)
    return None


def never_looked(reader: Readback, check: RoundTripSettings) -> None:
    """A POP3 read-back whose server's LOGIN-DELAY allowed no look before the deadline did not see the message
    missing: it could not look. Say that, and what would work, rather than `not_delivered`."""
    if isinstance(reader, Pop3Readback) and reader.login_delay and reader.looks == 0:
        delay = reader.login_delay
        raise ProbeError("fetch", "login_delay", (
            f"the POP3 server allows one login per {delay:.0f}s to this mailbox (CAPA LOGIN-DELAY {delay:.0f}), "
            f"and none was allowed between the submission and this round trip's deadline "
            f"(timeout {check.timeout:.0f}s, interval {check.interval:.0f}s). {login_delay_advice(delay)}"))


async def bounced(ctx: ProbeContext, submitter: Target, header: ProbeHeader, key: bytes) -> None:
    """A probe that never arrived may have bounced to its sender: the submitting target's mailbox (over its imap
    block) holds the DSN, which says why (`5.2.2`: the recipient's mailbox is full). The DSN is deleted."""
    imap = submitter.first(ImapSettings)
    if imap is None:
        return
    sender_ctx = ProbeContext()
    mailbox = ImapReadback(sender_ctx, submitter, imap, key)
    bounce: Bounce | None = None
    try:
        await mailbox.open()
        # TEXT, not BODY: the probe's header is in the DSN's returned message/rfc822 part, which Dovecot's BODY
        # search leaves out.
        for uid in await mailbox._search("TEXT", f'"{header.probe_id}"'):
            response = await mailbox.session.watch(mailbox._protocol.fetch(str(uid), "(BODY.PEEK[])", by_uid=True))
            raw = next((bytes(line) for line in response.lines if isinstance(line, bytearray)), b"")
            found = parse_dsn(raw, key)
            if found is not None and found.probe.probe_id == header.probe_id:
                bounce = found
                await mailbox.delete(Found(str(uid), found.probe, time.perf_counter(), mailbox.folder))
                break
    except Exception as exc:  # the sender's mailbox is a clue, never a failure of its own
        log.debug("looking for a bounce in %s: %s", submitter.name, exc)
    finally:
        mailbox.close()
    if bounce is None:
        return
    reason: Reason = "mailbox_full" if bounce.status[2:].startswith("2.2") else "not_delivered"
    raise ProbeError("delivery", reason, f"accepted by the server (queue id {ctx.queue_id or 'unknown'}), then "
                                         f"bounced to the sender ({submitter.name}): Status {bounce.status}, "
                                         f"{bounce.diagnostic or 'no diagnostic'}")


async def refused_for_quota(ctx: ProbeContext, reader: Readback, size: int, accepted_at: float) -> None:
    """Raise `delivery/mailbox_full` when the read-back mailbox has no room for the probe.

    A server that checks quota only at delivery (Postfix without a quota policy in front of Dovecot's LMTP)
    accepts the message with `250` and bounces it afterwards; the bounce goes to the sender, which for a round
    trip is usually this same full mailbox, so no DSN can come back. The mailbox's own quota then says why."""
    try:
        quota = await reader.quota()
    except Exception as exc:  # no quota to tell: the round trip stays not_delivered
        log.debug("quota after a missing probe: %s", exc)
        return
    full = over_quota(quota, size)
    if full is None:
        return
    ctx.quota = quota
    name, (usage, limit) = full
    raise ProbeError("delivery", "mailbox_full",
                     f"accepted by the server (queue id {ctx.queue_id or 'unknown'}) but not delivered: the "
                     f"mailbox is at its quota ({name} {usage} of {limit}), so the server refused the probe at "
                     f"delivery (after {time.perf_counter() - accepted_at:.1f}s)")
