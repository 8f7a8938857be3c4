#!/usr/bin/env python3
"""What does serving /metrics cost at N targets, and what does the pre-rendered exposition buy? (Scale's hot spot.)

Builds the metrics a running monitor has for N targets × (smtp, imap, pop3) with `tls: none` (as bench/scale.py
does): `Metrics.add_target` for each, then one successful Result recorded per check and its verdict set, so every
series carries a real value. Then, in this one process, with nothing else running, for both settings of
`metrics.failure_series` (all: every failure counter pre-created at 0, the default; on_failure):

  prometheus_client   `generate_latest` over the very same samples (parsed back from the exposition and served by
                      a collector): the baseline, what rendering at scrape time costs (what mailmon did until
                      the exposition was pre-rendered)
  shipped             `Metrics.exposition()`: what `App._metrics` serves, joining text rendered on write
  gzip -1             what compressing the shipped body at level 1 would cost and save (Prometheus asks for gzip;
                      mailmon does not compress)

plus the costs moved to write time: `Metrics.record` per result, `Metrics.set_verdict` per change,
`Metrics.add_target` per target. The samples of shipped and baseline are compared first.

Usage: python bench/metrics_render.py [--targets 100,1000,5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import prometheus_client  # noqa: E402
from benchlib import machine_line, median  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.metrics_core import Metric  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from monitor.config import PROTOCOL_KINDS, Auth, Secret, Target, TlsSettings  # noqa: E402
from monitor.metrics import Metrics  # noqa: E402
from monitor.result import Result  # noqa: E402

STEPS = {"smtp": ("dns", "connect", "banner", "ehlo", "auth", "quit"),
         "imap": ("dns", "connect", "greeting", "capability", "login", "select", "logout"),
         "pop3": ("dns", "connect", "greeting", "user", "pass", "stat", "quit")}


def make_target(i: int) -> Target:
    checks = tuple(PROTOCOL_KINDS[name](port=port, tls_mode="none", interval=60.0, timeout=15.0)
                   for name, port in (("smtp", 25), ("imap", 143), ("pop3", 110)))
    return Target(name=f"t{i:05d}", host="127.0.0.1", tls=TlsSettings(), auth=Auth("u", Secret("p")), checks=checks)


def ok_result(target: str, check: str, now: float, jitter: float = 0.0) -> Result:
    phases = {p: 0.0004 + 0.0001 * k + jitter * random.random() for k, p in enumerate(STEPS[check])}
    return Result(target=target, check=check, vantage="bench", ok=True, started_at=now,
                  duration_seconds=sum(phases.values()), phases=phases, smtp_code=221 if check == "smtp" else None)


def build(n: int, failure_series: str) -> tuple[Metrics, float]:
    """The metrics of n targets with one result each; and the seconds `add_target` took in all."""
    metrics = Metrics(CollectorRegistry(), "bench", failure_series)
    now = time.time()
    adding = 0.0
    for i in range(n):
        target = make_target(i)
        t0 = time.perf_counter()
        metrics.add_target(target)
        adding += time.perf_counter() - t0
        for check in target.checks:
            metrics.record(ok_result(target.name, check.name, now))
        metrics.set_verdict(target.name, "ok")
    return metrics, adding


class Frozen:
    """A collector serving fixed metric families: prometheus_client renders them at every scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def samples_of(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return median(times), result


def per_call(fn: Callable[[int], None], count: int) -> float:
    t0 = time.perf_counter()
    for i in range(count):
        fn(i)
    return (time.perf_counter() - t0) / count


def measure(n: int, failure_series: str, repeat: int) -> bool:
    """Print the figures of one N and setting; False if the baseline does not carry the same samples."""
    metrics, adding = build(n, failure_series)
    shipped = metrics.exposition()
    baseline = CollectorRegistry()
    baseline.register(Frozen(text_string_to_metric_families(shipped.decode())))
    if samples_of(generate_latest(baseline)) != samples_of(shipped):
        print("  the baseline does not carry the same samples: not comparable")
        return False
    samples = sum(1 for line in shipped.split(b"\n") if line and not line.startswith(b"#"))
    print(f"\n== {n} targets ({3 * n} checks), metrics.failure_series: {failure_series}: {samples} samples "
          f"({samples / n:.0f} per target), {len(shipped) / 1e6:.1f} MB")
    t_base, _ = timed(lambda: generate_latest(baseline), max(1, min(repeat, 3)))
    t_ship, _ = timed(metrics.exposition, repeat)
    t_gzip, packed = timed(lambda: gzip.compress(shipped, compresslevel=1), 1)
    print(f"  prometheus_client render   {1000 * t_base:9.1f} ms  ({1e6 * t_base / samples:.2f} us/sample)")
    print(f"  shipped (pre-rendered)     {1000 * t_ship:9.1f} ms  ({t_base / t_ship:.0f}x faster; "
          f"goal < 100 ms at 5,000 targets: {'met' if t_ship < 0.1 else 'missed'} for this N)")
    print(f"  gzip -1 of the body        {1000 * t_gzip:9.1f} ms  -> {len(packed) / 1e6:.2f} MB")
    # What /metrics does (issue 14): the loop takes references, a worker thread builds the body; gzip keeps each
    # family's compressed text until it changes. Between two scrapes 15 s apart a quarter of the checks ran
    # (60 s interval): re-record that many results (new durations and timestamps), then scrape.
    t_take, make_body = timed(lambda: metrics.scrape(True), repeat)
    make_body()  # every family compressed once, as after the first scrape
    now = time.time()
    checks = [(f"t{i:05d}", check) for i in range(n) for check in ("smtp", "imap", "pop3")]
    quarter = checks[: len(checks) // 4]

    def after_a_quarter() -> bytes:
        for name, check in quarter:
            metrics.record(ok_result(name, check, now + 15, jitter=1e-6))
        t0 = time.perf_counter()
        body = metrics.scrape(True)()
        times.append(time.perf_counter() - t0)
        return body

    times: list[float] = []
    served = b""
    for _ in range(repeat):
        served = after_a_quarter()
    assert gzip.decompress(served) == metrics.exposition()
    print(f"  /metrics gzip as served    {1000 * median(times):9.1f} ms in the worker thread after 1/4 of the checks "
          f"ran (unchanged families reused) -> {len(served) / 1e6:.2f} MB; {1000 * t_take:.1f} ms on the loop")
    now = time.time()
    results = [ok_result(f"t{i % n:05d}", "smtp", now) for i in range(5000)]
    record = per_call(lambda i: metrics.record(results[i]), len(results))
    verdict = per_call(lambda i: metrics.set_verdict("t00000", "ok" if i % 2 else "degraded"), 5000)
    print(f"  moved to write time: record {1e6 * record:.1f} us/result, set_verdict {1e6 * verdict:.1f} us "
          f"per change, add_target {1e6 * adding / n:.0f} us/target ({adding:.2f} s for all)")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="100,1000,5000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(x) for x in args.targets.split(",")]
    if any(not 1 <= n <= 20_000 for n in sizes) or not 1 <= args.repeat <= 20:
        parser.error("--targets 1..20000, --repeat 1..20")
    print(machine_line())
    print(f"prometheus_client {getattr(prometheus_client, '__version__', '(version not exported)')}; median of "
          f"{args.repeat} renders each, single thread, nothing else running in this process")

    for n in sizes:
        for failure_series in ("all", "on_failure"):
            if not measure(n, failure_series, args.repeat):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
