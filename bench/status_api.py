#!/usr/bin/env python3
"""What does `GET /api/status` cost a monitor with thousands of targets, and does it stall the event loop?

A real `monitor.app.App` (not started: no probes, no scheduler; only its HTTP server) is built in a child process
with --targets targets × (smtp, imap, pop3), and every check gets a recorded Result with a transcript of
--lines lines (a failed run's transcript is what a status reader wants, and the biggest part of the answer). Then
--requests sequential `GET /api/status` requests are made from a client thread while a ticker on the event loop
sleeps 5 ms at a time and notes how late it woke: that lateness is what every probe's timing would suffer.

Printed per code revision: answer size, request time p50/max, and loop lag (ticker lateness) p50/p99/max during
the requests, with an idle baseline measured first in the same child.

--before REF first runs the same harness on the monitor code of git REF (`git archive` into a temporary directory),
then on this checkout: before and after figures from one run.

Usage: python bench/status_api.py [--targets 5000] [--requests 10] [--lines 25] [--before main]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import loop_lateness, machine_line, median, monitor_of, pct  # noqa: E402


def _transcript(lines: int, i: int) -> list[str]:
    """An SMTP-like transcript of `lines` lines (what the runner keeps: C:/S:/-- lines, each under 300 chars)."""
    head = ["-- connected to 127.0.0.1:587 in 0.4 ms", "S: 220 mail.bench.test ESMTP Postfix (Debian/GNU)",
            "C: EHLO mailmon.bench.test", "S: 250-mail.bench.test", "S: 250-PIPELINING", "S: 250-SIZE 10240000",
            "S: 250-STARTTLS", "S: 250-ENHANCEDSTATUSCODES", "S: 250 CHUNKING", "C: STARTTLS",
            "S: 220 2.0.0 Ready to start TLS", "-- TLS established: TLSv1.3 TLS_AES_256_GCM_SHA384"]
    body = [f"S: 250-line {n} of target {i}: some server text that a transcript keeps" for n in range(lines)]
    return (head + body)[:lines]


async def child_main(args: argparse.Namespace) -> None:
    if args.code:  # the monitor of another revision (--before), ahead of this checkout's
        sys.path.insert(0, args.code)
    from monitor.app import App
    from monitor.config import CheckSettings, Config, Target, TlsSettings
    from monitor.logs import setup_logging
    from monitor.result import Result

    setup_logging("error")
    targets = tuple(
        Target(name=f"t{i:05d}", host="127.0.0.1", tls=TlsSettings(), auth=None,
               checks=tuple(CheckSettings(name=name, port=1, tls_mode="none", interval=60.0, timeout=10.0)
                            for name in ("smtp", "imap", "pop3")))
        for i in range(args.targets))
    config = Config(vantage="bench", listen="127.0.0.1:0", interval=60.0, timeout=10.0, concurrency=64,
                    targets=targets, source="<bench>")
    app = App(config)
    recorder = getattr(app, "recorder", None)
    record = recorder.record if recorder is not None else app._on_result  # type: ignore[attr-defined]
    now = time.time()
    for i, target in enumerate(targets):
        for j, check in enumerate(target.checks):
            failed = (i + j) % 3 == 0
            record(Result(target=target.name, check=check.name, vantage="bench", ok=not failed,
                          started_at=now - 30, duration_seconds=0.05, phases={"connect": 0.001, "banner": 0.01},
                          stage="greeting" if failed else None, reason="timeout" if failed else None,
                          detail="no progress within 10s (during banner)" if failed else "",
                          transcript=_transcript(args.lines, i)))
    gc.collect()
    gc.freeze()  # as App.start does: what lives as long as the process stays out of full collections
    await app.http.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{app.http.port}/api/status"
    loop = asyncio.get_running_loop()
    ticks: list[tuple[float, float]] = []
    tick_task = asyncio.create_task(loop_lateness(ticks, 0.005))
    await asyncio.sleep(args.idle)
    idle = [lag for _, lag in ticks]
    ticks.clear()
    times: list[float] = []
    sizes: list[int] = []

    def client() -> None:
        for _ in range(args.requests):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=120) as response:
                body = response.read()
            times.append(time.perf_counter() - t0)
            sizes.append(len(body))
            json.loads(body)  # a valid document

    started = loop.time()
    await asyncio.to_thread(client)
    busy = [lag for when, lag in ticks if when >= started] or [0.0]
    tick_task.cancel()
    await app.http.stop()
    print(json.dumps({"code": args.code or "this checkout", "targets": args.targets, "bytes": median(sizes),
                      "request_p50": median(times), "request_max": max(times),
                      "idle_lag_p50": median(idle), "idle_lag_p99": pct(idle, 0.99), "idle_lag_max": max(idle),
                      "lag_p50": median(busy), "lag_p99": pct(busy, 0.99), "lag_max": max(busy)}), flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(r: dict[str, Any]) -> None:
    print(f"{r['label']}: {r['targets']} targets, answer {r['bytes'] / 1e6:.1f} MB; request p50 "
          f"{_ms(r['request_p50'])}, max {_ms(r['request_max'])}; loop lag idle p50/p99/max "
          f"{_ms(r['idle_lag_p50'])}/{_ms(r['idle_lag_p99'])}/{_ms(r['idle_lag_max'])}, during requests "
          f"{_ms(r['lag_p50'])}/{_ms(r['lag_p99'])}/{_ms(r['lag_max'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=5000, help="targets, each with smtp, imap, pop3 (default 5000)")
    parser.add_argument("--requests", type=int, default=10, help="sequential GET /api/status (default 10)")
    parser.add_argument("--lines", type=int, default=25, help="transcript lines per result (default 25)")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle baseline (default 3)")
    parser.add_argument("--before", metavar="REF", help="also run on the monitor code of git REF first (e.g. main)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child_main(args))
        return 0
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="mailmon-status-") as tmp:
        runs = [("after (this checkout)", "")]
        if args.before:
            runs.insert(0, (f"before ({args.before})", str(monitor_of(args.before, Path(tmp)))))
        for label, code in runs:
            command = [sys.executable, __file__, "--child", "--targets", str(args.targets), "--requests",
                       str(args.requests), "--lines", str(args.lines), "--idle", str(args.idle), "--code", code]
            out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            figures["label"] = label
            report(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
