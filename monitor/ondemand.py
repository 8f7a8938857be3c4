"""`GET /probe`: run one check now and answer with its series, for Prometheus's multi-target exporter pattern.

Two forms (docs/scaling.md):
- `target=NAME&check=CHECK[&via=imap|pop3]`: a check of a configured target (credentials stay in the config file);
- `module=NAME&target=HOST[:PORT]`: the check a `modules:` entry describes, against a host from service discovery.

The answer carries the metric names and label sets `mailmon run` exports for the same check (vantage from this
monitor's config; target: the configured name, or the `target` parameter as Prometheus sent it), so the shipped
rules and dashboard work on either mode. Its values come from series kept per probed (module, target, check),
apart from the scheduler's: counters keep counting across scrapes, as `increase()` in the rules needs, and a
`/probe` never changes a scheduled series. Those per-probe series are built through `Metrics`' public API (one
small instance per probed check, least recently probed dropped first), so they follow whatever `Metrics` exports.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, Counter, generate_latest

from monitor.config import CheckSettings, Config, Module, Target
from monitor.metrics import Metrics
from monitor.result import Result
from monitor.verdict import classify_result, decide, describe

__all__ = ["OUTCOMES", "OnDemand", "ProbeRefused", "ProbeRequest", "deadline", "parse_request", "select_families"]

# How /probe requests ended: `ok`/`failed` ran the check; the others were refused before it ran.
OUTCOMES = ("ok", "failed", "busy", "bad_request", "not_found", "forbidden")
# Per-check series families a /probe answer carries (the ones `mailmon run` exports per target and check); the
# process-wide ones (selfcheck, scheduler, build) stay on /metrics.
_FAMILY_PREFIXES = ("mailmon_check_", "mailmon_smtp_", "mailmon_tls_", "mailmon_roundtrip_", "mailmon_verdict",
                    "mailmon_mailbox_")
# Probed checks whose series are kept (counters count on across scrapes); past this the least recent is dropped,
# so targets churning through service discovery cannot grow memory without bound (~60 KiB each).
DEFAULT_KEEP = 2000
# Never below this, whatever the scrape timeout says: a check needs at least a connect.
_MIN_DEADLINE = 0.1
_TARGET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]")


class ProbeRefused(Exception):
    """A /probe request that is not run: HTTP status, one-line reason and the outcome it is counted as."""

    def __init__(self, status: int, reason: str, outcome: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.outcome = outcome


@dataclass(frozen=True)
class ProbeRequest:
    """What one /probe request runs: a one-check target, and the key its on-demand series live under."""

    target: Target
    check: CheckSettings
    module: str | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.module or "", self.target.name, self.check.key)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is not None and len(values) > 1:
        raise ProbeRefused(400, f"{name} given {len(values)} times", "bad_request")
    return values[0] if values else None


def split_host_port(text: str) -> tuple[str, int | None]:
    """`HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address → (host, port or None)."""
    if not text or len(text) > 255 or not set(text) <= _TARGET_CHARS:
        raise ValueError("target must be HOST or HOST:PORT")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("target must be [IPV6] or [IPV6]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        host, port_text = text, None  # a bare IPv6 address
    else:
        host, _, port_text = text.partition(":")
        port_text = port_text if ":" in text else None
    if not host:
        raise ValueError("target has no host")
    if ":" in host or text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_request(query: dict[str, list[str]], config: Config) -> ProbeRequest:
    """The check a /probe query asks for; ProbeRefused (400, 403 or 404) with a one-line reason otherwise."""
    for name in query:
        if name not in ("target", "check", "via", "module"):
            raise ProbeRefused(400, f"unknown parameter {name!r} (use target, check, via or module)", "bad_request")
    target_text, check_text, via, module_name = (_one(query, n) for n in ("target", "check", "via", "module"))
    if not target_text:
        raise ProbeRefused(400, "target is required", "bad_request")
    if module_name is not None:
        if check_text is not None or via is not None:
            raise ProbeRefused(400, "give either module or check (with via), not both", "bad_request")
        return _module_request(config, module_name, target_text)
    if not check_text:
        raise ProbeRefused(400, "give check=CHECK (a configured target's check) or module=NAME", "bad_request")
    target = config.target(target_text)
    if target is None:
        raise ProbeRefused(404, f"no configured target {target_text!r}", "not_found")
    matches = [c for c in target.checks if c.label == check_text and (via is None or c.via == via)]
    if not matches:
        known = ", ".join(sorted({c.key for c in target.checks}))
        raise ProbeRefused(404, f"target {target_text!r} has no check {check_text!r}"
                                f"{f' via {via}' if via else ''} (it has: {known})", "not_found")
    if len(matches) > 1:
        raise ProbeRefused(400, f"check {check_text!r} runs via {' and '.join(str(c.via) for c in matches)}: "
                                "add via=", "bad_request")
    # The whole target: a round trip reads back through the target's imap or pop3 block.
    return ProbeRequest(target=target, check=matches[0], module=None)


def _module_request(config: Config, name: str, target_text: str) -> ProbeRequest:
    module: Module | None = config.modules.get(name)
    if module is None:
        raise ProbeRefused(404, f"no module {name!r} in the configuration", "not_found")
    try:
        host, port = split_host_port(target_text)
    except ValueError as exc:
        raise ProbeRefused(400, str(exc), "bad_request") from None
    if not module.allows(host):
        # Before any connection: the host could be anyone's, and the module may hold credentials.
        raise ProbeRefused(403, f"host {host!r} is not in module {name!r}'s hosts allow-list", "forbidden")
    target = module.target(target_text, host, port)
    return ProbeRequest(target=target, check=target.checks[0], module=name)


def deadline(timeout: float, scrape_timeout: str | None, offset: float, cap: float) -> float:
    """The run's deadline: the check's timeout, lowered to Prometheus's scrape timeout (the request header
    X-Prometheus-Scrape-Timeout-Seconds) minus `offset`, so the answer arrives before Prometheus gives up, and
    to `cap` (what the HTTP server allows a handler)."""
    limit = min(timeout, cap)
    if scrape_timeout:
        try:
            seconds = float(scrape_timeout)
        except ValueError:
            raise ProbeRefused(400, "X-Prometheus-Scrape-Timeout-Seconds must be a number of seconds",
                               "bad_request") from None
        if seconds == seconds and seconds > 0:  # not NaN
            limit = min(limit, seconds - offset)
    return max(_MIN_DEADLINE, limit)


def select_families(text: bytes) -> bytes:
    """Only the per-check families of an exposition (HELP/TYPE blocks whose name has a per-check prefix)."""
    kept: list[bytes] = []
    keep = False
    for line in text.splitlines(keepends=True):
        if line.startswith(b"# HELP "):
            name = line[7:].split(b" ", 1)[0].decode()
            keep = name.startswith(_FAMILY_PREFIXES)
        if keep:
            kept.append(line)
    return b"".join(kept)


@dataclass
class _Probed:
    """One probed check's series and its latest result and verdict (for /api/status)."""

    metrics: Metrics
    result: Result | None = None
    verdict: str = "unknown"
    module: str | None = None


class OnDemand:
    """The series and latest results of /probe runs, and the counter of /probe requests by outcome."""

    def __init__(self, vantage: str, failure_series: str = "all", keep: int = DEFAULT_KEEP) -> None:
        self.vantage = vantage
        self.failure_series = failure_series
        self.keep = keep
        self._probed: OrderedDict[tuple[str, str, str], _Probed] = OrderedDict()
        self._registry = CollectorRegistry()
        self._requests = Counter("mailmon_probe_requests_total",
                                 "GET /probe requests by outcome: ok or failed (the check ran), busy (the concurrency "
                                 "bound was reached), bad_request, not_found, forbidden (host outside the allow-list).",
                                 ("vantage", "outcome"), registry=self._registry)
        for outcome in OUTCOMES:
            self._requests.labels(vantage, outcome)
        self._text: bytes | None = None  # the rendered counter until it changes (every scrape asks for it)

    def count(self, outcome: str) -> None:
        self._requests.labels(self.vantage, outcome).inc()
        self._text = None

    def exposition(self) -> bytes:
        """The process-wide /probe series (for /metrics), rendered again only after a count."""
        if self._text is None:
            self._text = generate_latest(self._registry)
        return self._text

    def series(self, request: ProbeRequest) -> Metrics:
        """The request's own series (created at their initial values on its first probe)."""
        return self._touch(request).metrics

    def _touch(self, request: ProbeRequest) -> _Probed:
        key = request.key
        probed = self._probed.pop(key, None)
        if probed is None:
            probed = _Probed(Metrics(CollectorRegistry(), self.vantage, self.failure_series), module=request.module)
            # Only this check: the answer carries its series and no other check's of the target.
            probed.metrics.add_target(replace(request.target, checks=(request.check,)))
        self._probed[key] = probed  # most recent last
        while len(self._probed) > self.keep:
            self._probed.popitem(last=False)
        return probed

    def record(self, request: ProbeRequest, result: Result, vantage_healthy: bool) -> tuple[str, bytes]:
        """Publish one /probe result to its own series; returns its verdict and the answer's body."""
        probed = self._touch(request)
        verdict = decide([classify_result(result, request.check.timeout)], vantage_healthy)
        probed.result, probed.verdict = result, verdict
        probed.metrics.record(result)
        probed.metrics.set_verdict(result.target, verdict)
        self.count("ok" if result.ok else "failed")
        return verdict, select_families(probed.metrics.check_exposition())

    def status(self) -> list[dict[str, object]]:
        """The latest /probe result of every kept (module, target, check), newest first (for /api/status)."""
        now = time.time()
        rows: list[dict[str, object]] = []
        for probed in reversed(self._probed.values()):
            result = probed.result
            if result is None:
                continue
            rows.append({**result.as_json(), "module": probed.module, "verdict": probed.verdict,
                         "summary": describe(probed.verdict, [result], self.vantage),
                         "age_seconds": round(now - result.started_at, 3)})
        return rows
