"""Every Prometheus metric mailmon exports, and the only place their values are set.

`Metrics` observes: it keeps each check's values and turns Results, skips and verdicts into them. The per-target
families and their rendering are monitor/check_series.py; the process-wide ones monitor/metrics_process.py.

Series for every configured (target, check) are created when the target is added, so a missing series never
reads as "healthy". Gauges start at 0: success 0 means "not shown to work yet", and a timestamp or certificate
expiry of 0 means "unknown". The failure counters are the exception (issue 14): by default
(`metrics.failure_series: on_failure`) a (stage, reason) pair's counter appears with its first failure, at 1,
which `increase()` cannot see; `mailmon_check_current_failure` carries that failure's stage and reason until
the next run, so rules that read it beside the counters miss no first failure (prometheus/rules/,
docs/metrics.md). With `failure_series: all` every pair a check can produce exists from the start at 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from monitor import steps
from monitor.check_series import ROUNDTRIP_BUCKETS, CheckFamilies, CheckState, RoundtripState
from monitor.config import CheckSettings, Target
from monitor.exposition import label_text
from monitor.metrics_process import TOKEN_OUTCOMES, ProcessMetrics
from monitor.result import Result
from monitor.signin import TokenEvent

__all__ = ["ROUNDTRIP_BUCKETS", "TOKEN_OUTCOMES", "Metrics", "expected_phases", "possible_failures"]

# The `_created` twin of every counter and histogram doubles the samples a scrape renders (measured: half the
# render time at 5,000 targets, bench/metrics_render.py) and Prometheus does not use it from the text format.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The largest scrape body kept for the next scrape (Metrics.last_body): 100 targets render ~0.5 MB of plain text.
_KEEP_MAX = 8 * 1024 * 1024


def expected_phases(check: CheckSettings) -> tuple[str, ...]:
    """The steps a successful run of `check` times, in order (its kind's declaration, monitor/steps.py)."""
    return steps.kind(check.name).expected_steps(check)


def possible_failures(check: CheckSettings) -> list[tuple[str, str]]:
    """Every (stage, reason) this check can report; the failure counters pre-created for it."""
    return list(steps.kind(check.name).possible_failures(check))


class Metrics:
    """The metric families of one monitor instance.

    Per-target series (the many) live in an `Exposition` (`CheckFamilies`), rendered when they change; the few
    process-wide ones (selfcheck, scheduler lag, reload, build) are prometheus_client metrics in a registry of their
    own (`ProcessMetrics`). `registry` gets one collector that yields both, so `registry.get_sample_value()` and
    `generate_latest(registry)` still see everything; `/metrics` serves `exposition()`, which joins the
    pre-rendered text.
    """

    def __init__(self, registry: CollectorRegistry, vantage: str, failure_series: str = "on_failure") -> None:
        self.vantage = vantage
        # "on_failure" (the default since issue 14): a failure counter appears with its first failure; "all":
        # every failure counter a check can produce exists from the start, at 0 (config `metrics.failure_series`,
        # docs/metrics.md). At 5,000 targets "all" is ~36 zero counters per check, 70 % of a scrape.
        self.precreate_failures = failure_series == "all"
        self.series = CheckFamilies(vantage)
        self.process = ProcessMetrics(vantage)
        self._checks: dict[tuple[str, str], CheckState] = {}
        self._roundtrips: dict[tuple[str, str], RoundtripState] = {}
        self._swept: dict[str, float] = {}
        self._verdicts: dict[str, str] = {}
        # The last body `scrape` built for each encoding, with what it was built from: a burst of scrapes while no
        # series changed (200 clients connecting at once, issue 18) is answered from it, without a join or a
        # worker thread each.
        self._bodies: dict[bool, tuple[tuple[object, ...], bytes]] = {}
        registry.register(_Collector(self))

    def exposition(self) -> bytes:
        """The body of a scrape: every series of this monitor in the text format."""
        return b"".join(self.exposition_parts())

    def exposition_parts(self) -> list[bytes]:
        """The body of a scrape in pieces, taken in a few milliseconds (references to the pre-rendered chunks,
        which are replaced, never changed): join them off the event loop (`b"".join`), as `/metrics` does."""
        parts = self.series.text.parts()
        parts.append(self.process.text())
        return parts

    def scrape(self, compress: bool, tail: bytes = b"") -> Callable[[], bytes]:
        """What `/metrics` serves, in two halves: this call (on the event loop, a few ms) takes references to the
        series; the function it returns builds the body (join, and gzip at level 1 if `compress`) and is meant for
        a worker thread. gzip recompresses only the families that changed since the last compressed scrape.
        `tail`: more exposition text to serve after this monitor's (other families, rendered by the caller).
        See `last_body` for a scrape that needs neither half."""
        key = self._body_key(tail)
        rest = self.process.text() + tail
        if not compress:
            parts = self.series.text.parts()
            parts.append(rest)

            def join() -> bytes:
                return self._keep(False, key, b"".join(parts))
            return join
        text = self.series.text
        snapshot = text.gzip_snapshot()
        return lambda: self._keep(True, key, text.gzip_body(snapshot, rest))

    def last_body(self, compress: bool, tail: bytes = b"") -> bytes | None:
        """The body the last `scrape` built for this encoding if no series changed since (then it is exactly what
        a new scrape would build), else None. A few microseconds on the loop: family versions, not text."""
        kept = self._bodies.get(compress)
        return kept[1] if kept is not None and kept[0] == self._body_key(tail) else None

    def _body_key(self, tail: bytes) -> tuple[object, ...]:
        return (self.series.text.versions(), self.process.version, tail)

    def _keep(self, compress: bool, key: tuple[object, ...], body: bytes) -> bytes:
        # Only bodies of modest size: at thousands of targets the series change between any two scrapes, and
        # keeping a stale body of tens of MB would only cost memory. (A worker thread assigns; the loop reads.)
        if len(body) <= _KEEP_MAX:
            self._bodies[compress] = (key, body)
        else:
            self._bodies.pop(compress, None)
        return body

    def add_target(self, target: Target) -> None:
        """Create every series of the target's checks, so they exist before the first run (again: no change)."""
        if target.name not in self._verdicts:
            self.set_verdict(target.name, "unknown")
        for check in target.checks:
            owner = (target.name, check.key)
            if owner in self._checks:
                continue
            state = self._add_check(owner, CheckState(
                self.vantage, target.name, check.label, check.via or "", expected_phases(check),
                possible_failures(check) if self.precreate_failures else (), check.name in ("smtp", "roundtrip"),
                check.ip_family))
            if check.name == "imap":
                # The nearly-full threshold, so the shipped alert compares each mailbox with its own setting.
                self.series.quota_warning.set_one(owner, state.labels, check.quota_warning)
            if check.via:
                self._roundtrip_state(target.name, check.via)
                if target.name not in self._swept:
                    self.record_swept(target.name, 0)

    def remove_target(self, target: Target) -> None:
        """Drop the target's series (it left the configuration)."""
        self._verdicts.pop(target.name, None)
        self.series.verdict.drop(target.name)
        for check in target.checks:
            owner = (target.name, check.key)
            self._checks.pop(owner, None)
            self.series.drop_check(owner)
            if check.via:
                self._roundtrips.pop((target.name, check.via), None)
                self.series.drop_roundtrip((target.name, check.via))
        if self._swept.pop(target.name, None) is not None:
            self.series.swept.drop(target.name)

    def record(self, result: Result) -> None:
        """Publish one result."""
        owner = (result.target, result.key)
        state = self._checks.get(owner)
        if state is None:  # a check that was never added (not from the config): its series start now
            state = self._add_check(owner, CheckState(self.vantage, result.target, result.check, result.via or "",
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
            self.series.render_failures(owner, state)
        current = None if result.ok or result.stage is None or result.reason is None else (result.stage,
                                                                                             result.reason)
        if current != state.current:  # re-rendered only when the failure changes (its labels, or its end)
            state.current = current
            self.series.render_current(owner, state)
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
        self.series.render_check(owner, state)
        if result.quota:
            self.series.render_quota(owner, state, result.quota)
        if result.via and result.ok and "delivery" in result.phases:
            self._observe_roundtrip(result.target, result.via, result.phases["delivery"])
        for via, count in result.late:  # what the run's sweep found (roundtrip.py)
            self.record_late(result.target, via, count)
        if result.swept:
            self.record_swept(result.target, result.swept)

    def set_verdict(self, target: str, current: str) -> None:
        """Exactly one verdict series of the target reads 1 (re-rendered only when the verdict changes)."""
        if self._verdicts.get(target) == current:
            return
        self._verdicts[target] = current
        self.series.render_verdict(target, current)

    def record_skip(self, target: str, check: CheckSettings) -> None:
        owner = (target, check.key)
        state = self._checks.get(owner)
        if state is not None:
            state.skipped += 1
            self.series.render_skipped(owner, state)

    def record_late(self, target: str, via: str, count: int = 1) -> None:
        state = self._roundtrip_state(target, via)
        state.late += count
        self.series.render_late((target, via), state)

    def record_swept(self, target: str, count: int) -> None:
        total = self._swept[target] = self._swept.get(target, 0.0) + count
        self.series.render_swept(target, total)

    def check_exposition(self) -> bytes:
        """Only the per-target and per-check series (what GET /probe answers with; monitor/ondemand.py)."""
        return self.series.text.render()

    # The process-wide series (monitor/metrics_process.py), under the names the monitor's parts call.

    def record_selfcheck(self, result: Result) -> None:
        self.process.record_selfcheck(result)

    def add_identity(self, identity: str, grant: str) -> None:
        self.process.add_identity(identity, grant)

    def record_token(self, event: TokenEvent) -> None:
        self.process.record_token(event)

    def record_lag(self, seconds: float) -> None:
        self.process.record_lag(seconds)

    def record_http_rejected(self) -> None:
        self.process.record_http_rejected()

    def record_http_cap(self, cap: int) -> None:
        self.process.record_http_cap(cap)

    def record_reload(self, ok: bool, when: float) -> None:
        self.process.record_reload(ok, when)

    def record_changes(self, changes: dict[str, list[str]], active: set[tuple[str, str]],
                       next_starts: dict[tuple[str, str], float]) -> None:
        self.process.record_changes(changes, active, next_starts)

    def _add_check(self, owner: tuple[str, str], state: CheckState) -> CheckState:
        """Start publishing a check's series, at their initial values."""
        self._checks[owner] = state
        self.series.render_new(owner, state)
        return state

    def _roundtrip_state(self, target: str, via: str) -> RoundtripState:
        state = self._roundtrips.get((target, via))
        if state is None:
            state = self._roundtrips[(target, via)] = RoundtripState(
                label_text(("target", "vantage", "via"), (target, self.vantage, via)))
            self.series.render_roundtrip((target, via), state)
            self.series.render_late((target, via), state)
        return state

    def _observe_roundtrip(self, target: str, via: str, seconds: float) -> None:
        state = self._roundtrip_state(target, via)
        for i, bound in enumerate(ROUNDTRIP_BUCKETS):
            if seconds <= bound:
                state.buckets[i] += 1
        state.count += 1
        state.sum += seconds
        self.series.render_roundtrip((target, via), state)


class _Collector:
    """Lets prometheus_client's registry API (get_sample_value, collect, generate_latest) see every series."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return text_string_to_metric_families(self._metrics.exposition().decode())

    def describe(self) -> list[Metric]:
        return []


