"""Runs one check with a hard deadline, turns whatever happened into a classified Result, and records it.

The deadline is owned here, outside the protocol libraries: the probe runs as a child task, and when
time is up the runner records where the probe was, cancels it and moves on, even if a library is slow
to honour the cancellation (aioimaplib can hang past `wait_for` on a TLS mismatch).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from monitor.config import CheckSettings, Target
from monitor.durations import format_duration
from monitor.errors import ProbeError, classify
from monitor.probes import PROBES, Probe
from monitor.result import ProbeContext, Result
from monitor.steps import Reason, Stage
from monitor.tls import handshake_observer

__all__ = ["Records", "Runner"]

log = logging.getLogger(__name__)



class Records(Protocol):
    """What the runner hands each Result to: the monitor's recorder (monitor/recorder.py)."""

    def record(self, result: Result) -> None: ...

# How long a cancelled probe may take to unwind before we stop waiting for it.
_CANCEL_GRACE = 1.0


class Runner:
    """Runs checks for one vantage; `run` hands each Result to the one recorder (verdict, metrics, log, history)."""

    def __init__(self, vantage: str, recorder: Records | None = None, probes: dict[str, Probe] | None = None) -> None:
        self.vantage = vantage
        self.recorder = recorder
        self.probes = PROBES if probes is None else probes

    async def run(self, target: Target, check: CheckSettings) -> Result:
        """Execute the check and record its Result (the scheduler's entry point)."""
        result = await self.execute(target, check)
        if self.recorder is not None:
            try:
                self.recorder.record(result)
            except Exception:  # a recording bug must not stop the schedule
                log.exception("recording the result of %s/%s failed", target.name, check.key)
        return result

    async def execute(self, target: Target, check: CheckSettings) -> Result:
        """Run the check once within its timeout and classify the outcome; never raises (but cancellation)."""
        ctx = ProbeContext()
        ctx.deadline = ctx.started + check.timeout
        started_at = time.time()
        probe = self.probes[check.name]
        task = asyncio.create_task(_observed(probe, ctx, target, check), name=f"probe {target.name}/{check.key}")
        try:
            done, _ = await asyncio.wait({task}, timeout=check.timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        stage: Stage | None = None
        reason: Reason | None = None
        detail = ""
        if not done:
            stage, reason = ctx.stage, "timeout"
            detail = f"no progress within {format_duration(check.timeout)} (during {ctx.current_step})"
            if stage == "delivery":
                # A round trip whose deadline passed while it waited for its message: the probe was not found in
                # time, which has one name however the wait ended (docs/roundtrip.md).
                reason = "not_delivered"
                detail = f"not visible within the round trip's timeout of {format_duration(check.timeout)}"
            ctx.done()
            task.cancel()
            finished, _ = await asyncio.wait({task}, timeout=_CANCEL_GRACE)
            if not finished:
                log.warning("probe %s/%s did not stop within %ss of cancellation",
                            target.name, check.key, _CANCEL_GRACE)
        else:
            # A probe that ended cancelled on its own (not by us) is a failure of its step, not a crash.
            exc = asyncio.CancelledError("the probe was cancelled") if task.cancelled() else task.exception()
            failed_at = ctx.stage
            ctx.done()
            if exc is not None:
                stage, reason = classify(exc, failed_at)
                detail = exc.detail if isinstance(exc, ProbeError) else _describe(exc)
                if isinstance(exc, ProbeError) and exc.smtp_code is not None:
                    ctx.smtp_code = exc.smtp_code
                if reason == "internal" and not isinstance(exc, ProbeError):
                    # A ProbeError says what went wrong in its detail (an unreadable token file); only a
                    # crash deserves a traceback.
                    log.error("probe %s/%s raised an unexpected error", target.name, check.key, exc_info=exc)
        if stage is not None:
            ctx.note(f"failed at {stage}: {reason}: {detail}")
        return Result(
            target=target.name, check=check.label, vantage=self.vantage, ok=stage is None,
            started_at=started_at, duration_seconds=ctx.elapsed(), phases=dict(ctx.phases),
            stage=stage, reason=reason, detail=detail, smtp_code=ctx.smtp_code, smtp_reply=ctx.smtp_reply,
            tls=ctx.tls, transcript=ctx.transcript, via=check.via, queue_id=ctx.queue_id, message_id=ctx.message_id,
            quota=ctx.quota, ip_family=check.ip_family, auth_results=ctx.auth_results, hops=ctx.hops,
            hop_delays=ctx.hop_delays, late=tuple(ctx.late.items()), swept=ctx.swept, mx_hosts=ctx.mx_hosts,
        )


async def _observed(probe: Probe, ctx: ProbeContext, target: Target, check: CheckSettings) -> None:
    """Run the probe with this task's TLS handshakes reported to its context."""
    handshake_observer.set(ctx.on_handshake)  # a task has its own context: this stays with this probe
    await probe(ctx, target, check)


def _describe(exc: BaseException) -> str:
    """The error as one line, with the error it was raised from when a library wrapped it (aiosmtplib's
    "Error connecting to localhost on port None:" says nothing; the SSLEOFError under it does)."""
    text = _one(exc)
    seen = [exc]
    while (cause := seen[-1].__cause__) is not None and all(cause is not s for s in seen):
        seen.append(cause)
    return text if len(seen) == 1 else f"{text} (from {_one(seen[-1])})"


def _one(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
