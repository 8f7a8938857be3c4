"""The `roundtrip` check: submit a signed probe message over SMTP and find it again over IMAP or POP3.

Order of work: open the read-back session first (so it is ready and knows what was already in the
mailbox), submit, then look for the message. Right after the server accepts the message we poll with
short, growing intervals (Dovecot delays IDLE notifications by 0.5 s on purpose, so IDLE alone would
report most deliveries half a second late), then switch to IDLE (IMAP) or slow polls (POP3) for the
long tail. The latency reported is from the final `250` of DATA to the poll that saw the message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import aiosmtplib
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from monitor.authres import read_headers
from monitor.config import RoundTripSettings, Secret, SmtpSettings, Target
from monitor.errors import ProbeError, classify
from monitor.probe_message import ProbeHeader, build_message, new_probe
from monitor.probes.readback import Found, Readback, SweepReport
from monitor.probes.readback_imap import ImapReadback
from monitor.probes.readback_pop3 import Pop3Readback
from monitor.probes.smtp import quit_session, record_reply, smtp_session
from monitor.probes.undelivered import bounced, never_looked, refused_for_quota
from monitor.queue_id import parse_queue_id
from monitor.result import ProbeContext
from monitor.steps import AT_STAGE, TOKEN, Kind, Stage, When, declare, run

__all__ = ["RoundTrip"]

# The steps of the `roundtrip` check in order (monitor/steps.py): the read-back session first (timed as one step),
# the submission's steps, the wait, the cleanup. The submission's TLS follows the target's `smtp` settings, not this
# check's `tls_mode` (the read-back's), so the series of both TLS variants exist from the start.
_SUBMISSION_TLS = When("implicit TLS submission", lambda check: True)
_SUBMISSION_STARTTLS = When("STARTTLS submission", lambda check: True)
STEPS = declare(Kind(
    "roundtrip", steps=run(
        "readback_open", "dns", "connect", (_SUBMISSION_TLS, ("tls",)), "banner", "ehlo",
        (_SUBMISSION_STARTTLS, ("starttls", "ehlo_tls")), (TOKEN, ("token",)), "auth", "mail_from", "rcpt", "data",
        "quit", "delivery", "cleanup",
        # Timed on every delivered run, but its series appears with the first one.
        (When("after a delivery; no series before", lambda check: False), ("sweep",))),
    # The submission is the send side, the read-back the receive side, the wait between them delivery.
    side="send", ok_side="delivery", stage_side={"fetch": "receive", "delivery": "delivery", "cleanup": "delivery"},
    # The read-back can fail in every way a login can; the wait ends delivered, late or in a junk folder.
    extra_failures=(*(("fetch", reason) for reason in AT_STAGE["connect"] + AT_STAGE["tls"] + AT_STAGE["auth"]),
                    ("delivery", "not_delivered"), ("delivery", "junk"),
                    # Refused at delivery for quota (read-back's GETQUOTAROOT, or the DSN at a submit_via sender).
                    ("delivery", "mailbox_full"),
                    # A POP3 read-back's RFC 2449/3206 codes: a locked mailbox, the server's LOGIN-DELAY.
                    ("fetch", "mailbox_busy"), ("fetch", "login_delay"))))

log = logging.getLogger(__name__)
T = TypeVar("T")

# Fast polling right after acceptance: 1 ms apart at first (loopback delivery takes a few ms), growing
# by 20 % a poll to at most 250 ms apart, for 5 s: about 40 polls, most of them in the first second.
_FAST_WINDOW = 5.0
_FAST_FIRST = 0.001
_FAST_GROWTH = 1.2
_FAST_MAX = 0.25
# Time kept back from the deadline to look in junk folders, delete the message and sweep.
_RESERVE_MAX = 5.0
_RESERVE_SHARE = 0.2
# Reasons worth another try when opening the read-back session; never used for the submission.
_TRANSIENT = frozenset({"reset", "refused", "unreachable"})


def _transient(exc: BaseException) -> bool:
    return not isinstance(exc, ProbeError) and classify(exc, "fetch")[1] in _TRANSIENT


class RoundTrip:
    """The round-trip probe; one instance per probe table, holding the probe key, the targets and the POP3 cache.

    What a run's sweep found (late arrivals, deleted leftovers) goes on its context, so onto the Result: a probe
    never touches metrics (monitor/probes/__init__.py)."""

    def __init__(self, key: Secret, vantage: str, targets: dict[str, Target] | None = None) -> None:
        self.key = key
        # Every target by name, for round trips that submit through another target (`submit_via`).
        self.targets = targets or {}
        self.vantage = vantage
        # POP3 UIDLs known not to be probe messages, per (host, port, user): lives as long as this probe table.
        self.known_plain: dict[tuple[str, int, str], set[str]] = {}

    def reader(self, ctx: ProbeContext, target: Target, check: RoundTripSettings) -> Readback:
        key = self.key.reveal().encode()
        if check.via == "imap":
            return ImapReadback(ctx, target, check, key)
        user = target.auth.username if target.auth else ""
        known = self.known_plain.setdefault((target.host, check.port, user), set())
        reader = Pop3Readback(ctx, target, check, key, known)
        reader.vantage = self.vantage  # with a LOGIN-DELAY its looks sweep too: no other login may
        return reader

    async def __call__(self, ctx: ProbeContext, target: Target, check: RoundTripSettings) -> None:
        # A loop between providers: submit through another target, read back here.
        submitter = self.targets.get(check.submit_via, target) if check.submit_via else target
        submission = submitter.first(SmtpSettings)
        assert submission is not None  # the config loader proved it (link_submitters, load_roundtrip)
        started = time.perf_counter()
        reserve = min(_RESERVE_MAX, check.timeout * _RESERVE_SHARE)
        give_up = started + check.timeout - reserve

        reader_ctx = ProbeContext()
        reader = self.reader(reader_ctx, target, check)
        ctx.step("readback_open")
        opened = False
        try:
            await self._open(reader)
            opened = True
            ctx.note(f"{check.via} read-back session ready")
            # The signed deadline is when this run stops looking: from then on the message is the sweeper's.
            header = new_probe(self.key.reveal().encode(), self.vantage, target.name, check.via,
                               max(0.0, give_up - time.perf_counter()))
            if submitter is not target:
                ctx.note(f"submitting through target {submitter.name} ({submitter.host}:{submission.port})")
            accepted_at, size = await self._submit(ctx, submitter, submission, check, header)
            ctx.step("delivery")
            found = await self._wait(reader, header, give_up)
            if found is None:
                never_looked(reader, check)
                folder = await self._readback(reader.find_in_junk(header.probe_id))
                if folder is not None:
                    raise ProbeError("delivery", "junk", f"the probe message landed in {folder!r}")
                if submitter is not target:
                    await bounced(ctx, submitter, header, self.key.reveal().encode())
                await refused_for_quota(ctx, reader, size, accepted_at)
                raise ProbeError("delivery", "not_delivered",
                                 f"accepted by the server (queue id {ctx.queue_id or 'unknown'}) but not visible "
                                 f"over {check.via} after {time.perf_counter() - accepted_at:.1f}s")
            ctx.step("cleanup")
            # The step clock ran from after QUIT; the latency is from acceptance to the poll that saw it.
            ctx.phases["delivery"] = max(0.0, found.seen_at - accepted_at)
            ctx.note(f"visible over {check.via} after {ctx.phases['delivery'] * 1000:.1f} ms")
            await self._judged(ctx, reader, found)
            await self._readback(reader.delete(found), stage="cleanup")
            ctx.step("sweep")
            await self._sweep(ctx, reader, target)
        except ProbeError:
            if opened:
                # A round trip that keeps failing (held queue, a read-back that cannot log in again) must not let
                # probe messages pile up: the sweep runs after a failure too, in the time kept back for it.
                await self._sweep(ctx, reader, target)
            raise
        finally:
            reader.close()
            ctx.transcript.extend("   " + line for line in reader_ctx.transcript[-20:])

    async def _open(self, reader: Readback) -> None:
        """Log in for the read-back, retrying only connection-level hiccups (never the submission)."""
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(3), reraise=True,
                                               wait=wait_exponential(multiplier=0.1, max=1.0),
                                               retry=retry_if_exception(_transient)):
                with attempt:
                    await reader.open()
        except ProbeError as exc:
            if exc.stage == "token":
                raise  # the identity provider failed, not the read-back server: keep saying so
            if exc.stage in ("auth", "tls") or exc.stage == "fetch":
                raise ProbeError("fetch", exc.reason, f"read-back: {exc.detail}") from exc
            raise ProbeError("fetch", exc.reason, f"read-back {exc.stage}: {exc.detail}") from exc
        except Exception as exc:
            raise ProbeError("fetch", classify(exc, "fetch")[1], f"read-back: {exc}") from exc

    async def _readback(self, awaitable: Awaitable[T], stage: Stage = "fetch") -> T:
        """Await a read-back step, reporting its failure under `stage` (the submission already succeeded)."""
        try:
            return await awaitable
        except ProbeError as exc:
            raise ProbeError(stage, exc.reason, f"read-back: {exc.detail}") from exc
        except Exception as exc:
            raise ProbeError(stage, classify(exc, stage)[1], f"read-back: {exc}") from exc

    async def _submit(self, ctx: ProbeContext, target: Target, submission: SmtpSettings, check: RoundTripSettings,
                      header: ProbeHeader) -> tuple[float, int]:
        """Send the probe message; returns when the server accepted it (perf_counter time) and its size."""
        message, message_id = build_message(header, check.sender or check.recipient, check.recipient)
        ctx.message_id = message_id
        client = await smtp_session(ctx, target, submission)
        try:
            ctx.step("mail_from")
            ctx.say(f"MAIL FROM:<{check.sender}>")
            record_reply(ctx, await client.mail(check.sender or check.recipient))
            ctx.step("rcpt")
            ctx.say(f"RCPT TO:<{check.recipient}>")
            record_reply(ctx, await client.rcpt(check.recipient))
            ctx.step("data")
            ctx.say(f"DATA ({len(message)} bytes, Message-ID {message_id})")
            response = await client.data(message)
            accepted_at = time.perf_counter()
            record_reply(ctx, response)
            ctx.queue_id = parse_queue_id(response.message)
            await quit_session(ctx, client)
            # The reply to DATA, not QUIT's `221`, is the one support needs: whole, whatever the MTA's format
            # (the transcript cuts long lines; this field does not).
            ctx.smtp_code, ctx.smtp_reply = response.code, f"{response.code} {response.message}"
        except aiosmtplib.SMTPResponseException as exc:
            record_reply(ctx, aiosmtplib.SMTPResponse(exc.code, exc.message))
            raise
        finally:
            client.close()
        return accepted_at, len(message)

    async def _judged(self, ctx: ProbeContext, reader: Readback, found: Found) -> None:
        """Read the delivered probe's Authentication-Results and Received chain; never fails the round trip."""
        try:
            block = await reader.header_block(found)
        except Exception as exc:
            log.debug("header block of the probe: %s", exc)
            return
        if block is None:
            return
        results, hops, delays = read_headers(block, found.header.sent_ms / 1000)
        ctx.auth_results, ctx.hops, ctx.hop_delays = results, hops, delays
        said = " ".join(f"{method}={value}" for method, value in sorted(results.items())) or "none"
        ctx.note(f"Authentication-Results: {said}; {hops} Received hops, delays "
                 + ", ".join(f"{d:.0f}s" for d in delays))

    async def _wait(self, reader: Readback, header: ProbeHeader, give_up: float) -> Found | None:
        """Poll fast right after acceptance, then wait for pushes, until found or `give_up`."""
        if _FAST_WINDOW > 0:
            found = await self._fast(reader, header, min(give_up, time.perf_counter() + _FAST_WINDOW))
            if found is not None:
                return found
        while (left := give_up - time.perf_counter()) > 0:
            await self._readback(reader.wait_push(left))
            found = await self._poll(reader, header.probe_id)
            if found is not None:
                return found
        return None

    async def _fast(self, reader: Readback, header: ProbeHeader, fast_until: float) -> Found | None:
        """Poll at short, growing intervals until found or `fast_until`."""
        fast = AsyncRetrying(
            stop=stop_after_delay(max(0.0, fast_until - time.perf_counter())),
            wait=wait_exponential(multiplier=_FAST_FIRST, exp_base=_FAST_GROWTH, max=_FAST_MAX),
            retry=retry_if_result(lambda result: result is None),
            retry_error_callback=lambda state: None)  # not seen in the fast window: go on below
        found: Found | None = await fast(self._poll, reader, header.probe_id)
        return found

    async def _poll(self, reader: Readback, probe_id: str) -> Found | None:
        """One look; a dropped read-back connection is reopened once rather than failing the round trip."""
        try:
            return await reader.poll(probe_id)
        except ConnectionError:
            await self._open(reader)
            return await self._readback(reader.poll(probe_id))
        except ProbeError as exc:
            raise ProbeError("fetch", exc.reason, f"read-back: {exc.detail}") from exc
        except Exception as exc:  # a read-back command that failed otherwise (a timeout): the reader's, not delivery's
            raise ProbeError("fetch", classify(exc, "fetch")[1], f"read-back: {exc}") from exc

    async def _sweep(self, ctx: ProbeContext, reader: Readback, target: Target) -> None:
        """Delete our stale probe messages (late arrivals, crash leftovers); never fails the round trip."""
        try:
            report: SweepReport = await reader.sweep(self.vantage, int(time.time() * 1000))
        except Exception as exc:
            log.warning("sweep of %s failed: %s", target.name, exc)
            return
        ctx.swept += report.deleted
        for late in report.late:
            if late.target == target.name:
                ctx.late[late.via] = ctx.late.get(late.via, 0) + 1
