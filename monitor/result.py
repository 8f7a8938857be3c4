"""What one check run produced (`Result`), and the per-run context a probe writes into (`ProbeContext`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from monitor.steps import STEP_STAGE, Reason, Stage, Step

__all__ = ["ProbeContext", "Result", "TlsFacts"]

# A transcript is for humans reading one probe; a hostile server must not be able to grow it without bound.
_TRANSCRIPT_MAX_LINES = 200
_TRANSCRIPT_MAX_LINE = 300

@dataclass
class TlsFacts:
    """What the TLS handshake showed: protocol version, cipher, and the peer certificate's expiry."""

    version: str | None = None
    cipher: str | None = None
    cert_not_after: float | None = None


@dataclass
class Result:
    """The outcome of one check against one target: the unit everything downstream consumes."""

    target: str
    check: str
    vantage: str
    ok: bool
    started_at: float
    duration_seconds: float
    phases: dict[str, float]
    stage: Stage | None = None
    reason: Reason | None = None
    detail: str = ""
    smtp_code: int | None = None
    smtp_reply: str | None = None
    tls: TlsFacts = field(default_factory=TlsFacts)
    transcript: list[str] = field(default_factory=list)
    via: str | None = None
    queue_id: str | None = None
    message_id: str | None = None
    # IMAP GETQUOTAROOT of the checked mailbox (RFC 9208): resource -> (usage, limit), STORAGE in KiB. A state of
    # the mailbox for metrics and the summary; the transcript keeps the server's words for the history.
    quota: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The address family the check was bound to (`ip_family`: ipv4, ipv6); None when it used any.
    ip_family: str | None = None
    # Round trips: the receiver's Authentication-Results {method: result} of the delivered probe, its Received
    # headers (None: headers not read) and each hop's delay, oldest first (monitor/authres.py).
    auth_results: dict[str, str] = field(default_factory=dict)
    hops: int | None = None
    hop_delays: list[float] = field(default_factory=list)
    # Round trips: probe messages of this target the run's sweep found late ((via, count) pairs) and deleted. They
    # count in the target's series (mailmon_roundtrip_late_total, _swept_total) when the Result is recorded; not
    # part of the JSON shape or the history row. A tuple: the empty one is shared, and a Result lives until its
    # check's next run (15,000 of them at 5,000 targets), so no dict each for the collector to walk.
    late: tuple[tuple[str, int], ...] = ()
    swept: int = 0
    # MX targets: each MX host's outcome in this run, (preference, name) -> 1 passed / 0 failed; None for other
    # checks (mailmon_mx_host_up, monitor/mx.py).
    mx_hosts: dict[tuple[int, str], float] | None = None

    @property
    def key(self) -> str:
        """Which of the target's checks this is: `CheckSettings.key` (`roundtrip:imap` for a round trip,
        `imap@ipv6` for a check bound to an address family)."""
        key = f"{self.check}:{self.via}" if self.via else self.check
        return f"{key}@{self.ip_family}" if self.ip_family else key

    def as_json(self) -> dict[str, Any]:
        """The public JSON shape (`mailmon check --json`); field names are an interface."""
        return {
            "target": self.target,
            "check": self.check,
            "via": self.via,
            "vantage": self.vantage,
            "ok": self.ok,
            "stage": self.stage,
            "reason": self.reason,
            "phases": {name: round(seconds, 6) for name, seconds in self.phases.items()},
            "duration_seconds": round(self.duration_seconds, 6),
            "smtp_code": self.smtp_code,
            "smtp_reply": self.smtp_reply,
            "tls_version": self.tls.version,
            "tls_cert_not_after": self.tls.cert_not_after,
            "queue_id": self.queue_id,
            "message_id": self.message_id,
            "detail": self.detail,
            "started_at": self.started_at,
            **self._issue16_fields(),
        }

    def _issue16_fields(self) -> dict[str, Any]:
        """Fields only results of newer settings have (ip_family, a round trip's receiver judgement): present only
        when set, so the history (schema 1, whose rows mirror the fields above) still holds every field of the
        other results. History keeps ip_family in its `check` column (`imap@ipv6`) and the Authentication-Results
        and hops in the transcript line."""
        extra: dict[str, Any] = {}
        if self.ip_family is not None:
            extra["ip_family"] = self.ip_family
        if self.hops is not None:
            extra.update(auth_results=dict(self.auth_results), hops=self.hops,
                         hop_delays=[round(d, 3) for d in self.hop_delays])
        return extra


class ProbeContext:
    """Mutable state of one probe run: the step clock, the transcript and the facts learnt on the way.

    Probes call `step(name)` before each protocol step; the runner reads `current_step` to know where a
    deadline or an exception struck. Secrets must never be passed to `say`/`heard`: callers redact first.
    """

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self._clock = clock
        self.started = clock()
        self.phases: dict[str, float] = {}
        # Before the first step() a failure still needs a stage; nothing is timed until a step starts.
        self.current_step: Step | Literal["done"] = "connect"
        self._timing = False
        self._step_started = self.started
        self.transcript: list[str] = []
        self.tls = TlsFacts()
        self.smtp_code: int | None = None
        self.smtp_reply: str | None = None
        self.queue_id: str | None = None
        self.message_id: str | None = None
        self.quota: dict[str, tuple[int, int]] = {}
        self.auth_results: dict[str, str] = {}
        self.hops: int | None = None
        self.hop_delays: list[float] = []
        # Counts and outcomes the runner copies onto the Result (see there): round-trip sweeps, MX hosts.
        self.late: dict[str, int] = {}
        self.swept = 0
        self.mx_hosts: dict[tuple[int, str], float] | None = None
        # With implicit TLS the library reads the greeting in the same call as the handshake; when the
        # handshake ends we switch to this step so TLS and greeting are timed apart.
        self.step_after_handshake: Step | None = None
        # When the runner gives up on this probe (the check's deadline, in `clock` time): steps that wait on a
        # third party of their own (a token endpoint) bound their requests by it.
        self.deadline: float | None = None

    def on_handshake(self, facts: TlsFacts) -> None:
        """Called by the TLS layer when a handshake of this probe completes."""
        self.tls = facts
        self.note(f"TLS established: {facts.version} {facts.cipher}")
        if self.step_after_handshake is not None and self.current_step == "tls":
            self.step(self.step_after_handshake)
        self.step_after_handshake = None

    def step(self, name: Step) -> None:
        """Close the running step (recording its time) and start `name`."""
        self._close_step()
        self.current_step = name
        self._step_started = self._clock()

    def done(self) -> None:
        """Close the last step; the probe succeeded."""
        self._close_step()
        self.current_step = "done"

    def _close_step(self) -> None:
        if not self._timing:
            self._timing = True
            self._step_started = self._clock()
            return
        if self.current_step != "done":
            now = self._clock()
            self.phases[self.current_step] = self.phases.get(self.current_step, 0.0) + (now - self._step_started)
            self._step_started = now

    def elapsed(self) -> float:
        return float(self._clock() - self.started)

    def time_left(self, default: float = 15.0) -> float:
        """Seconds until the check's deadline (`default` when no deadline was set), never below zero."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - float(self._clock()))

    @property
    def stage(self) -> Stage:
        """The failure stage the current step belongs to (monitor/steps.py); after `done`, the session's end."""
        return "quit" if self.current_step == "done" else STEP_STAGE[self.current_step]

    def say(self, line: str) -> None:
        """Record what the client sent (already redacted)."""
        self._record("C: " + line)

    def heard(self, line: str) -> None:
        """Record what the server sent."""
        self._record("S: " + line)

    def note(self, line: str) -> None:
        """Record an event that is not protocol text (a TLS handshake, a timing)."""
        self._record("-- " + line)

    def _record(self, line: str) -> None:
        if len(self.transcript) < _TRANSCRIPT_MAX_LINES:
            if len(line) > _TRANSCRIPT_MAX_LINE:
                line = line[:_TRANSCRIPT_MAX_LINE] + f"... [{len(line)} chars]"
            self.transcript.append(line)
        elif len(self.transcript) == _TRANSCRIPT_MAX_LINES:
            self.transcript.append("-- transcript truncated")
