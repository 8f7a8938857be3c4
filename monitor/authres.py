"""What the receiving side said about a delivered probe: Authentication-Results (RFC 8601) and the Received chain.

A round trip that arrives proves delivery, not reputation: the receiver's `Authentication-Results` header says
whether SPF, DKIM, DMARC (and ARC) passed, i.e. whether other receivers would junk or reject the same mail. The
`Received` headers give the path: how many hops, and how long each took (from the timestamps the MTAs wrote).

Only the receiving server's headers count: headers are prepended, so the topmost `Authentication-Results` is the
receiver's, and so are the others with its authserv-id; the rest may come from anywhere, including the sender.
Label values are bounded: methods are the four below, results the RFC 8601 registry's (anything else: `other`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from monitor.result import Result

__all__ = ["AUTH_METHODS", "AUTH_RESULTS", "BAD_RESULTS", "HOP_BUCKETS", "LoopCollector", "auth_note",
           "hop_delays", "parse_authentication_results", "read_headers"]

AUTH_METHODS = ("spf", "dkim", "dmarc", "arc")
# RFC 8601 2.7 (and 2.7.2's legacy `hardfail` of SPF); `other` stands for anything outside the registry.
AUTH_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy", "hardfail",
                "other")
# Results that mean "delivered here, but others would junk or reject it".
BAD_RESULTS = frozenset({"fail", "permerror", "hardfail"})
HOP_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0)
# Dkim keeps the best of several signatures (one valid signature is what DMARC needs); the others the topmost.
_DKIM_ORDER = ("pass", "policy", "neutral", "none", "softfail", "temperror", "other", "permerror", "fail",
               "hardfail")

_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_RESINFO = re.compile(r"^\s*([A-Za-z0-9_-]+)(?:/\d+)?\s*=\s*([A-Za-z0-9_-]+)")


def _rank(result: str) -> int:
    return _DKIM_ORDER.index(result)


def _uncomment(text: str) -> str:
    """Remove (nested) CFWS comments."""
    previous = None
    while previous != text:
        previous, text = text, _COMMENT.sub(" ", text)
    return text


def parse_authentication_results(values: Iterable[str]) -> dict[str, str]:
    """{method: result} for spf, dkim, dmarc and arc, from the header values in message order (topmost first).

    Only headers of the topmost one's authserv-id count (RFC 8601 5: the receiver's own; several filters of one
    receiver, e.g. an SPF policy service and a DKIM milter, each add one); the first result per method wins, except
    that dkim keeps the best of several signatures."""
    found: dict[str, str] = {}
    receiver: str | None = None
    for value in values:
        parts = _uncomment(" ".join(value.split())).split(";")
        words = parts[0].split()
        authserv_id = words[0].lower() if words else ""
        if receiver is None:
            receiver = authserv_id
        elif authserv_id != receiver:
            continue  # another server's (or a forged) header
        for resinfo in parts[1:]:
            match = _RESINFO.match(resinfo)
            if match is None:
                continue
            method, result = match.group(1).lower(), match.group(2).lower()
            if method not in AUTH_METHODS:
                continue
            result = result if result in AUTH_RESULTS else "other"
            if method not in found or (method == "dkim" and _rank(result) < _rank(found[method])):
                found[method] = result
    return found


def hop_delays(received: Iterable[str], sent: float | None) -> list[float]:
    """Seconds each hop took, oldest first: the gap between consecutive `Received` timestamps (the first hop from
    `sent`, when known). A header without a readable date is skipped; clock skew never gives a negative delay."""
    stamps: list[float] = []
    for value in received:
        _, _, date = value.rpartition(";")
        try:
            stamps.append(parsedate_to_datetime(date.strip()).timestamp())
        except (TypeError, ValueError, IndexError):
            continue
    stamps.reverse()  # headers are prepended: the last one is the first hop
    if sent is not None:
        stamps.insert(0, sent)
    return [max(0.0, later - earlier) for earlier, later in itertools.pairwise(stamps)]


def read_headers(block: bytes, sent: float | None) -> tuple[dict[str, str], int, list[float]]:
    """The probe's header block → (auth results, hop count, per-hop delays)."""
    message = BytesHeaderParser().parsebytes(block)
    received = [str(v) for v in message.get_all("Received") or []]
    results = parse_authentication_results(str(v) for v in message.get_all("Authentication-Results") or [])
    return results, len(received), hop_delays(received, sent)


def auth_note(results: list[Result]) -> str:
    """" The probe arrived, but DKIM says fail: ..." for round trips whose receiver judged the probe badly."""
    notes = []
    for result in results:
        bad = [f"{method.upper()} {value}" for method, value in sorted(result.auth_results.items())
               if value in BAD_RESULTS]
        if result.ok and bad:
            notes.append(f" The round trip via {(result.via or '').upper()} arrived, but the receiver's "
                         f"Authentication-Results say {', '.join(bad)}: other receivers would junk or reject it.")
    return "".join(notes)


@dataclass
class _LoopState:
    auth: dict[str, str] = field(default_factory=dict)
    hops: int | None = None
    buckets: list[int] = field(default_factory=lambda: [0] * len(HOP_BUCKETS))
    count: int = 0
    total: float = 0.0


class LoopCollector(Collector):
    """Round trips' Authentication-Results (a state set per method), hop count and per-hop delay histogram.

    `mailmon_roundtrip_auth_result{method, result}` is 1 for the latest result and 0 for the other results of the
    registry, for every method the receiver has reported (absent before: "not reported" is not "fail").
    """

    def __init__(self, vantage: str) -> None:
        self.vantage = vantage
        self.states: dict[tuple[str, str], _LoopState] = {}

    def record(self, result: Result) -> None:
        if not result.via or not result.ok or result.hops is None:
            return
        state = self.states.setdefault((result.target, result.via), _LoopState())
        state.auth.update(result.auth_results)
        state.hops = result.hops
        for delay in result.hop_delays:
            state.count += 1
            state.total += delay
            for index, bound in enumerate(HOP_BUCKETS):
                if delay <= bound:
                    state.buckets[index] += 1

    def forget(self, targets: Iterable[str]) -> None:
        keep = set(targets)
        self.states = {key: state for key, state in self.states.items() if key[0] in keep}

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        auth = GaugeMetricFamily("mailmon_roundtrip_auth_result", "The receiver's Authentication-Results (RFC 8601) "
                                 "for the latest delivered probe: 1 for the result of each method, 0 for the others.",
                                 labels=("vantage", "target", "via", "method", "result"))
        hops = GaugeMetricFamily("mailmon_roundtrip_hops", "Received headers of the latest delivered probe "
                                 "(hops on its way).", labels=("vantage", "target", "via"))
        delays = HistogramMetricFamily("mailmon_roundtrip_hop_delay_seconds", "Time each hop took, from the "
                                       "Received timestamps of delivered probes (whole seconds: RFC 5322 dates).",
                                       labels=("vantage", "target", "via"))
        for (target, via), state in sorted(self.states.items()):
            for method, value in sorted(state.auth.items()):
                for option in AUTH_RESULTS:
                    auth.add_metric((self.vantage, target, via, method, option), 1.0 if option == value else 0.0)
            if state.hops is not None:
                hops.add_metric((self.vantage, target, via), float(state.hops))
            cumulative = [(str(bound), float(n)) for bound, n in zip(HOP_BUCKETS, state.buckets, strict=True)]
            delays.add_metric((self.vantage, target, via), [*cumulative, ("+Inf", float(state.count))],
                              state.total)
        yield auth
        yield hops
        yield delays
