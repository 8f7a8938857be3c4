#!/usr/bin/env python3
"""How many targets can one mailmon process keep on schedule? N targets × (smtp, imap, pop3) against local fakes.

For each N a real `monitor.app.App` runs in a child process (its Config built in code: N targets, all pointing
at bench/fakes.py's plaintext SMTP/IMAP/POP3 servers on 127.0.0.1, `tls: none`, AUTH/LOGIN/USER-PASS on,
interval 60 s, timeout 15 s, concurrency 64 unless told otherwise) for a bounded window. The fakes run in their
own process; their CPU is reported apart. This process watches the child from outside:

  lag        every `mailmon_scheduler_lag_seconds` observation, recorded raw in the child (the bench wraps
             `Metrics.record_lag`, which the scheduler calls with due→start delay), so p50/p99 are exact rather
             than histogram buckets; "steady" = after the first interval (every check has had its first run)
  loop stall how late a 10 ms sleep in the child wakes up (a harness ticker task), p99 and max
  CPU        utime+stime of the child from /proc, as % of one core, over the whole window and steady state
  RSS        VmRSS at the end and VmHWM
  /metrics   GET every --scrape-every seconds during the run (like Prometheus would; one after another, never
             two at once): time to the last byte and size; the median and max are reported. With
             --scrape-every 0 there is only the final GET: the probe engine measured on its own.
  keeping up runs_total vs the runs the schedule asked for, skipped_total, failures_total (from the last scrape)

Usage: python bench/scale.py [--targets 100,1000,5000] [--window 180] [--interval 60] [--concurrency 64]
                             [--scrape-every 15] [--failure-series all|on_failure] [--profile SECONDS]
                             [--before REF]
--before REF: first run every N on the monitor code of git REF (`git archive` into a temporary directory, driven
by this same harness), then on this checkout: before and after figures from one run of the bench.
--profile: py-spy samples the child (100 Hz, only the thread holding the GIL, stacks by thread) for SECONDS
starting after the first interval; the figures of that run then include py-spy's overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import (  # noqa: E402
    http_get,
    loop_lateness,
    machine_line,
    median,
    monitor_of,
    observe_results,
    pct,
    print_profile,
    proc_cpu,
    proc_status_kb,
    stop,
    top_frames,
)

SAMPLE = re.compile(rb"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", re.MULTILINE)


# --- the child: one mailmon App ---------------------------------------------------------------------------------

async def child_main(args: argparse.Namespace) -> None:
    if args.code:  # the monitor of another revision (--before), ahead of this checkout's
        sys.path.insert(0, args.code)
    from monitor.app import App
    from monitor.config import PROTOCOL_KINDS, Auth, CheckSettings, Config, Secret, Target, TlsSettings
    from monitor.logs import setup_logging
    from monitor.result import Result

    setup_logging("warning")
    ports = json.loads(args.ports)
    targets = []
    for i in range(args.targets):
        checks = tuple(PROTOCOL_KINDS[name](port=int(ports[name]), tls_mode="none", interval=args.interval,
                                           timeout=15.0) for name in ("smtp", "imap", "pop3"))
        targets.append(Target(name=f"t{i:05d}", host="127.0.0.1", tls=TlsSettings(),
                              auth=Auth("probe@bench.test", Secret("bench")), checks=checks))
    # No --failure-series: the config's default of the code under test.
    extra = {"failure_series": args.failure_series} if args.failure_series else {}
    config = Config(vantage="bench", listen=args.listen, interval=args.interval, timeout=15.0,
                    concurrency=args.concurrency, targets=tuple(targets), source="<bench>", **extra)
    app = App(config)
    print(json.dumps({"failure_series": config.failure_series}), flush=True)
    loop = asyncio.get_running_loop()
    lags: list[tuple[float, float]] = []
    record_lag = app.metrics.record_lag

    def observed_lag(seconds: float) -> None:  # the scheduler's own figure, kept raw as well
        lags.append((loop.time(), seconds))
        record_lag(seconds)

    app.metrics.record_lag = observed_lag  # type: ignore[method-assign]
    skips: list[float] = []
    record_skip = app.metrics.record_skip

    def observed_skip(target: str, check: CheckSettings) -> None:
        skips.append(loop.time())
        record_skip(target, check)

    app.metrics.record_skip = observed_skip  # type: ignore[method-assign]
    results: list[tuple[float, str, float, bool]] = []

    def observed_result(result: Result) -> None:  # one more sink: when each run ended, how long it said it took
        results.append((loop.time(), result.check, result.duration_seconds, result.ok))

    observe_results(app, observed_result)
    stalls: list[tuple[float, float]] = []

    collections: list[tuple[float, int, float]] = []  # (when, generation, seconds) of every garbage collection
    gc_started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            collections.append((loop.time(), info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(on_gc)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = loop.time()
    await app.start()
    tick = asyncio.create_task(loop_lateness(stalls, 0.01))
    print(json.dumps({"started": started}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    tick.cancel()
    await app.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gc.callbacks.remove(on_gc)
    Path(args.out).write_text(json.dumps({"started": started, "lags": lags, "stalls": stalls, "skips": skips,
                                          "collections": collections,
                                          "results": results, "cpu": usage.ru_utime + usage.ru_stime}))


# --- the parent: drive one N and measure -------------------------------------------------------------------------

def parse_metrics(body: bytes) -> dict[str, float]:
    """Sum of the samples of each metric name (labels folded), plus the lag histogram's buckets."""
    sums: dict[str, float] = {}
    for match in SAMPLE.finditer(body):
        name = match.group(1).decode()
        labels = (match.group(2) or b"").decode()
        value = float(match.group(3))
        if name == "mailmon_scheduler_lag_seconds_bucket":
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                sums[f"lag_le_{le.group(1)}"] = value
        sums[name] = sums.get(name, 0.0) + value
    return sums


def hist_quantile(buckets: dict[str, float], q: float) -> float:
    """Prometheus-style histogram_quantile over `lag_le_*` cumulative buckets."""
    pairs = sorted(((float(k[7:]), v) for k, v in buckets.items() if k.startswith("lag_le_")))
    if not pairs or pairs[-1][1] == 0:
        return float("nan")
    total = pairs[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in pairs:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_count) / max(count - prev_count, 1e-9))
        prev_le, prev_count = le, count
    return float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_one(n: int, args: argparse.Namespace, workdir: Path, code: str = "") -> dict[str, Any]:
    fakes = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fakes.py"), "--max-seconds",
                              str(args.window + 300)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert fakes.stdout is not None and fakes.stdin is not None
    ports = fakes.stdout.readline().strip()
    port = free_port()
    out = workdir / f"child-{n}.json"
    log = open(workdir / f"child-{n}.log", "w")  # noqa: SIM115
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", "--targets", str(n), "--ports", ports, "--listen", f"127.0.0.1:{port}",
         "--interval", str(args.interval), "--concurrency", str(args.concurrency), "--out", str(out),
         "--max-seconds", str(args.window + 120), "--code", code,
         *(["--failure-series", args.failure_series] if args.failure_series else [])],
        stdout=subprocess.PIPE, stderr=log, text=True)
    assert child.stdout is not None
    failure_series = json.loads(child.stdout.readline())["failure_series"]
    json.loads(child.stdout.readline())  # started
    t_start = time.monotonic()
    cpu_start, fakes_cpu_start = proc_cpu(child.pid), proc_cpu(fakes.pid)
    main_start = proc_cpu(child.pid, child.pid)  # the event loop's thread; the others render /metrics, resolve
    main_steady: float | None = None
    steady_at = t_start + args.interval
    cpu_steady: float | None = None
    fakes_cpu_steady: float | None = None
    scrapes: list[dict[str, float]] = []
    last_body = b""
    profile: subprocess.Popen[bytes] | None = None
    profile_raw = workdir / f"profile-{n}.txt"
    next_scrape = t_start + args.scrape_every if args.scrape_every > 0 else float("inf")
    deadline = t_start + args.window
    rss_samples: list[int] = []
    while (now := time.monotonic()) < deadline:
        if cpu_steady is None and now >= steady_at:
            cpu_steady, fakes_cpu_steady = proc_cpu(child.pid), proc_cpu(fakes.pid)
            main_steady = proc_cpu(child.pid, child.pid)
            if args.profile:
                # --gil: only the thread holding the GIL is sampled, which is the resource the loop and the
                # /metrics renderer compete for; --threads: each stack starts with its thread.
                profile = subprocess.Popen(["py-spy", "record", "-p", str(child.pid), "-d", str(int(args.profile)),
                                            "-r", "100", "-f", "raw", "--gil", "--threads", "-o", str(profile_raw)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if now >= next_scrape:
            t0 = time.monotonic()
            status, body, seconds, wire = http_get("127.0.0.1", port, "/metrics", timeout=300,
                                                   accept_gzip=args.gzip)
            scrapes.append({"at": t0 - t_start, "seconds": seconds, "bytes": len(body), "wire": wire,
                            "status": status,
                            "mono_start": t0, "mono_end": t0 + seconds})
            last_body = body
            next_scrape = max(next_scrape + args.scrape_every, time.monotonic() + 1)
        rss_samples.append(proc_status_kb(child.pid, "VmRSS"))
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    t_end = time.monotonic()
    cpu_end, fakes_cpu_end = proc_cpu(child.pid), proc_cpu(fakes.pid)
    main_end = proc_cpu(child.pid, child.pid)
    # The last scrape, at the end of the window, gives the counters.
    status, body, seconds, wire = http_get("127.0.0.1", port, "/metrics", timeout=300, accept_gzip=args.gzip)
    scrapes.append({"at": time.monotonic() - t_start, "seconds": seconds, "bytes": len(body), "wire": wire,
                    "status": status,
                    "mono_start": t_end, "mono_end": t_end + seconds})
    last_body = body or last_body
    rss_end = proc_status_kb(child.pid, "VmRSS")
    hwm = proc_status_kb(child.pid, "VmHWM")
    if profile is not None:
        try:
            profile.wait(timeout=args.profile + 60)
        except subprocess.TimeoutExpired:
            profile.kill()
            profile.wait()
    stop(child, 60)
    log.close()
    fakes.stdin.close()
    served = json.loads(fakes.stdout.readline() or "{}").get("served", {})
    fakes.wait(timeout=30)
    data = json.loads(out.read_text())
    lags = data["lags"]
    stalls = data["stalls"]
    started = data["started"]
    steady_from = started + args.interval
    end_loop = started + (t_end - t_start)  # loop.time() and time.monotonic() share CLOCK_MONOTONIC
    # Only what happened inside the window: the final GET (which can take many seconds) comes after it.
    lags = [(t, lag) for t, lag in lags if t <= end_loop]
    stalls = [(t, st) for t, st in stalls if t <= end_loop]
    collections = [(t, g, sec) for t, g, sec in data["collections"] if t <= end_loop]
    all_lags = [lag for _, lag in lags]
    steady_lags = [lag for t, lag in lags if t >= steady_from]
    # Lags of runs that became due while a /metrics scrape was being rendered, versus the others.
    windows = [(s["mono_start"], s["mono_end"]) for s in scrapes]

    def in_scrape(t: float) -> bool:
        return any(a <= t <= b + 0.05 for a, b in windows)

    lags_scrape = [lag for t, lag in lags if t >= steady_from and in_scrape(t)]
    lags_quiet = [lag for t, lag in lags if t >= steady_from and not in_scrape(t)]
    runs = data["results"]
    skips = data["skips"]
    steady_runs = [r for r in runs if steady_from <= r[0] <= end_loop]
    steady_span = max(1e-9, end_loop - steady_from)
    durations: dict[str, list[float]] = {}
    for _, check, seconds, _ok in steady_runs:
        durations.setdefault(check, []).append(seconds)
    metrics = parse_metrics(last_body)
    checks = 3 * n
    window = t_end - t_start
    series = sum(1 for line in last_body.splitlines() if line and not line.startswith(b"#"))
    result: dict[str, Any] = {
        "targets": n, "checks": checks, "interval": args.interval, "concurrency": args.concurrency,
        "scrape_every": args.scrape_every, "failure_series": failure_series, "code": code or "this checkout",
        "window_s": window,
        "runs_total": metrics.get("mailmon_check_runs_total", 0.0),
        "scheduled_rate_per_s": checks / args.interval,
        "skipped_total": metrics.get("mailmon_check_skipped_total", 0.0),
        "failures_total": metrics.get("mailmon_check_failures_total", 0.0),
        "success_now": metrics.get("mailmon_check_success", 0.0),
        "lag_n": len(all_lags),
        "lag_p50": pct(all_lags, 0.5), "lag_p99": pct(all_lags, 0.99), "lag_max": max(all_lags, default=float("nan")),
        "lag_steady_p50": pct(steady_lags, 0.5), "lag_steady_p99": pct(steady_lags, 0.99),
        "lag_steady_n": len(steady_lags),
        "lag_steady_p99_during_scrape": pct(lags_scrape, 0.99), "lag_steady_n_during_scrape": len(lags_scrape),
        "lag_steady_p99_outside_scrape": pct(lags_quiet, 0.99),
        "lag_hist_p50": hist_quantile(metrics, 0.5), "lag_hist_p99": hist_quantile(metrics, 0.99),
        # Garbage collection in the steady state only: start-up (8 s of add_target at 5,000 targets) collects a lot.
        "gc_gen2_n": sum(1 for t, g, _sec in collections if g == 2 and t >= steady_from),
        "gc_gen2_max_s": max((sec for t, g, sec in collections if g == 2 and t >= steady_from), default=0.0),
        "gc_total_s": sum(sec for t, _g, sec in collections if t >= steady_from),
        "gc_steady_s": end_loop - steady_from,
        "stall_p99": pct([s for _, s in stalls], 0.99), "stall_max": max((s for _, s in stalls), default=float("nan")),
        "runs_recorded": len(runs), "skips_recorded": len(skips),
        "steady_runs_per_s": len(steady_runs) / steady_span,
        "steady_skips": sum(1 for t in skips if steady_from <= t <= end_loop),
        "steady_failed": sum(1 for r in steady_runs if not r[3]),
        "duration_p50_ms": {c: 1000 * pct(v, 0.5) for c, v in durations.items()},
        "duration_p99_ms": {c: 1000 * pct(v, 0.99) for c, v in durations.items()},
        "cpu_pct": 100 * (cpu_end - cpu_start) / window,
        "main_thread_cpu_pct": 100 * (main_end - main_start) / window,
        "main_thread_cpu_steady_pct": (100 * (main_end - main_steady) / (t_end - steady_at)
                                       if main_steady is not None else None),
        "cpu_steady_pct": (100 * (cpu_end - cpu_steady) / (t_end - steady_at)) if cpu_steady is not None else None,
        "fakes_cpu_pct": 100 * (fakes_cpu_end - fakes_cpu_start) / window,
        "fakes_cpu_steady_pct": (100 * (fakes_cpu_end - fakes_cpu_steady) / (t_end - steady_at)
                                 if fakes_cpu_steady is not None else None),
        "cpu_ms_per_run": 1000 * (cpu_end - cpu_start) / max(1.0, metrics.get("mailmon_check_runs_total", 0.0)),
        "rss_end_mb": rss_end / 1024, "vmhwm_mb": hwm / 1024, "rss_max_sampled_mb": max(rss_samples, default=0) / 1024,
        "scrape_median_s": median([s["seconds"] for s in scrapes]),
        "scrape_max_s": max(s["seconds"] for s in scrapes),
        "scrape_n": len(scrapes),
        "scrape_bytes": scrapes[-1]["bytes"], "scrape_wire_bytes": scrapes[-1]["wire"], "gzip": args.gzip,
        "series": series, "series_per_check": series / checks,
        "fakes_served": served,
        "scrapes": [{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items() if not k.startswith("mono")}
                    for s in scrapes],
    }
    if args.profile and profile_raw.exists():
        own, inclusive, total = top_frames(profile_raw, limit=40)
        result["profile"] = {"file": str(profile_raw), "samples": total, "self": own, "inclusive": inclusive}
    return result


def report(r: dict[str, Any]) -> None:
    def f(x: Any, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
        return "n/a" if x is None or x != x else f"{x * scale:.{digits}f}{unit}"

    print(f"\n== code: {r['code']}")
    print(f"== N={r['targets']} targets, {r['checks']} checks, interval {r['interval']:.0f}s, "
          f"concurrency {r['concurrency']}, window {r['window_s']:.0f}s, /metrics GET every "
          f"{r['scrape_every']:g}s (0: only at the end), metrics.failure_series: {r['failure_series']}")
    print(f"  scheduled rate          {r['scheduled_rate_per_s']:.1f} checks/s")
    print(f"  runs_total              {r['runs_total']:.0f} over the window")
    print(f"  skipped_total           {r['skipped_total']:.0f}    failures_total {r['failures_total']:.0f}    "
          f"success gauges at 1: {r['success_now']:.0f}/{r['checks']}")
    print(f"  lag p50 / p99 / max     {f(r['lag_p50'], ' ms', 1000, 2)} / {f(r['lag_p99'], ' ms', 1000, 2)} / "
          f"{f(r['lag_max'], ' ms', 1000, 1)}   (n={r['lag_n']}, raw)")
    print(f"  lag steady p50 / p99    {f(r['lag_steady_p50'], ' ms', 1000, 2)} / "
          f"{f(r['lag_steady_p99'], ' ms', 1000, 2)}   (n={r['lag_steady_n']}; p99 while /metrics renders "
          f"{f(r['lag_steady_p99_during_scrape'], ' ms', 1000, 1)} n={r['lag_steady_n_during_scrape']}, otherwise "
          f"{f(r['lag_steady_p99_outside_scrape'], ' ms', 1000, 1)})")
    print(f"  lag histogram p50 / p99 {f(r['lag_hist_p50'], ' ms', 1000, 2)} / {f(r['lag_hist_p99'], ' ms', 1000, 2)}"
          f"   (histogram_quantile over mailmon_scheduler_lag_seconds)")
    print(f"  loop stall p99 / max    {f(r['stall_p99'], ' ms', 1000, 2)} / {f(r['stall_max'], ' ms', 1000, 1)}"
          f"   (how late a 10 ms sleep wakes up)")
    print(f"  garbage collection      steady state: {r['gc_total_s']:.2f} s in {r['gc_steady_s']:.0f} s; "
          f"{r['gc_gen2_n']} full (gen 2) collections, the longest {f(r['gc_gen2_max_s'], ' ms', 1000, 0)}")
    print(f"  steady state            {r['steady_runs_per_s']:.1f} runs/s completed (schedule: "
          f"{r['scheduled_rate_per_s']:.1f}/s), {r['steady_skips']} skips, {r['steady_failed']} failed runs")
    print("  check duration p50/p99  " + ", ".join(
        f"{c} {r['duration_p50_ms'][c]:.1f}/{r['duration_p99_ms'][c]:.1f} ms" for c in sorted(r["duration_p50_ms"])))
    print(f"  CPU of the loop thread  {f(r['main_thread_cpu_pct'], ' %')} whole window, "
          f"{f(r['main_thread_cpu_steady_pct'], ' %')} steady (the rest is /metrics rendering and getaddrinfo threads)")
    print(f"  CPU (of one core)       {f(r['cpu_pct'], ' %')} whole window, {f(r['cpu_steady_pct'], ' %')} steady;"
          f" {r['cpu_ms_per_run']:.2f} ms CPU per run; fakes {f(r['fakes_cpu_pct'], ' %')}")
    print(f"  RSS                     {r['rss_max_sampled_mb']:.0f} MB max during the window (1 s samples), "
          f"{r['rss_end_mb']:.0f} MB after the final GET; VmHWM {r['vmhwm_mb']:.0f} MB")
    print(f"  /metrics                median {f(r['scrape_median_s'], ' ms', 1000, 1)}, max "
          f"{f(r['scrape_max_s'], ' ms', 1000, 1)} over {r['scrape_n']} GETs; {r['scrape_bytes'] / 1e6:.2f} MB, "
          f"{r['series']} samples ({r['series_per_check']:.1f} per check); "
          f"{r['scrape_wire_bytes'] / 1e6:.2f} MB on the wire "
          f"({'Accept-Encoding: gzip' if r['gzip'] else 'no gzip asked'}; time to the last byte)")
    if "profile" in r:
        p = r["profile"]
        print(f"  profile (py-spy --gil --threads, {p['samples']} samples at 100 Hz, raw: {p['file']})")
        print_profile(p["self"], p["inclusive"], p["samples"], n_self=20, n_incl=40)


def revision(ref: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="100,1000,5000", help="comma-separated N (default 100,1000,5000)")
    parser.add_argument("--window", type=float, default=180.0, help="seconds per N (default 180)")
    parser.add_argument("--interval", type=float, default=60.0, help="check interval in seconds (default 60)")
    parser.add_argument("--concurrency", type=int, default=64, help="mailmon concurrency (default 64, the default)")
    parser.add_argument("--scrape-every", type=float, default=15.0,
                        help="seconds between /metrics GETs (default 15; 0: only one GET, at the end of the window)")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy the child for this many seconds, "
                                                                   "starting after the first interval (0: off)")
    parser.add_argument("--no-gzip", dest="gzip", action="store_false",
                        help="scrape without Accept-Encoding: gzip (Prometheus sends it; the default does too)")
    parser.add_argument("--failure-series", choices=("all", "on_failure"), default=None,
                        help="the monitor's metrics.failure_series (default: the config's default)")
    parser.add_argument("--before", metavar="REF",
                        help="also run every N on the monitor code of git REF first (e.g. main): before/after")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    # The child process (internal).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--code", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.targets = int(args.targets)
        asyncio.run(child_main(args))
        return 0
    sizes = [int(x) for x in args.targets.split(",")]
    if any(not 1 <= n <= 50_000 for n in sizes) or not 10 <= args.window <= 1800:
        parser.error("targets must be 1..50000 and --window 10..1800 s")
    print(machine_line())
    print(f"load average before: {os.getloadavg()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="mailmon-scale-") as tmp:
        workdir = Path(tmp) if not args.profile else Path(tempfile.mkdtemp(prefix="mailmon-scale-prof-"))
        codes = [""]
        if args.before:
            codes.insert(0, str(monitor_of(args.before, Path(tmp))))
            print(f"before: monitor/ of {args.before} ({revision(args.before)}); after: this checkout "
                  f"({revision('HEAD')}, plus uncommitted changes if any)")
        for n in sizes:
            for code in codes:
                r = run_one(n, args, workdir, code)
                report(r)
                results.append(r)
                sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
