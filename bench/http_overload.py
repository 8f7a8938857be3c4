#!/usr/bin/env python3
"""Does a flood of HTTP clients touch the probes? Scheduler lag with an idle HTTP port, with 200 slow /metrics
readers, and with 200 clients asking /api/history at once — all three phases in one run (issue 18).

A real `monitor.app.App` runs in a child process: --targets targets × (smtp, imap, pop3) against bench/fakes.py's
plaintext servers on 127.0.0.1, every --interval seconds, with a history file. The child keeps every scheduler
lag observation raw (the bench wraps `Metrics.record_lag`) and every probe's reported duration, stamped with
CLOCK_MONOTONIC, so each phase's p50/p99 are exact. Phases (each --phase seconds, after a warm-up interval):

  idle       nobody talks to the HTTP port (the baseline)
  slow       200 clients each send `GET /metrics` and read the answer one byte a second (receive buffer 1 KiB,
             so the server's writes really block); a client the server closes reconnects a second later
  history    200 clients each ask `/api/history?limit=1000` again and again, as fast as answers come

Printed per phase: lag p50/p99/max, probe duration median/p99, HTTP answers by status and connections the server
closed at once (its cap), the child's peak RSS and descriptors, the share of the machine's CPU the hypervisor stole
(on a VM, noise no run controls), the CPU time the child's event-loop thread and its other threads used per second
(not counting time waiting for a core: a cost figure the noise leaves alone), and the child's garbage collections
(count per generation, longest pause, and how many of the phase's lag observations above 2x idle p99 overlapped a
collection).
The goal: lag p99 under load within 2x idle.

--before REF: each repeat first runs the monitor code of git REF (`git archive` into a temporary directory, driven by
this same harness), then this checkout: before and after figures from one run. --repeat N: N such rounds, then the
median and range of each phase's p99 per code version. --pin: the monitor on one CPU, the load generator and the
fake servers on the others (on a 2-core machine they otherwise take the monitor's loop thread's core half the time).

Usage: python bench/http_overload.py [--targets 100] [--interval 10] [--phase 30] [--clients 200] [--before REF]
                                     [--repeat 1] [--event-loop asyncio] [--pin] [--phases idle,slow,history]
                                     [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
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
    cpu_times,
    machine_line,
    median,
    observe_results,
    pct,
    proc_status_kb,
    steal_share,
    stop,
    thread_cpu,
)

PHASES = ("idle", "slow", "history")


# --- the child: one mailmon App ---------------------------------------------------------------------------------

async def child_main(args: argparse.Namespace) -> None:
    if args.code:  # the monitor of another revision (--before), ahead of this checkout's
        sys.path.insert(0, args.code)
    from monitor.app import App
    from monitor.config import PROTOCOL_KINDS, Auth, Config, HistorySettings, Secret, Target, TlsSettings
    from monitor.logs import setup_logging
    from monitor.result import Result

    setup_logging("warning")
    ports = json.loads(args.ports)
    targets = tuple(
        Target(name=f"t{i:04d}", host="127.0.0.1", tls=TlsSettings(), auth=Auth("probe@bench.test", Secret("bench")),
               checks=tuple(PROTOCOL_KINDS[name](port=int(ports[name]), tls_mode="none", interval=args.interval,
                                                timeout=args.interval) for name in ("smtp", "imap", "pop3")))
        for i in range(args.targets))
    config = Config(vantage="bench", listen=args.listen, interval=args.interval, timeout=args.interval,
                    concurrency=64, targets=targets, source="<bench>", history=HistorySettings(path=args.history))
    app = App(config)
    lags: list[tuple[float, float]] = []
    record_lag = app.metrics.record_lag

    def observed_lag(seconds: float) -> None:
        lags.append((time.monotonic(), seconds))
        record_lag(seconds)

    app.metrics.record_lag = observed_lag  # type: ignore[method-assign]
    durations: list[tuple[float, float, bool]] = []

    def observed_result(result: Result) -> None:
        durations.append((time.monotonic(), result.duration_seconds, result.ok))

    observe_results(app, observed_result)
    collections: list[tuple[float, float, int]] = []  # (start, seconds, generation) of every garbage collection
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.monotonic()
        else:
            collections.append((gc_started[0], time.monotonic() - gc_started[0], info["generation"]))

    gc.callbacks.append(on_gc)
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    await app.start()
    print(json.dumps({"started": time.monotonic()}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.max_seconds)
    await app.stop()
    gc.callbacks.remove(on_gc)
    Path(args.out).write_text(json.dumps({"lags": lags, "durations": durations, "collections": collections}))


# --- the parent: the HTTP clients ---------------------------------------------------------------------------------

class Tally:
    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.closed_at_once = 0
        self.seconds: list[float] = []

    def add(self, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def slow_reader(port: int, until: float, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: the window stays small
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            first = True
            while time.monotonic() < until:
                byte = await asyncio.wait_for(loop.sock_recv(sock, 1), max(0.01, until - time.monotonic()))
                if not byte:
                    if first:
                        tally.closed_at_once += 1
                    break
                if first:
                    tally.add("answered")
                first = False
                await asyncio.sleep(1.0)
        except (OSError, TimeoutError):
            pass
        finally:
            sock.close()
        await asyncio.sleep(1.0)


async def history_client(port: int, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(b"GET /api/history?limit=1000 HTTP/1.1\r\nHost: bench\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), max(0.01, until - time.monotonic() + 30))
            if not data:
                tally.closed_at_once += 1
                await asyncio.sleep(0.1)
            else:
                tally.add(data.split(b" ", 2)[1].decode())
                tally.seconds.append(time.monotonic() - started)
        except (OSError, TimeoutError):
            tally.closed_at_once += 1  # reset at once: the server's cap
            await asyncio.sleep(0.1)
        finally:
            writer.close()


async def load(kind: str, port: int, seconds: float, clients: int) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    client = slow_reader if kind == "slow" else history_client
    await asyncio.gather(*(client(port, until, tally) for _ in range(clients)))
    return tally


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def revision(ref: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True)
    return done.stdout.strip() or ref


def run_once(args: argparse.Namespace, work: Path, code: str) -> dict[str, Any]:
    """One monitor child through the three phases; the raw observations and each phase's window and HTTP tally."""
    fakes = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fakes.py"), "--max-seconds",
                              str(4 * args.phase + 300)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert fakes.stdout is not None
    ports = fakes.stdout.readline().strip()
    port = free_port()
    out = work / "child.json"
    history = work / "h.sqlite"
    history.unlink(missing_ok=True)
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", "--targets", str(args.targets), "--interval", str(args.interval),
         "--ports", ports, "--listen", f"127.0.0.1:{port}", "--out", str(out), "--history", str(history),
         "--max-seconds", str(4 * args.phase + 200), "--code", code, "--event-loop", args.event_loop,
         "--cpus", args.cpus],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    json.loads(child.stdout.readline())
    windows: dict[str, tuple[float, float]] = {}
    tallies: dict[str, Tally] = {}
    peaks: dict[str, tuple[int, int]] = {}
    loads: list[float] = []
    steals: dict[str, float] = {}
    cpu: dict[str, tuple[float, float]] = {}  # per phase: the loop thread's and the other threads' CPU seconds/s
    try:
        time.sleep(args.interval)  # warm-up: every check has run once
        for phase in args.phases:
            loads.append(os.getloadavg()[0])
            t0, cpu0, threads0 = time.monotonic(), cpu_times(), thread_cpu(child.pid)
            if phase == "idle":
                time.sleep(args.phase)
                tallies[phase] = Tally()
            else:
                tallies[phase] = asyncio.run(load(phase, port, args.phase, args.clients))
            windows[phase] = (t0, time.monotonic())
            steals[phase] = steal_share(cpu0, cpu_times())
            threads1, seconds = thread_cpu(child.pid), time.monotonic() - t0
            spent = {tid: used - threads0.get(tid, 0.0) for tid, used in threads1.items()}
            loop_thread = spent.pop(child.pid, 0.0)  # the event loop runs in the child's main thread
            cpu[phase] = (loop_thread / seconds, sum(spent.values()) / seconds)
            peaks[phase] = (proc_status_kb(child.pid, "VmHWM"), descriptors(child.pid))
            time.sleep(2.0)  # let the connections close before the next phase
    finally:
        stop(child, 60)
        stop(fakes, 10, close_stdin=True)
    data: dict[str, Any] = json.loads(out.read_text())
    return {"data": data, "windows": windows, "tallies": tallies, "peaks": peaks, "loads": loads, "steals": steals,
            "cpu": cpu}


def report(run: dict[str, Any], label: str, phases: list[str]) -> dict[str, float]:
    """Print one run's phases; each phase's lag p99 (seconds)."""
    data, windows, tallies, peaks = run["data"], run["windows"], run["tallies"], run["peaks"]
    print(f"{label}: load average at each phase's start {' / '.join(f'{x:.2f}' for x in run['loads'])}")
    base = None
    p99s: dict[str, float] = {}
    for phase in phases:
        lo, hi = windows[phase]
        observed = [(t, v) for t, v in data["lags"] if lo <= t <= hi]
        lags = [v for _, v in observed]
        durs = [d for t, d, _ in data["durations"] if lo <= t <= hi]
        failed = sum(1 for t, _, ok in data["durations"] if lo <= t <= hi and not ok)
        p99 = pct(lags, 0.99)
        p99s[phase] = p99
        base = p99 if phase == "idle" else base
        ratio = f" ({p99 / base:.2f}x idle)" if base and phase != "idle" else ""
        tally = tallies[phase]
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items())) or "-"
        http = (f"answers {answers}; closed at once {tally.closed_at_once}"
                + (f"; answer p99 {pct(tally.seconds, 0.99) * 1000:.0f} ms" if tally.seconds else ""))
        print(f"{phase:8s} lag p50 {pct(lags, 0.5) * 1000:.2f} ms  p99 {p99 * 1000:.2f} ms{ratio}  "
              f"max {max(lags, default=0) * 1000:.1f} ms  ({len(lags)} runs, {failed} failed)  "
              f"probe duration median {median(durs) * 1000:.2f} ms p99 {pct(durs, 0.99) * 1000:.2f} ms")
        print(f"         HTTP: {http}; child peak RSS {peaks[phase][0] / 1024:.0f} MB, descriptors at the end "
              f"{peaks[phase][1]}; CPU stolen by the hypervisor {run['steals'][phase] * 100:.1f} %")
        loop_cpu, other_cpu = run["cpu"][phase]
        print(f"         CPU of the monitor: event-loop thread {loop_cpu * 1000:.0f} ms/s, other threads "
              f"{other_cpu * 1000:.0f} ms/s")
        collections = [(t, d, g) for t, d, g in data.get("collections", []) if lo <= t <= hi]
        by_gen = [sum(1 for _, _, g in collections if g == gen) for gen in range(3)]
        longest = max((d for _, d, _ in collections), default=0.0)
        high = [(t, v) for t, v in observed if base and v > 2 * base]
        overlapped = sum(1 for t, v in high if any(s < t and s + d > t - v for s, d, _ in collections))
        gc_total = sum(d for _, d, _ in collections)
        print(f"         GC: collections gen0/1/2 {by_gen[0]}/{by_gen[1]}/{by_gen[2]}, longest "
              f"{longest * 1000:.1f} ms, total {gc_total * 1000:.0f} ms; lag observations above 2x idle p99: "
              f"{len(high)}, {overlapped} of them overlapping a collection")
    return p99s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--phase", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--before", metavar="REF", help="also run the monitor code of git REF first (e.g. main)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (each: --before's code, then this one)")
    parser.add_argument("--event-loop", default="asyncio", choices=("auto", "asyncio", "uvloop"),
                        help="the child's loop (monitor/eventloop.py); `mailmon run` takes auto: uvloop if installed")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="the phases to run, in order, idle first (default: idle,slow,history)")
    parser.add_argument("--pin", action="store_true",
                        help="run the monitor on CPU 0 and this load generator (and the fake servers) on the others, "
                             "so the figures show the monitor's own work, not a core shared with its clients")
    parser.add_argument("--json", metavar="FILE", help="write every round's raw observations and windows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--ports", "--listen", "--out", "--history"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--code", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cpus", default="", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.phases = args.phases.split(",")
    if args.phases[0] != "idle" or not set(args.phases) <= set(PHASES):
        parser.error(f"--phases: idle first, then any of {', '.join(PHASES[1:])}")
    if args.child:
        if args.cpus:  # before any thread exists: the web pool and the history writer inherit it
            os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
        if args.code:
            sys.path.insert(0, args.code)
        from monitor import eventloop
        eventloop.run(child_main(args), args.event_loop)
        return
    print(machine_line(), f"load={os.getloadavg()[0]:.2f}")
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least 2 CPUs")
        args.cpus = str(cpus[0])
        os.sched_setaffinity(0, set(cpus[1:]))  # this process, its client tasks, and the fakes it starts
        print(f"pinned: monitor on CPU {cpus[0]}, load generator and fake servers on CPU {cpus[1:]}")
    print(f"{args.targets} targets x 3 checks every {args.interval:g} s, {args.clients} clients, {args.phase:g} s "
          f"per phase, event loop {args.event_loop}")
    summary: dict[str, list[dict[str, float]]] = {}
    costs: dict[str, list[dict[str, tuple[float, float]]]] = {}
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mailmon-overload-") as tmp:
        work = Path(tmp)
        codes = [("this checkout", "")]
        if args.before:
            before = work / "before"
            before.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "monitor"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            codes.insert(0, (f"before ({args.before} = {revision(args.before)})", str(before)))
            print(f"before: monitor/ of {args.before} ({revision(args.before)}); after: this checkout "
                  f"({revision('HEAD')}, plus uncommitted changes if any)")
        for round_ in range(1, args.repeat + 1):
            for label, code in codes:
                run = run_once(args, work, code)
                p99s = report(run, f"round {round_}, {label}", args.phases)
                summary.setdefault(label, []).append(p99s)
                costs.setdefault(label, []).append(run["cpu"])
                raw.append({"label": label, "round": round_, "data": run["data"], "windows": run["windows"]})
                sys.stdout.flush()
    if args.repeat > 1 or args.before:
        print("lag p99 per phase, median [min-max] over the rounds (ratio to the same round's idle p99):")
        for label, rounds in summary.items():
            cells = []
            for phase in args.phases:
                values = [r[phase] * 1000 for r in rounds]
                cell = f"{phase} {median(values):.2f} [{min(values):.2f}-{max(values):.2f}] ms"
                if phase != "idle":
                    ratios = [r[phase] / r["idle"] for r in rounds]
                    cell += f" ({median(ratios):.1f}x [{min(ratios):.1f}-{max(ratios):.1f}])"
                cells.append(cell)
            print(f"  {label}: " + "; ".join(cells))
        print("CPU of the monitor per phase, median over the rounds (event-loop thread + other threads, ms/s):")
        for label, rounds in costs.items():
            cells = [f"{phase} {median([r[phase][0] * 1000 for r in rounds]):.0f} + "
                     f"{median([r[phase][1] * 1000 for r in rounds]):.0f}" for phase in args.phases]
            print(f"  {label}: " + "; ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(raw))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
