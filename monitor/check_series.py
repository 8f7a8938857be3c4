"""The per-target metric families as text (monitor/exposition.py) and how each is rendered from a check's values.

`Metrics` (monitor/metrics.py) keeps the values and observes Results; this module says what the series look like:
their names, help, types and label order. A family is re-rendered only for the (target, check) that changed.
"""

from __future__ import annotations

from collections.abc import Iterable

from monitor.exposition import Exposition, format_value, label_text
from monitor.verdict import VERDICTS

__all__ = ["ROUNDTRIP_BUCKETS", "CheckFamilies", "CheckState", "RoundtripState"]

# Every per-check series carries vantage, target, check and via; `via` is the read-back protocol of a round trip
# and empty for the other checks (PromQL treats it as absent).
# Submit-to-visible latency: loopback delivery takes milliseconds, a queue backlog minutes.
ROUNDTRIP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_LE = [f'le="{format_value(bound)}"' for bound in ROUNDTRIP_BUCKETS]

Owner = tuple[str, str]  # (target, check key)


class CheckState:
    """The values behind one (target, check)'s series, and its label text."""

    __slots__ = ("cert_expiry", "check", "current", "duration", "failures", "labels", "last_attempt", "last_success",
                 "phases", "rest", "runs", "skipped", "smtp_code", "success")

    def __init__(self, vantage: str, target: str, check: str, via: str, phases: Iterable[str],
                 failures: Iterable[tuple[str, str]], smtp_code: bool, ip_family: str | None = None) -> None:
        # Label names in sorted order, as prometheus_client writes them: phase, reason and stage go between
        # `check` (with `ip_family`, only on checks bound to an address family) and the rest.
        self.check = (label_text(("check", "ip_family"), (check, ip_family)) if ip_family
                      else label_text(("check",), (check,)))
        self.rest = label_text(("target", "vantage", "via"), (target, vantage, via))
        self.labels = f"{self.check},{self.rest}"
        self.success = self.duration = self.runs = self.skipped = 0.0
        self.last_attempt = self.last_success = self.cert_expiry = 0.0
        self.smtp_code: float | None = 0.0 if smtp_code else None
        self.phases: dict[str, float] = dict.fromkeys(phases, 0.0)
        self.failures: dict[tuple[str, str], float] = dict.fromkeys(failures, 0.0)
        # The (stage, reason) of the last run if it failed, else None (mailmon_check_current_failure).
        self.current: tuple[str, str] | None = None


class RoundtripState:
    """The buckets of one (target, via) round-trip histogram and its late counter."""

    __slots__ = ("buckets", "count", "labels", "late", "sum")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.buckets = [0.0] * len(ROUNDTRIP_BUCKETS)
        self.count = self.sum = self.late = 0.0


class CheckFamilies:
    """The per-target families of one monitor, kept as text in `text` (an `Exposition`)."""

    def __init__(self, vantage: str) -> None:
        self.vantage = vantage
        text = self.text = Exposition()
        self.success = text.family("mailmon_check_success", "gauge",
                                   "1 if the last run of the check succeeded, else 0.")
        self.duration = text.family("mailmon_check_duration_seconds", "gauge",
                                    "Wall time of the last run of the check.")
        self.phase = text.family("mailmon_check_phase_duration_seconds", "gauge",
                                 "Time spent in each protocol step during the last run of the check.")
        self.runs = text.family("mailmon_check_runs_total", "counter", "Runs of the check, successful or not.")
        self.failures = text.family("mailmon_check_failures_total", "counter",
                                    "Failed runs of the check, by stage and reason.")
        self.current_failure = text.family("mailmon_check_current_failure", "gauge",
            "1 while the last run of the check failed, labelled with its stage and reason; 0 (stage and reason "
            "empty) after a success or before the first run.")
        self.skipped = text.family("mailmon_check_skipped_total", "counter",
            "Runs skipped because the previous run of the check was still going when it was due.")
        self.last_attempt = text.family("mailmon_check_last_attempt_timestamp_seconds", "gauge",
                                        "Unix time when the last run of the check started (0: never).")
        self.last_success = text.family("mailmon_check_last_success_timestamp_seconds", "gauge",
                                        "Unix time when the last successful run of the check started (0: never).")
        self.smtp_code = text.family("mailmon_smtp_last_reply_code", "gauge",
                                     "Last SMTP reply code the server sent in the check (0: none yet).")
        self.cert_expiry = text.family("mailmon_tls_cert_expiry_timestamp_seconds", "gauge",
            "notAfter of the server certificate seen by the last TLS handshake (0: unknown).")
        self.roundtrip = text.family("mailmon_roundtrip_seconds", "histogram",
            "Time from the server accepting a probe message to it being visible in the mailbox.")
        self.roundtrip_late = text.family("mailmon_roundtrip_late_total", "counter",
                                          "Probe messages that became visible only after their round trip's deadline.")
        self.swept = text.family("mailmon_roundtrip_swept_total", "counter",
                                 "Stale probe messages (late arrivals, leftovers) the sweeper deleted.")
        self.verdict = text.family("mailmon_verdict", "gauge",
                                   "Where the fault is for the target, seen from this vantage: one series per verdict, "
                                   "1 for the current one (state set).")
        self.quota_ratio = text.family("mailmon_mailbox_quota_used_ratio", "gauge",
            "Share of the checked mailbox's quota in use, per resource (IMAP GETQUOTAROOT; absent without QUOTA).")
        self.quota_limit = text.family("mailmon_mailbox_quota_limit", "gauge",
            "The checked mailbox's quota limit, per resource: bytes for STORAGE, messages for MESSAGE.")
        self.quota_warning = text.family("mailmon_mailbox_quota_warning_ratio", "gauge",
            "The configured share of the quota above which the mailbox counts as nearly full (quota_warning).")

    def drop_check(self, owner: Owner) -> None:
        """Remove every series of one (target, check)."""
        for family in (self.success, self.duration, self.phase, self.runs, self.failures, self.current_failure,
                       self.skipped, self.last_attempt, self.last_success, self.smtp_code, self.cert_expiry,
                       self.quota_ratio, self.quota_limit, self.quota_warning):
            family.drop(owner)

    def drop_roundtrip(self, key: Owner) -> None:
        """Remove a (target, via)'s histogram and late counter."""
        self.roundtrip.drop(key)
        self.roundtrip_late.drop(key)

    def render_new(self, owner: Owner, state: CheckState) -> None:
        """Every series of a check just added, at its initial values."""
        self.render_check(owner, state)
        self.render_skipped(owner, state)
        self.render_failures(owner, state)
        self.render_current(owner, state)

    def render_check(self, owner: Owner, state: CheckState) -> None:
        """Re-render the series a run changes (all but the failure and skip counters, rendered on their change)."""
        labels = state.labels
        self.success.set_one(owner, labels, state.success)
        self.duration.set_one(owner, labels, state.duration)
        self.runs.set_one(owner, labels, state.runs)
        self.last_attempt.set_one(owner, labels, state.last_attempt)
        self.last_success.set_one(owner, labels, state.last_success)
        self.cert_expiry.set_one(owner, labels, state.cert_expiry)
        if state.smtp_code is not None:
            self.smtp_code.set_one(owner, labels, state.smtp_code)
        check, rest = state.check, state.rest
        self.phase.set(owner, (("", f'{check},phase="{phase}",{rest}', seconds)
                               for phase, seconds in state.phases.items()))

    def render_skipped(self, owner: Owner, state: CheckState) -> None:
        self.skipped.set_one(owner, state.labels, state.skipped)

    def render_quota(self, owner: Owner, state: CheckState, quota: dict[str, tuple[int, int]]) -> None:
        """The mailbox's quota as the server reported it this run (RFC 9208: STORAGE counts KiB)."""
        check, rest = state.check, state.rest
        self.quota_ratio.set(owner, (("", f'{check},resource="{name}",{rest}', usage / limit)
                                     for name, (usage, limit) in sorted(quota.items())))
        self.quota_limit.set(owner, (("", f'{check},resource="{name}",{rest}',
                                      float(limit * 1024 if name == "STORAGE" else limit))
                                     for name, (_, limit) in sorted(quota.items())))

    def render_current(self, owner: Owner, state: CheckState) -> None:
        """One series per check: the current failure's stage and reason at 1, or empty ones at 0."""
        stage, reason = state.current or ("", "")
        self.current_failure.set_one(owner, f'{state.check},reason="{reason}",stage="{stage}",{state.rest}',
                                     0.0 if state.current is None else 1.0)

    def render_failures(self, owner: Owner, state: CheckState) -> None:
        check, rest = state.check, state.rest
        self.failures.set(owner, (("", f'{check},reason="{reason}",stage="{stage}",{rest}', count)
                                  for (stage, reason), count in state.failures.items()))

    def render_roundtrip(self, key: Owner, state: RoundtripState) -> None:
        labels = state.labels
        samples = [("_bucket", f"{le},{labels}", count) for le, count in zip(_LE, state.buckets, strict=True)]
        samples += [("_bucket", f'le="+Inf",{labels}', state.count), ("_count", labels, state.count),
                    ("_sum", labels, state.sum)]
        self.roundtrip.set(key, samples)

    def render_late(self, key: Owner, state: RoundtripState) -> None:
        self.roundtrip_late.set_one(key, state.labels, state.late)

    def render_swept(self, target: str, total: float) -> None:
        self.swept.set_one(target, label_text(("target", "vantage"), (target, self.vantage)), total)

    def render_verdict(self, target: str, current: str) -> None:
        """Exactly one verdict series of the target reads 1."""
        labels = label_text(("target", "vantage"), (target, self.vantage))
        self.verdict.set(target, (("", f'{labels},verdict="{verdict}"', 1.0 if verdict == current else 0.0)
                                  for verdict in VERDICTS))
