"""Every Prometheus metric mailmon exports, defined once, and the only place their values are set.

Series for every configured (target, check) are created when the target is added, so a missing series never
reads as "healthy". Gauges start at 0: success 0 means "not shown to work yet", and a timestamp or certificate
expiry of 0 means "unknown". The failure counters are the exception (issue 14): by default
(`metrics.failure_series: on_failure`) a (stage, reason) pair's counter appears with its first failure, at 1,
which `increase()` cannot see; `mailmon_check_current_failure` carries that failure's stage and reason until
the next run, so rules that read it beside the counters miss no first failure (prometheus/rules/,
docs/metrics.md). With `failure_series: all` every pair a check can produce exists from the start at 0.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from monitor import __version__, steps
from monitor.config import CheckSettings, Target
from monitor.exposition import Exposition, format_value, label_text
from monitor.result import Result
from monitor.signin import TokenEvent
from monitor.verdict import VERDICTS

__all__ = ["Metrics", "expected_phases", "possible_failures"]

# The `_created` twin of every counter and histogram doubles the samples a scrape renders (measured: half the
# render time at 5,000 targets, bench/metrics_render.py) and Prometheus does not use it from the text format.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Every per-check series carries vantage, target, check and via; `via` is the read-back protocol of a round trip
# and empty for the other checks (PromQL treats it as absent).
# Submit-to-visible latency: loopback delivery takes milliseconds, a queue backlog minutes.
ROUNDTRIP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Outcomes of a token request: success, or how stage `token` failed.
TOKEN_OUTCOMES = ("success", *steps.reasons_at("token"))


def expected_phases(check: CheckSettings) -> tuple[str, ...]:
    """The steps a successful run of `check` times, in order (its kind's declaration, monitor/steps.py)."""
    return steps.kind(check.name).expected_steps(check)


def possible_failures(check: CheckSettings) -> list[tuple[str, str]]:
    """Every (stage, reason) this check can report; the failure counters pre-created for it."""
    return list(steps.kind(check.name).possible_failures(check))


class _CheckState:
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


class _RoundtripState:
    """The buckets of one (target, via) round-trip histogram and its late counter."""

    __slots__ = ("buckets", "count", "labels", "late", "sum")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.buckets = [0.0] * len(ROUNDTRIP_BUCKETS)
        self.count = self.sum = self.late = 0.0


_LE = [f'le="{format_value(bound)}"' for bound in ROUNDTRIP_BUCKETS]


class Metrics:
    """The metric families of one monitor instance.

    Per-target series (the many) live in an `Exposition`, rendered when they change; the few process-wide ones
    (selfcheck, scheduler lag, reload, build) are prometheus_client metrics in a registry of their own. `registry`
    gets one collector that yields both, so `registry.get_sample_value()` and `generate_latest(registry)` still see
    everything; `/metrics` serves `exposition()`, which joins the pre-rendered text.
    """

    def __init__(self, registry: CollectorRegistry, vantage: str, failure_series: str = "on_failure") -> None:
        self.vantage = vantage
        # "on_failure" (the default since issue 14): a failure counter appears with its first failure; "all":
        # every failure counter a check can produce exists from the start, at 0 (config `metrics.failure_series`,
        # docs/metrics.md). At 5,000 targets "all" is ~36 zero counters per check, 70 % of a scrape.
        self.precreate_failures = failure_series == "all"
        text = self._text = Exposition()
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
        self._checks: dict[tuple[str, str], _CheckState] = {}
        self._roundtrips: dict[tuple[str, str], _RoundtripState] = {}
        self._swept: dict[str, float] = {}
        self._verdicts: dict[str, str] = {}

        rest = self._rest = CollectorRegistry()
        self.selfcheck = Gauge("mailmon_selfcheck_success",
                               "1 if this vantage's own resolver, routes and reference endpoint work, else 0.",
                               ("vantage",), registry=rest)
        self.selfcheck_failures = Counter("mailmon_selfcheck_failures_total",
                                          "Failed selfchecks of this vantage, by stage and reason.",
                                          ("vantage", "stage", "reason"), registry=rest)
        self.selfcheck_last = Gauge("mailmon_selfcheck_last_attempt_timestamp_seconds",
                                    "Unix time of the last selfcheck (0: never).", ("vantage",), registry=rest)
        # Healthy until shown otherwise: a vantage is not blamed before its first selfcheck.
        self.selfcheck.labels(vantage).set(1)
        self.selfcheck_last.labels(vantage)
        for stage, reason in (("dns", "unreachable"), ("dns", "timeout"), ("connect", "unreachable"),
                              ("connect", "refused"), ("connect", "timeout"), ("dns", "internal"),
                              ("connect", "local_resources")):
            self.selfcheck_failures.labels(vantage, stage, reason)
        self.lag = Histogram("mailmon_scheduler_lag_seconds",
                             "Delay between when a run was due and when it started (concurrency limit, load).",
                             ("vantage",), registry=rest,
                             buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self._lag = self.lag.labels(vantage)
        self.http_rejected = Counter("mailmon_http_connections_rejected_total",
                                     "HTTP connections closed at once because the connection cap was reached.",
                                     registry=rest)
        self.http_cap = Gauge("mailmon_http_connections_max",
                              "The HTTP connection cap in force (--web.max-connections, lowered to fit "
                              "RLIMIT_NOFILE).", registry=rest)
        self.reload_ok = Gauge("mailmon_config_last_reload_successful",
                               "1 if the last configuration load succeeded.", registry=rest)
        self.reload_time = Gauge("mailmon_config_last_reload_success_timestamp_seconds",
                                 "Unix time of the last successful configuration load.", registry=rest)
        self.change_active = Gauge("mailmon_change_window_active",
                                   "1 while a window of the change is open (change calendars, config `changes`).",
                                   ("vantage", "calendar", "change"), registry=rest)
        self.change_next = Gauge("mailmon_change_window_next_start_timestamp_seconds",
                                 "Unix time when the next window of the change opens (absent: none within a year).",
                                 ("vantage", "calendar", "change"), registry=rest)
        # OAuth2 sign-in (monitor/signin/): per identity (the mailbox signed in as) and token source.
        self.token_expiry = Gauge("mailmon_oauth2_token_expiry_timestamp_seconds",
                                  "Unix time when the identity's current access token expires (0: none yet, or "
                                  "its lifetime is not known).", ("vantage", "identity", "grant"), registry=rest)
        self.token_requests = Counter("mailmon_oauth2_token_requests_total",
                                      "Requests for an access token, by outcome (success, or the failure reason "
                                      "of stage token).", ("vantage", "identity", "grant", "outcome"), registry=rest)
        build = Gauge("mailmon_build_info", "Build of the running monitor; the value is always 1.",
                      ("version", "python_version"), registry=rest)
        build.labels(__version__, platform.python_version()).set(1)
        registry.register(_Collector(self))

    def exposition(self) -> bytes:
        """The body of a scrape: every series of this monitor in the text format."""
        return b"".join(self.exposition_parts())

    def exposition_parts(self) -> list[bytes]:
        """The body of a scrape in pieces, taken in a few milliseconds (references to the pre-rendered chunks,
        which are replaced, never changed): join them off the event loop (`b"".join`), as `/metrics` does."""
        parts = self._text.parts()
        parts.append(generate_latest(self._rest))
        return parts

    def scrape(self, compress: bool, tail: bytes = b"") -> Callable[[], bytes]:
        """What `/metrics` serves, in two halves: this call (on the event loop, a few ms) takes references to the
        series; the function it returns builds the body (join, and gzip at level 1 if `compress`) and is meant for
        a worker thread. gzip recompresses only the families that changed since the last compressed scrape.
        `tail`: more exposition text to serve after this monitor's (other families, rendered by the caller)."""
        if not compress:
            parts = self.exposition_parts()
            parts.append(tail)
            return lambda: b"".join(parts)
        snapshot, rest = self._text.gzip_snapshot(), generate_latest(self._rest) + tail
        return lambda: self._text.gzip_body(snapshot, rest)

    def add_target(self, target: Target) -> None:
        """Create every series of the target's checks, so they exist before the first run (again: no change)."""
        if target.name not in self._verdicts:
            self.set_verdict(target.name, "unknown")
        for check in target.checks:
            owner = (target.name, check.key)
            if owner in self._checks:
                continue
            state = self._add_check(owner, _CheckState(
                self.vantage, target.name, check.label, check.via or "", expected_phases(check),
                possible_failures(check) if self.precreate_failures else (), check.name in ("smtp", "roundtrip"),
                check.ip_family))
            if check.name == "imap":
                # The nearly-full threshold, so the shipped alert compares each mailbox with its own setting.
                self.quota_warning.set_one(owner, state.labels, check.quota_warning)
            if check.via:
                self._roundtrip_state(target.name, check.via)
                if target.name not in self._swept:
                    self.record_swept(target.name, 0)

    def remove_target(self, target: Target) -> None:
        """Drop the target's series (it left the configuration)."""
        self._verdicts.pop(target.name, None)
        self.verdict.drop(target.name)
        for check in target.checks:
            owner = (target.name, check.key)
            self._checks.pop(owner, None)
            for family in (self.success, self.duration, self.phase, self.runs, self.failures, self.current_failure,
                           self.skipped,
                           self.last_attempt, self.last_success, self.smtp_code, self.cert_expiry, self.quota_ratio,
                           self.quota_limit, self.quota_warning):
                family.drop(owner)
            if check.via:
                self._roundtrips.pop((target.name, check.via), None)
                self.roundtrip.drop((target.name, check.via))
                self.roundtrip_late.drop((target.name, check.via))
        if self._swept.pop(target.name, None) is not None:
            self.swept.drop(target.name)

    def record(self, result: Result) -> None:
        """Publish one result."""
        owner = (result.target, result.key)
        state = self._checks.get(owner)
        if state is None:  # a check that was never added (not from the config): its series start now
            state = self._add_check(owner, _CheckState(self.vantage, result.target, result.check, result.via or "",
                                                       (), (), result.smtp_code is not None, result.ip_family))
        state.runs += 1
        state.last_attempt = result.started_at
        state.duration = result.duration_seconds
        state.success = 1.0 if result.ok else 0.0
        if result.ok:
            state.last_success = result.started_at
        else:
            assert result.stage is not None and result.reason is not None
            pair = (result.stage, result.reason)
            state.failures[pair] = state.failures.get(pair, 0.0) + 1
            self._render_failures(owner, state)
        current = None if result.ok or result.stage is None or result.reason is None else (result.stage,
                                                                                             result.reason)
        if current != state.current:  # re-rendered only when the failure changes (its labels, or its end)
            state.current = current
            self._render_current(owner, state)
        # Steps a failed run never reached are zeroed: a stale time from an older run would mislead.
        phases = state.phases
        for phase in phases:
            phases[phase] = result.phases.get(phase, 0.0)
        for phase, seconds in result.phases.items():
            phases[phase] = seconds
        if result.smtp_code is not None:
            state.smtp_code = float(result.smtp_code)
        if result.tls.cert_not_after is not None:
            state.cert_expiry = result.tls.cert_not_after
        self._render_check(owner, state)
        if result.quota:
            self._render_quota(owner, state, result.quota)
        if result.via and result.ok and "delivery" in result.phases:
            self._observe_roundtrip(result.target, result.via, result.phases["delivery"])
        for via, count in result.late.items():  # what the run's sweep found (roundtrip.py)
            self.record_late(result.target, via, count)
        if result.swept:
            self.record_swept(result.target, result.swept)

    def set_verdict(self, target: str, current: str) -> None:
        """Exactly one verdict series of the target reads 1 (re-rendered only when the verdict changes)."""
        if self._verdicts.get(target) == current:
            return
        self._verdicts[target] = current
        labels = label_text(("target", "vantage"), (target, self.vantage))
        self.verdict.set(target, (("", f'{labels},verdict="{verdict}"', 1.0 if verdict == current else 0.0)
                                  for verdict in VERDICTS))

    def record_selfcheck(self, result: Result) -> None:
        self.selfcheck.labels(self.vantage).set(1 if result.ok else 0)
        self.selfcheck_last.labels(self.vantage).set(result.started_at)
        if not result.ok:
            assert result.stage is not None and result.reason is not None
            self.selfcheck_failures.labels(self.vantage, result.stage, result.reason).inc()

    def record_skip(self, target: str, check: CheckSettings) -> None:
        owner = (target, check.key)
        state = self._checks.get(owner)
        if state is not None:
            state.skipped += 1
            self.skipped.set_one(owner, state.labels, state.skipped)

    def record_late(self, target: str, via: str, count: int = 1) -> None:
        state = self._roundtrip_state(target, via)
        state.late += count
        self.roundtrip_late.set_one((target, via), state.labels, state.late)

    def record_swept(self, target: str, count: int) -> None:
        total = self._swept[target] = self._swept.get(target, 0.0) + count
        labels = label_text(("target", "vantage"), (target, self.vantage))
        self.swept.set_one(target, labels, total)

    def add_identity(self, identity: str, grant: str) -> None:
        """Create an identity's token series at 0, so a source that never got a token still shows up."""
        self.token_expiry.labels(self.vantage, identity, grant)
        for outcome in TOKEN_OUTCOMES:
            self.token_requests.labels(self.vantage, identity, grant, outcome)

    def record_token(self, event: TokenEvent) -> None:
        """One token request's outcome (the identity registry calls this)."""
        self.token_requests.labels(self.vantage, event.identity, event.grant, event.outcome).inc()
        if event.outcome == "success":
            self.token_expiry.labels(self.vantage, event.identity, event.grant).set(event.expires_at or 0)

    def record_lag(self, seconds: float) -> None:
        self._lag.observe(seconds)

    def record_http_rejected(self) -> None:
        self.http_rejected.inc()

    def record_http_cap(self, cap: int) -> None:
        self.http_cap.set(cap)

    def record_reload(self, ok: bool, when: float) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(when)

    def record_changes(self, changes: dict[str, list[str]], active: set[tuple[str, str]],
                       next_starts: dict[tuple[str, str], float]) -> None:
        """Every configured change's window state; changes no longer in any calendar lose their series."""
        self.change_active.clear()
        self.change_next.clear()
        for calendar, names in changes.items():
            for name in names:
                self.change_active.labels(self.vantage, calendar, name).set(1 if (calendar, name) in active else 0)
                if (calendar, name) in next_starts:
                    self.change_next.labels(self.vantage, calendar, name).set(next_starts[(calendar, name)])

    def check_exposition(self) -> bytes:
        """Only the per-target and per-check series (what GET /probe answers with; monitor/ondemand.py)."""
        return self._text.render()

    def _add_check(self, owner: tuple[str, str], state: _CheckState) -> _CheckState:
        """Start publishing a check's series, at their initial values."""
        self._checks[owner] = state
        self._render_check(owner, state)
        self.skipped.set_one(owner, state.labels, state.skipped)
        self._render_failures(owner, state)
        self._render_current(owner, state)
        return state

    def _render_check(self, owner: tuple[str, str], state: _CheckState) -> None:
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

    def _render_quota(self, owner: tuple[str, str], state: _CheckState, quota: dict[str, tuple[int, int]]) -> None:
        """The mailbox's quota as the server reported it this run (RFC 9208: STORAGE counts KiB)."""
        check, rest = state.check, state.rest
        self.quota_ratio.set(owner, (("", f'{check},resource="{name}",{rest}', usage / limit)
                                     for name, (usage, limit) in sorted(quota.items())))
        self.quota_limit.set(owner, (("", f'{check},resource="{name}",{rest}',
                                      float(limit * 1024 if name == "STORAGE" else limit))
                                     for name, (_, limit) in sorted(quota.items())))

    def _render_current(self, owner: tuple[str, str], state: _CheckState) -> None:
        """One series per check: the current failure's stage and reason at 1, or empty ones at 0."""
        stage, reason = state.current or ("", "")
        self.current_failure.set_one(owner, f'{state.check},reason="{reason}",stage="{stage}",{state.rest}',
                                     0.0 if state.current is None else 1.0)

    def _render_failures(self, owner: tuple[str, str], state: _CheckState) -> None:
        check, rest = state.check, state.rest
        self.failures.set(owner, (("", f'{check},reason="{reason}",stage="{stage}",{rest}', count)
                                  for (stage, reason), count in state.failures.items()))

    def _roundtrip_state(self, target: str, via: str) -> _RoundtripState:
        state = self._roundtrips.get((target, via))
        if state is None:
            state = self._roundtrips[(target, via)] = _RoundtripState(
                label_text(("target", "vantage", "via"), (target, self.vantage, via)))
            self._render_roundtrip(target, via, state)
            self.roundtrip_late.set_one((target, via), state.labels, state.late)
        return state

    def _observe_roundtrip(self, target: str, via: str, seconds: float) -> None:
        state = self._roundtrip_state(target, via)
        for i, bound in enumerate(ROUNDTRIP_BUCKETS):
            if seconds <= bound:
                state.buckets[i] += 1
        state.count += 1
        state.sum += seconds
        self._render_roundtrip(target, via, state)

    def _render_roundtrip(self, target: str, via: str, state: _RoundtripState) -> None:
        labels = state.labels
        samples = [("_bucket", f"{le},{labels}", count) for le, count in zip(_LE, state.buckets, strict=True)]
        samples += [("_bucket", f'le="+Inf",{labels}', state.count), ("_count", labels, state.count),
                    ("_sum", labels, state.sum)]
        self.roundtrip.set((target, via), samples)


class _Collector:
    """Lets prometheus_client's registry API (get_sample_value, collect, generate_latest) see every series."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return text_string_to_metric_families(self._metrics.exposition().decode())

    def describe(self) -> list[Metric]:
        return []


