#!/usr/bin/env python3
"""What does rendering /metrics cost, and what would the candidate fixes buy? (The scale benchmark's hot spot.)

Builds the registry a running monitor has for N targets × (smtp, imap, pop3) with `tls: none` (as bench/scale.py
does): `Metrics.add_target` for each, then one successful Result recorded per check and its verdict set, so every
series carries a real value. Then, in this one process, with nothing else running:

  with _created    `prometheus_client.generate_latest(registry)` with prometheus_client's default
                   (`enable_created_metrics()`): what `App._metrics` served before commit 30c0f3d
  no _created      the same after `prometheus_client.disable_created_metrics()` (drops every `*_created` sample:
                   one per counter series; the toggle is read at render time): what it serves since 30c0f3d
                   (monitor/metrics.py calls it at import)
  cached lines     a prototype renderer (below, bench-only) that keeps each series' `name{labels} ` prefix as
                   bytes, made once, and on every scrape only formats the values; no _created samples. Its output is
                   checked against generate_latest's (same samples, same values) before it is timed.
  cached, no 0 failure series   the same, leaving out failure counters that are still 0: what creating them on
                   first failure (instead of up front, as now) would save. A semantic change, measured for scale.
  gzip -1          what compressing the cached output at level 1 costs and saves (Prometheus asks for gzip)

and the series census: samples per family, per target.

Usage: python bench/metrics_render.py [--targets 100,1000,5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import prometheus_client  # noqa: E402
import prometheus_client.metrics as pm  # noqa: E402
from benchlib import machine_line, median  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

from monitor.config import Auth, CheckSettings, Secret, Target, TlsSettings  # noqa: E402
from monitor.metrics import Metrics  # noqa: E402
from monitor.result import Result  # noqa: E402


def build(n: int) -> tuple[CollectorRegistry, Metrics]:
    registry = CollectorRegistry()
    metrics = Metrics(registry, "bench")
    now = time.time()
    for i in range(n):
        checks = tuple(CheckSettings(name=name, port=port, tls_mode="none", interval=60.0, timeout=15.0)
                       for name, port in (("smtp", 25), ("imap", 143), ("pop3", 110)))
        target = Target(name=f"t{i:05d}", host="127.0.0.1", tls=TlsSettings(), auth=Auth("u", Secret("p")),
                        checks=checks)
        metrics.add_target(target)
        for check in checks:
            phases = {p: 0.0004 + 0.0001 * k for k, p in enumerate(_steps(check.name))}
            metrics.record(Result(target=target.name, check=check.name, vantage="bench", ok=True, started_at=now,
                                  duration_seconds=sum(phases.values()), phases=phases,
                                  smtp_code=221 if check.name == "smtp" else None))
        metrics.set_verdict(target.name, "ok")
    return registry, metrics


def _steps(name: str) -> tuple[str, ...]:
    return {"smtp": ("dns", "connect", "banner", "ehlo", "auth", "quit"),
            "imap": ("dns", "connect", "greeting", "capability", "login", "select", "logout"),
            "pop3": ("dns", "connect", "greeting", "user", "pass", "stat", "quit")}[name]


class CachedRenderer:
    """Prototype: the text exposition of labelled gauges and counters from cached per-series lines.

    Per family it keeps a list of (value holder, b'name{labels} ') pairs, built once and rebuilt only when the
    family's set of series changes (a target added or removed); a scrape then only reads each float and formats
    it. Families it does not handle (histograms, unlabelled metrics: a handful of samples) are rendered by
    prometheus_client through a small registry of their own. No `_created` samples. `skip_zero_failures` leaves
    out failure counters still at 0, as if they were created on first failure instead of up front (a semantic
    change: it is measured only to show what the pre-created series cost). A fix in monitor/ would look like this,
    as a custom collector or as the body of App._metrics.
    """

    def __init__(self, registry: CollectorRegistry, skip_zero_failures: bool = False) -> None:
        self.families: list[Any] = []
        self.rest = CollectorRegistry(auto_describe=False)
        for collector in list(registry._collector_to_names):
            if isinstance(collector, (Gauge, Counter)) and collector._labelnames:
                self.families.append(collector)
            else:
                self.rest.register(collector)
        self.skip_zero_failures = skip_zero_failures
        self.cache: dict[int, tuple[int, bytes, list[tuple[Any, bytes]]]] = {}

    def _lines(self, family: Any) -> tuple[bytes, list[tuple[Any, bytes]]]:
        size = len(family._metrics)
        cached = self.cache.get(id(family))
        if cached is not None and cached[0] == size:
            return cached[1], cached[2]
        is_counter = isinstance(family, Counter)
        name = family._name + ("_total" if is_counter else "")
        doc = family._documentation.replace("\\", r"\\").replace("\n", r"\n")
        head = f"# HELP {name} {doc}\n# TYPE {name} {'counter' if is_counter else 'gauge'}\n".encode()
        with family._lock:
            children = list(family._metrics.items())
        pairs = []
        skip = self.skip_zero_failures and family._name == "mailmon_check_failures"
        for labelvalues, child in children:
            if skip and child._value._value == 0.0:
                continue  # as if never created (the registry here is static: no failure happens while timing)
            labels = ",".join(f'{k}="{_escape(v)}"'
                              for k, v in sorted(zip(family._labelnames, labelvalues, strict=True)))
            pairs.append((child._value, f"{name}{{{labels}}} ".encode()))
        self.cache[id(family)] = (size, head, pairs)
        return head, pairs

    def render(self) -> bytes:
        out: list[bytes] = []
        for family in self.families:
            head, pairs = self._lines(family)
            out.append(head)
            fmt = _format
            for holder, prefix in pairs:
                out.append(prefix + fmt(holder._value))  # a float attribute: reading it needs no lock under the GIL
        created = pm._use_created
        pm._use_created = False
        try:
            out.append(generate_latest(self.rest))
        finally:
            pm._use_created = created
        return b"".join(out)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_INTS = {float(i): f"{i}.0\n".encode() for i in range(0, 1000)}


def _format(value: float) -> bytes:
    fast = _INTS.get(value)
    if fast is not None:
        return fast
    return (floatToGoString(value) + "\n").encode()


def samples_of(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="100,1000,5000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(x) for x in args.targets.split(",")]
    if any(not 1 <= n <= 20_000 for n in sizes) or not 1 <= args.repeat <= 10:
        parser.error("--targets 1..20000, --repeat 1..10")
    print(machine_line())
    print(f"prometheus_client {getattr(prometheus_client, '__version__', '(version not exported)')}; median of "
          f"{args.repeat} renders each, single thread, nothing else running in this process")

    # Correctness of the prototype on a small registry first.
    registry, _ = build(20)
    renderer = CachedRenderer(registry)
    reference, candidate = samples_of(generate_latest(registry)), samples_of(renderer.render())
    same = reference == candidate and not any(math.isnan(v) for v in candidate.values())
    print(f"prototype check (20 targets): {len(candidate)} samples, identical to generate_latest (without _created):"
          f" {same}")
    if not same:
        missing = set(reference) ^ set(candidate)
        print(f"  differing samples: {sorted(missing)[:5]}")
        return 1

    for n in sizes:
        registry, _ = build(n)
        print(f"\n== {n} targets ({3 * n} checks)")
        prometheus_client.enable_created_metrics()  # monitor.metrics disables them at import (since 30c0f3d)
        t_current, body = timed(lambda r=registry: generate_latest(r), args.repeat)
        lines = [line for line in body.split(b"\n") if line and not line.startswith(b"#")]
        census: dict[str, int] = {}
        for line in lines:
            name = line.split(b"{", 1)[0].split(b" ", 1)[0].decode()
            census[name] = census.get(name, 0) + 1
        print(f"  with _created              {1000 * t_current:9.1f} ms   {len(body) / 1e6:7.2f} MB   "
              f"{len(lines)} samples ({len(lines) / n:.0f} per target), "
              f"{1e6 * t_current / len(lines):.2f} us/sample")
        top = sorted(census.items(), key=lambda kv: -kv[1])[:6]
        print("    largest families: " + ", ".join(f"{k} {v / n:.0f}/target" for k, v in top))
        prometheus_client.disable_created_metrics()
        t_nocreated, body2 = timed(lambda r=registry: generate_latest(r), args.repeat)
        lines2 = sum(1 for line in body2.split(b"\n") if line and not line.startswith(b"#"))
        print(f"  no _created                {1000 * t_nocreated:9.1f} ms   {len(body2) / 1e6:7.2f} MB   "
              f"{lines2} samples   ({t_nocreated / t_current:.2f}x the time)")
        renderer = CachedRenderer(registry)
        t_cold, _ = timed(renderer.render, 1)
        t_warm, body3 = timed(renderer.render, args.repeat)
        print(f"  cached lines (warm)        {1000 * t_warm:9.1f} ms   {len(body3) / 1e6:7.2f} MB   "
              f"({t_warm / t_current:.3f}x the time; first render, building the cache: {1000 * t_cold:.1f} ms)")
        lean = CachedRenderer(registry, skip_zero_failures=True)
        lean.render()
        t_lean, body4 = timed(lean.render, args.repeat)
        lines4 = sum(1 for line in body4.split(b"\n") if line and not line.startswith(b"#"))
        print(f"  cached, no 0 failure series {1000 * t_lean:7.1f} ms   {len(body4) / 1e6:7.2f} MB   {lines4} samples "
              f"({t_lean / t_current:.3f}x the time)")
        t_gzip, packed = timed(lambda b=body3: gzip.compress(b, compresslevel=1), 1)
        print(f"  gzip -1 of that            {1000 * t_gzip:9.1f} ms   {len(packed) / 1e6:7.2f} MB")
        verdict = {True: "meets", False: "misses"}
        print(f"  goal (< 100 ms at 5,000 targets): with _created {verdict[t_current < 0.1]}, no _created "
              f"{verdict[t_nocreated < 0.1]}, cached {verdict[t_warm < 0.1]}, cached without 0 failure series "
              f"{verdict[t_lean < 0.1]} (this N)")
        del registry, body, body2, body3, body4, renderer, lean
    return 0


if __name__ == "__main__":
    sys.exit(main())
