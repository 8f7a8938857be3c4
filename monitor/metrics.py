"""Every Prometheus metric mailmon exports, defined once, and the only place their values are set.

Series for every configured (target, check) are created when the target is added, so a check that has
never failed still shows `mailmon_check_failures_total 0` for each way it could fail, and a missing
series never reads as "healthy". Gauges start at 0: success 0 means "not shown to work yet", and a
timestamp or certificate expiry of 0 means "unknown".
"""

from __future__ import annotations

import contextlib
import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from monitor import __version__
from monitor.config import CheckSettings, Target
from monitor.result import PHASE_STAGE, Result
from monitor.verdict import VERDICTS

__all__ = ["Metrics", "expected_phases", "possible_failures"]

# The `_created` twin of every counter and histogram doubles the samples a scrape renders (measured: half the
# render time at 5,000 targets, bench/metrics_render.py) and Prometheus does not use it from the text format.
disable_created_metrics()  # type: ignore[no-untyped-call]

# `via` is the read-back protocol of a round trip and empty for the other checks (PromQL treats it as absent).
_TARGET = ("vantage", "target", "check", "via")
# Submit-to-visible latency: loopback delivery takes milliseconds, a queue backlog minutes.
ROUNDTRIP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Which (stage, reason) pairs a check can produce: the stages its steps pass through, and the reasons
# that can happen at each. Used to pre-create the failure counters, so it must cover what the probes
# and `errors.classify` can return.
_ANYWHERE = ("timeout", "reset", "protocol", "internal")
_AT_STAGE = {
    "dns": ("unreachable",),
    "connect": ("refused", "unreachable"),
    "tls": ("tls_handshake", "cert_invalid", "cert_expired", "reply_4xx", "reply_5xx"),
    "auth": ("auth_rejected", "reply_4xx", "reply_5xx"),
}
_REPLIES = ("reply_4xx", "reply_5xx")


def expected_phases(check: CheckSettings) -> tuple[str, ...]:
    """The steps a successful run of `check` times, in order."""
    tls_steps: tuple[str, ...]
    if check.name == "smtp":
        tls_steps = ("starttls", "ehlo_tls") if check.tls_mode == "starttls" else ()
        steps = ("dns", "connect") + (("tls",) if check.tls_mode == "implicit" else ()) + ("banner", "ehlo") + tls_steps
        steps += ("auth",) if check.use_auth else ()
        steps += ("mail_from", "rcpt", "rset") if check.mail_from else ()
        return (*steps, "quit")
    if check.name == "imap":
        tls_steps = ("starttls",) if check.tls_mode == "starttls" else ()
        head = ("dns", "connect") + (("tls",) if check.tls_mode == "implicit" else ())
        return (*head, "greeting", "capability", *tls_steps, "login", "select", "logout")
    if check.name == "pop3":
        tls_steps = ("stls",) if check.tls_mode == "starttls" else ()
        head = ("dns", "connect") + (("tls",) if check.tls_mode == "implicit" else ())
        return (*head, "greeting", *tls_steps, "user", "pass", "stat", "quit")
    if check.name == "roundtrip":
        # Read-back session first (timed as one step), then the submission's own steps, then the wait.
        return ("readback_open", "dns", "connect", "tls", "banner", "ehlo", "starttls", "ehlo_tls", "auth",
                "mail_from", "rcpt", "data", "quit", "delivery", "cleanup")
    raise ValueError(f"unknown check {check.name!r}")


def possible_failures(check: CheckSettings) -> list[tuple[str, str]]:
    """Every (stage, reason) this check can report."""
    stages: list[str] = []
    for step in expected_phases(check):
        stage = PHASE_STAGE.get(step, step)
        if stage not in stages:
            stages.append(stage)
    if check.tls_mode != "none" and "tls" not in stages:
        stages.append("tls")
    pairs: list[tuple[str, str]] = []
    for stage in stages:
        reasons = _AT_STAGE.get(stage, _REPLIES if stage not in ("dns", "connect") else ())
        pairs.extend((stage, reason) for reason in _ANYWHERE + tuple(r for r in reasons if r not in _ANYWHERE))
    if check.name == "roundtrip":
        # The read-back can fail in every way a login can; the wait ends delivered, late or in a junk folder.
        extra = [("fetch", r) for r in _AT_STAGE["connect"] + _AT_STAGE["tls"] + _AT_STAGE["auth"]]
        extra += [("delivery", "not_delivered"), ("delivery", "junk")]
        pairs += [pair for pair in dict.fromkeys(extra) if pair not in pairs]
    return pairs


class Metrics:
    """The metric families of one monitor instance, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry, vantage: str) -> None:
        self.vantage = vantage
        self.success = Gauge("mailmon_check_success", "1 if the last run of the check succeeded, else 0.",
                             _TARGET, registry=registry)
        self.duration = Gauge("mailmon_check_duration_seconds", "Wall time of the last run of the check.",
                              _TARGET, registry=registry)
        self.phase = Gauge("mailmon_check_phase_duration_seconds",
                           "Time spent in each protocol step during the last run of the check.",
                           (*_TARGET, "phase"), registry=registry)
        self.runs = Counter("mailmon_check_runs_total", "Runs of the check, successful or not.",
                            _TARGET, registry=registry)
        self.failures = Counter("mailmon_check_failures_total", "Failed runs of the check, by stage and reason.",
                                (*_TARGET, "stage", "reason"), registry=registry)
        self.skipped = Counter("mailmon_check_skipped_total",
                               "Runs skipped because the previous run of the check was still going when it was due.",
                               _TARGET, registry=registry)
        self.last_attempt = Gauge("mailmon_check_last_attempt_timestamp_seconds",
                                  "Unix time when the last run of the check started (0: never).",
                                  _TARGET, registry=registry)
        self.last_success = Gauge("mailmon_check_last_success_timestamp_seconds",
                                  "Unix time when the last successful run of the check started (0: never).",
                                  _TARGET, registry=registry)
        self.smtp_code = Gauge("mailmon_smtp_last_reply_code",
                               "Last SMTP reply code the server sent in the check (0: none yet).",
                               _TARGET, registry=registry)
        self.cert_expiry = Gauge("mailmon_tls_cert_expiry_timestamp_seconds",
                                 "notAfter of the server certificate seen by the last TLS handshake (0: unknown).",
                                 _TARGET, registry=registry)
        self.roundtrip = Histogram("mailmon_roundtrip_seconds",
                                   "Time from the server accepting a probe message to it being visible in the mailbox.",
                                   ("vantage", "target", "via"), registry=registry, buckets=ROUNDTRIP_BUCKETS)
        self.roundtrip_late = Counter("mailmon_roundtrip_late_total",
                                      "Probe messages that became visible only after their round trip's deadline.",
                                      ("vantage", "target", "via"), registry=registry)
        self.swept = Counter("mailmon_roundtrip_swept_total",
                             "Stale probe messages (late arrivals, leftovers) the sweeper deleted.",
                             ("vantage", "target"), registry=registry)
        self.verdict = Gauge("mailmon_verdict",
                             "Where the fault is for the target, seen from this vantage: one series per verdict, "
                             "1 for the current one (state set).", ("vantage", "target", "verdict"), registry=registry)
        self.selfcheck = Gauge("mailmon_selfcheck_success",
                               "1 if this vantage's own resolver, routes and reference endpoint work, else 0.",
                               ("vantage",), registry=registry)
        self.selfcheck_failures = Counter("mailmon_selfcheck_failures_total",
                                          "Failed selfchecks of this vantage, by stage and reason.",
                                          ("vantage", "stage", "reason"), registry=registry)
        self.selfcheck_last = Gauge("mailmon_selfcheck_last_attempt_timestamp_seconds",
                                    "Unix time of the last selfcheck (0: never).", ("vantage",), registry=registry)
        # Healthy until shown otherwise: a vantage is not blamed before its first selfcheck.
        self.selfcheck.labels(vantage).set(1)
        self.selfcheck_last.labels(vantage)
        for stage, reason in (("dns", "unreachable"), ("dns", "timeout"), ("connect", "unreachable"),
                              ("connect", "refused"), ("connect", "timeout"), ("dns", "internal")):
            self.selfcheck_failures.labels(vantage, stage, reason)
        self.lag = Histogram("mailmon_scheduler_lag_seconds",
                             "Delay between when a run was due and when it started (concurrency limit, load).",
                             ("vantage",), registry=registry,
                             buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.reload_ok = Gauge("mailmon_config_last_reload_successful",
                               "1 if the last configuration load succeeded.", registry=registry)
        self.reload_time = Gauge("mailmon_config_last_reload_success_timestamp_seconds",
                                 "Unix time of the last successful configuration load.", registry=registry)
        build = Gauge("mailmon_build_info", "Build of the running monitor; the value is always 1.",
                      ("version", "python_version"), registry=registry)
        build.labels(__version__, platform.python_version()).set(1)
        self.lag.labels(vantage)
        self._phases: dict[tuple[str, str], tuple[str, ...]] = {}

    def add_target(self, target: Target) -> None:
        """Create every series of the target's checks, so they exist before the first run."""
        self.set_verdict(target.name, "unknown")
        for check in target.checks:
            labels = (self.vantage, target.name, check.label, check.via or "")
            for family in (self.success, self.duration, self.runs, self.skipped, self.last_attempt,
                           self.last_success, self.cert_expiry):
                family.labels(*labels)
            if check.name in ("smtp", "roundtrip"):
                self.smtp_code.labels(*labels)
            if check.via:
                self.roundtrip.labels(self.vantage, target.name, check.via)
                self.roundtrip_late.labels(self.vantage, target.name, check.via)
                self.swept.labels(self.vantage, target.name)
            phases = expected_phases(check)
            self._phases[(target.name, check.key)] = phases
            for phase in phases:
                self.phase.labels(*labels, phase)
            for stage, reason in possible_failures(check):
                self.failures.labels(*labels, stage, reason)

    def remove_target(self, target: Target) -> None:
        """Drop the target's series (it left the configuration)."""
        for verdict in VERDICTS:
            _remove(self.verdict, (self.vantage, target.name, verdict))
        for check in target.checks:
            labels = (self.vantage, target.name, check.label, check.via or "")
            for family in (self.success, self.duration, self.runs, self.skipped, self.last_attempt,
                           self.last_success, self.cert_expiry, self.smtp_code):
                _remove(family, labels)
            if check.via:
                _remove(self.roundtrip, (self.vantage, target.name, check.via))
                _remove(self.roundtrip_late, (self.vantage, target.name, check.via))
                _remove(self.swept, (self.vantage, target.name))
            for phase in self._phases.pop((target.name, check.key), ()):
                _remove(self.phase, (*labels, phase))
            for stage, reason in possible_failures(check):
                _remove(self.failures, (*labels, stage, reason))

    def record(self, result: Result) -> None:
        """Publish one result."""
        labels = (self.vantage, result.target, result.check, result.via or "")
        self.runs.labels(*labels).inc()
        self.last_attempt.labels(*labels).set(result.started_at)
        self.duration.labels(*labels).set(result.duration_seconds)
        self.success.labels(*labels).set(1 if result.ok else 0)
        if result.ok:
            self.last_success.labels(*labels).set(result.started_at)
        else:
            assert result.stage is not None and result.reason is not None
            self.failures.labels(*labels, result.stage, result.reason).inc()
        # Steps a failed run never reached are zeroed: a stale time from an older run would mislead.
        key = f"{result.check}:{result.via}" if result.via else result.check
        known = self._phases.get((result.target, key), ())
        for phase in known:
            self.phase.labels(*labels, phase).set(result.phases.get(phase, 0.0))
        for phase, seconds in result.phases.items():
            if phase not in known:
                self.phase.labels(*labels, phase).set(seconds)
        if result.smtp_code is not None:
            self.smtp_code.labels(*labels).set(result.smtp_code)
        if result.tls.cert_not_after is not None:
            self.cert_expiry.labels(*labels).set(result.tls.cert_not_after)
        if result.via and result.ok and "delivery" in result.phases:
            self.roundtrip.labels(self.vantage, result.target, result.via).observe(result.phases["delivery"])

    def set_verdict(self, target: str, current: str) -> None:
        """Exactly one verdict series of the target reads 1."""
        for verdict in VERDICTS:
            self.verdict.labels(self.vantage, target, verdict).set(1 if verdict == current else 0)

    def record_selfcheck(self, result: Result) -> None:
        self.selfcheck.labels(self.vantage).set(1 if result.ok else 0)
        self.selfcheck_last.labels(self.vantage).set(result.started_at)
        if not result.ok:
            assert result.stage is not None and result.reason is not None
            self.selfcheck_failures.labels(self.vantage, result.stage, result.reason).inc()

    def record_skip(self, target: str, check: CheckSettings) -> None:
        self.skipped.labels(self.vantage, target, check.label, check.via or "").inc()

    def record_late(self, target: str, via: str, count: int = 1) -> None:
        self.roundtrip_late.labels(self.vantage, target, via).inc(count)

    def record_swept(self, target: str, count: int) -> None:
        self.swept.labels(self.vantage, target).inc(count)

    def record_lag(self, seconds: float) -> None:
        self.lag.labels(self.vantage).observe(seconds)

    def record_reload(self, ok: bool, when: float) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(when)


def _remove(family: Gauge | Counter | Histogram, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        family.remove(*labels)
