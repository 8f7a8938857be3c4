"""The process-wide metric families: the vantage's selfcheck, scheduler lag, the HTTP connection cap, reloads,
change windows, OAuth2 token requests and the build. Few series, so they are prometheus_client metrics in a
registry of their own (`Metrics` serves them after the per-target series, monitor/metrics.py)."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from monitor import __version__, steps
from monitor.result import Result
from monitor.signin import TokenEvent

__all__ = ["TOKEN_OUTCOMES", "ProcessMetrics"]

# Outcomes of a token request: success, or how stage `token` failed.
TOKEN_OUTCOMES = ("success", *steps.reasons_at("token"))


class ProcessMetrics:
    """The process-wide series of one monitor instance, in `registry` (its own, not the caller's)."""

    def __init__(self, vantage: str) -> None:
        self.vantage = vantage
        rest = self.registry = CollectorRegistry()
        # Goes up with every change made through the methods below (the only writers of these series): `text()`
        # renders again only then. prometheus_client takes ~0.4 ms to render these few series, most of what a
        # scrape cost the event loop before (issue 18: a burst of 200 scrapes).
        self.version = 0
        self._text: tuple[int, bytes] | None = None
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

    def record_selfcheck(self, result: Result) -> None:
        self.version += 1
        self.selfcheck.labels(self.vantage).set(1 if result.ok else 0)
        self.selfcheck_last.labels(self.vantage).set(result.started_at)
        if not result.ok:
            assert result.stage is not None and result.reason is not None
            self.selfcheck_failures.labels(self.vantage, result.stage, result.reason).inc()

    def add_identity(self, identity: str, grant: str) -> None:
        """Create an identity's token series at 0, so a source that never got a token still shows up."""
        self.version += 1
        self.token_expiry.labels(self.vantage, identity, grant)
        for outcome in TOKEN_OUTCOMES:
            self.token_requests.labels(self.vantage, identity, grant, outcome)

    def record_token(self, event: TokenEvent) -> None:
        """One token request's outcome (the identity registry calls this)."""
        self.version += 1
        self.token_requests.labels(self.vantage, event.identity, event.grant, event.outcome).inc()
        if event.outcome == "success":
            self.token_expiry.labels(self.vantage, event.identity, event.grant).set(event.expires_at or 0)

    def record_lag(self, seconds: float) -> None:
        self.version += 1
        self._lag.observe(seconds)

    def record_http_rejected(self) -> None:
        self.version += 1
        self.http_rejected.inc()

    def record_http_cap(self, cap: int) -> None:
        self.version += 1
        self.http_cap.set(cap)

    def record_reload(self, ok: bool, when: float) -> None:
        self.version += 1
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(when)

    def record_changes(self, changes: dict[str, list[str]], active: set[tuple[str, str]],
                       next_starts: dict[tuple[str, str], float]) -> None:
        """Every configured change's window state; changes no longer in any calendar lose their series."""
        self.version += 1
        self.change_active.clear()
        self.change_next.clear()
        for calendar, names in changes.items():
            for name in names:
                self.change_active.labels(self.vantage, calendar, name).set(1 if (calendar, name) in active else 0)
                if (calendar, name) in next_starts:
                    self.change_next.labels(self.vantage, calendar, name).set(next_starts[(calendar, name)])

    def text(self) -> bytes:
        """These series in the text format, rendered again only when one changed since the last call."""
        cached = self._text
        if cached is None or cached[0] != self.version:
            cached = self._text = (self.version, generate_latest(self.registry))
        return cached[1]
