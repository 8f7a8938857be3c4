#!/usr/bin/env python3
"""CPU seconds and peak RSS per 1,000 SMTP STARTTLS probes: mailmon versus prometheus-blackbox-exporter.

Same lab port (127.0.0.2:587), same concurrency, same rate cap, interleaved in blocks (every variant runs
--count/--blocks probes per block, the order rotating), all in one run:

  blackbox          prometheus-blackbox-exporter, tcp prober, module `smtp_starttls` as the issue gives it:
                    expect ^220, send EHLO, expect ^250-STARTTLS, send STARTTLS, expect ^220, starttls (verified
                    against the lab CA, server name mail.lab.test); then it closes the connection.
  blackbox-full     the same plus EHLO after TLS (expect ^250 ) and QUIT (expect ^221): the dialogue mailmon's
                    `smtp` check without AUTH has, for a like-for-like figure.
  mailmon           `smtp` check, STARTTLS, no AUTH (banner, EHLO, STARTTLS, EHLO, QUIT), through
                    `App(config).runner.run`: the Runner plus every sink a running monitor has (verdict board,
                    Prometheus metrics, the log), in a child process.
  mailmon-auth      the same with AUTH PLAIN.
  mailmon-uvloop    (only with --uvloop-python PY, an interpreter that can import uvloop and monitor/) the
                    `mailmon` variant on uvloop's event loop instead of asyncio's: what the `uvloop` extra buys
                    (`mailmon run` takes uvloop by itself where it is installed; see monitor/eventloop.py).
  before-mailmon... (only with --baseline DIR, another checkout of mailmon, e.g. `git archive REV | tar -x -C DIR`)
                    each mailmon variant again, run from DIR's code: before/after figures within the same run, so
                    the machine's drift cancels out of the comparison.

blackbox is driven through its /probe?module=...&target=127.0.0.2:587 endpoint by --concurrency keep-alive HTTP
clients in this process (their CPU is not counted); every answer must say probe_success 1. CPU is utime+stime
of the measured process from /proc/PID/stat (10 ms ticks), read before and after each block, so start-up and the
idle time between blocks are not counted; the mailmon children's event-loop thread is also read on its own
(/proc/PID/task/PID/stat; the rest is asyncio's getaddrinfo thread pool). Peak RSS is VmHWM at the end.

A block in which more than 1% of the probes of a variant failed (other engineers' tests fault the shared lab:
expired certificates, stopped daemons) is thrown away and run again, at most 3 times per block.

--profile adds, after the measured blocks (so their figures carry no profiler), one extra block per mailmon
variant under `perf record` (CPU split by shared object: interpreter, OpenSSL, kernel, libc) and one under
cProfile with a thread-CPU clock (the Python functions of the event-loop thread; cProfile inflates Python-heavy
code about 2x, so read it as a ranking).

Usage: python bench/cost_vs_blackbox.py [--count 1000] [--concurrency 4] [--rate 50] [--blocks 4] [--profile]
                                        [--uvloop-python /path/to/python] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import lab_env, machine_line, proc_cpu, proc_status_kb, stop, wait_port  # noqa: E402

BLACKBOX_CONFIG = """\
modules:
  smtp_starttls:
    prober: tcp
    timeout: 10s
    tcp:
      preferred_ip_protocol: ip4
      query_response:
        - expect: "^220"
        - send: "EHLO bench.test\\r"
        - expect: "^250-STARTTLS"
        - send: "STARTTLS\\r"
        - expect: "^220"
        - starttls: true
      tls_config:
        ca_file: {ca}
        server_name: {server_name}
  smtp_starttls_full:
    prober: tcp
    timeout: 10s
    tcp:
      preferred_ip_protocol: ip4
      query_response:
        - expect: "^220"
        - send: "EHLO bench.test\\r"
        - expect: "^250-STARTTLS"
        - send: "STARTTLS\\r"
        - expect: "^220"
        - starttls: true
        - send: "EHLO bench.test\\r"
        - expect: "^250 "
        - send: "QUIT\\r"
        - expect: "^221"
      tls_config:
        ca_file: {ca}
        server_name: {server_name}
"""


# --- the mailmon child ------------------------------------------------------------------------------------------

async def child_main(use_auth: bool, concurrency: int, rate: float) -> None:
    import cProfile

    from monitor.app import App
    from monitor.config import Auth, Config, Secret, SmtpSettings, Target, TlsSettings
    from monitor.logs import setup_logging

    setup_logging("info")  # as `mailmon run` does by default: failures are logged, successes are not
    env = lab_env()
    check = SmtpSettings(port=int(env["LAB_SUBMISSION_PORT"]), tls_mode="starttls", interval=60.0,
                         timeout=10.0, use_auth=use_auth)
    target = Target(name="lab", host=env["LAB_HOST"],
                    tls=TlsSettings(ca_file=env["LAB_CA"], server_name=env["LAB_TLS_SERVER_NAME"]),
                    auth=Auth(env["LAB_USER"], Secret(Path(env["LAB_PASSWORD_FILE"]).read_text())), checks=(check,))
    config = Config(vantage="bench", listen="127.0.0.1:0", interval=60.0, timeout=10.0, concurrency=concurrency,
                    targets=(target,), source="<bench>")
    app = App(config)  # not started: no scheduler, no HTTP; its runner has the running monitor's sinks
    app.metrics.add_target(target)
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True, "loop": type(loop).__module__}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        words = line.split()
        count = int(words[1])
        profile_to = words[2] if len(words) > 2 else None
        slots = asyncio.Semaphore(concurrency)
        t0 = loop.time()
        results: list[Any] = []

        async def one(i: int, t0: float = t0, slots: asyncio.Semaphore = slots, results: list[Any] = results) -> None:
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
            async with slots:
                results.append(await app.runner.run(target, check))

        profiler = cProfile.Profile(time.thread_time) if profile_to else None
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(*(one(i) for i in range(count)))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_to)
        failed = [r for r in results if not r.ok]
        print(json.dumps({"ok": len(results) - len(failed), "failed": len(failed), "wall": loop.time() - t0,
                          "failures": [f"{r.stage}/{r.reason}: {r.detail}"[:160] for r in failed[:3]]}), flush=True)


def child_entry(args: argparse.Namespace) -> None:
    from monitor import eventloop

    coroutine = child_main(args.child == "mailmon-auth", args.concurrency, args.rate)
    # The loop `mailmon run` would pick with --event-loop; named, so an interpreter that has uvloop installed
    # still runs the `mailmon` variants on asyncio's loop. uvloop only in the --uvloop-python interpreter.
    eventloop.run(coroutine, "uvloop" if args.child == "mailmon-uvloop" else "asyncio")


# --- the parent -------------------------------------------------------------------------------------------------

def drive_blackbox(port: int, module: str, target: str, count: int, concurrency: int, rate: float
                   ) -> dict[str, Any]:
    """`count` GET /probe requests over `concurrency` keep-alive connections, started at most `rate` per second."""
    lock = threading.Lock()
    state: dict[str, Any] = {"next": 0, "ok": 0, "failed": 0, "errors": []}
    t0 = time.monotonic()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = state["next"]
                if i >= count:
                    break
                state["next"] = i + 1
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                conn.request("GET", f"/probe?module={module}&target={target}")
                body = conn.getresponse().read()
                ok = b"\nprobe_success 1" in body
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok, body = False, repr(exc).encode()
            with lock:
                state["ok" if ok else "failed"] += 1
                if not ok and len(state["errors"]) < 3:
                    state["errors"].append(body[-300:].decode(errors="replace"))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"ok": state["ok"], "failed": state["failed"], "wall": time.monotonic() - t0, "failures": state["errors"]}


def perf_dso_split(data: Path) -> list[tuple[float, str]]:
    done = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "-g", "none",
                           "--stdio"], capture_output=True, text=True, timeout=120)
    rows = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%") and not line.startswith("#"):
            rows.append((float(parts[0][:-1]), parts[1]))
    return rows


def perf_top_symbols(data: Path, limit: int = 12) -> list[str]:
    done = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "-g", "none",
                           "--stdio"], capture_output=True, text=True, timeout=120)
    return [line.strip() for line in done.stdout.splitlines() if line.strip() and not line.startswith("#")][:limit]


def print_cprofile(path: Path, probes: int) -> None:
    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = stats.stats  # type: ignore[attr-defined]

    def name(key: tuple[str, int, str]) -> str:
        file, line, func = key
        short = file.replace(str(ROOT) + "/", "")
        for marker in ("site-packages/", "lib/python3.11/"):
            if marker in short:
                short = short.split(marker, 1)[1]
        return f"{short}:{line}({func})"

    print(f"    cProfile (thread CPU clock): {total:.3f} s over {probes} probes = {1000 * total / probes:.2f} ms/probe "
          "under the profiler")
    print("      by own time:")
    for key, value in sorted(entries.items(), key=lambda kv: -kv[1][2])[:15]:
        print(f"        {100 * value[2] / total:5.1f}%  {name(key)}")
    print("      by cumulative time (mailmon, aiosmtplib, sslproto, logging, prometheus_client):")
    interesting = ("monitor/", "aiosmtplib/", "sslproto", "logging/", "prometheus_client/", "concurrent/futures",
                   "socket.py")
    shown = 0
    for key, value in sorted(entries.items(), key=lambda kv: -kv[1][3]):
        if any(m in key[0] for m in interesting):
            print(f"        {100 * value[3] / total:5.1f}%  {name(key)}")
            shown += 1
            if shown >= 22:
                break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="probes per variant (default 1000)")
    parser.add_argument("--concurrency", type=int, default=4, help="probes in flight, every variant (default 4)")
    parser.add_argument("--rate", type=float, default=50.0, help="probes started per second at most (default 50)")
    parser.add_argument("--blocks", type=int, default=4, help="interleaved blocks per variant (default 4)")
    parser.add_argument("--profile", action="store_true", help="profile the mailmon children afterwards (see above)")
    parser.add_argument("--uvloop-python", metavar="PY", help="add the mailmon-uvloop variant, run by this python")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="add before-<variant> for every mailmon variant, run from the checkout in DIR")
    parser.add_argument("--child", choices=["mailmon", "mailmon-auth", "mailmon-uvloop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_entry(args)
        return 0
    if not 1 <= args.count <= 5000 or not 1 <= args.concurrency <= 32 or not 1 <= args.rate <= 200:
        parser.error("--count 1..5000, --concurrency 1..32, --rate 1..200")
    exporter = shutil.which("prometheus-blackbox-exporter")
    if exporter is None:
        print("apt-get install -y prometheus-blackbox-exporter", file=sys.stderr)
        return 2
    variants = ["blackbox", "blackbox-full", "mailmon", "mailmon-auth"] + (["mailmon-uvloop"] if args.uvloop_python
                                                                           else [])
    mailmons = [v for v in variants if v.startswith("mailmon")]
    if args.baseline is not None:
        if not (args.baseline / "bench" / "cost_vs_blackbox.py").is_file():
            parser.error(f"--baseline {args.baseline}: no bench/cost_vs_blackbox.py there")
        before = [f"before-{m}" for m in mailmons]
        variants += before
        mailmons += before
    env = lab_env()
    host, smtp_port = env["LAB_HOST"], int(env["LAB_SUBMISSION_PORT"])
    target = f"{host}:{smtp_port}"
    version = subprocess.run([exporter, "--version"], capture_output=True, text=True)
    tmp = Path(tempfile.mkdtemp(prefix="mailmon-bb-"))
    (tmp / "blackbox.yml").write_text(BLACKBOX_CONFIG.format(ca=env["LAB_CA"], server_name=env["LAB_TLS_SERVER_NAME"]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        bb_port = s.getsockname()[1]
    bb_log = open(tmp / "blackbox.log", "w")  # noqa: SIM115
    bb = subprocess.Popen([exporter, f"--config.file={tmp / 'blackbox.yml'}",
                           f"--web.listen-address=127.0.0.1:{bb_port}"], stdout=bb_log, stderr=subprocess.STDOUT)
    children: dict[str, subprocess.Popen[str]] = {}
    procs: dict[str, int] = {}
    loops: dict[str, str] = {}
    discarded: list[str] = []
    profiled: dict[str, dict[str, Any]] = {}
    try:
        if not wait_port("127.0.0.1", bb_port, timeout=30):
            print("blackbox exporter did not start; see " + str(tmp / "blackbox.log"), file=sys.stderr)
            return 2
        procs["blackbox"] = procs["blackbox-full"] = bb.pid
        for name in mailmons:
            kind = name.removeprefix("before-")
            python = args.uvloop_python if kind == "mailmon-uvloop" else sys.executable
            script = args.baseline / "bench" / "cost_vs_blackbox.py" if kind != name else Path(__file__)
            child = subprocess.Popen([python, str(script), "--child", kind, "--concurrency", str(args.concurrency),
                                      "--rate", str(args.rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(tmp / f"{name}.log", "w"), text=True)  # noqa: SIM115
            assert child.stdout is not None
            loops[name] = json.loads(child.stdout.readline())["loop"]
            children[name] = child
            procs[name] = child.pid
        startup = {name: {"cpu": proc_cpu(pid), "rss_kb": proc_status_kb(pid, "VmRSS")} for name, pid in procs.items()}

        def block(name: str, count: int, profile_to: Path | None = None) -> dict[str, Any]:
            if not wait_port(host, smtp_port):
                raise SystemExit("the lab's submission port stayed down for 120 s")
            pid = procs[name]
            cpu0 = proc_cpu(pid)
            main0 = proc_cpu(pid, pid) if not name.startswith("blackbox") else 0.0
            if name.startswith("blackbox"):
                module = "smtp_starttls" if name == "blackbox" else "smtp_starttls_full"
                out = drive_blackbox(bb_port, module, target, count, args.concurrency, args.rate)
            else:
                child = children[name]
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(f"run {count}{' ' + str(profile_to) if profile_to else ''}\n")
                child.stdin.flush()
                out = json.loads(child.stdout.readline())
            out["cpu"] = proc_cpu(pid) - cpu0
            out["main_cpu"] = proc_cpu(pid, pid) - main0 if not name.startswith("blackbox") else 0.0
            return out

        # Warm-up: every variant, 20 probes, not counted.
        for name in variants:
            block(name, 20)
        totals = {name: {"cpu": 0.0, "main_cpu": 0.0, "ok": 0, "failed": 0, "wall": 0.0, "failures": []}
                  for name in variants}
        per_block = args.count // args.blocks
        deadline = time.monotonic() + 1800
        for b in range(args.blocks):
            order = variants[b % len(variants):] + variants[:b % len(variants)]
            for name in order:
                if time.monotonic() > deadline:
                    raise SystemExit("time budget (30 min) exhausted")
                size = per_block if b < args.blocks - 1 else args.count - per_block * (args.blocks - 1)
                for _attempt in range(3):
                    out = block(name, size)
                    if out["failed"] <= 0.01 * size:
                        break
                    discarded.append(f"{name} block {b}: {out['failed']}/{size} failed, e.g. "
                                     f"{(out['failures'] or ['?'])[0][:120]!r}")
                    time.sleep(10)
                t = totals[name]
                for key in ("cpu", "main_cpu", "ok", "failed", "wall"):
                    t[key] += out[key]
                t["failures"] += out["failures"]
        peak = {name: proc_status_kb(pid, "VmHWM") for name, pid in procs.items()}
        threads = {name: proc_status_kb(pid, "Threads") for name, pid in procs.items()}
        if args.profile:
            size = min(250, args.count)
            for name in (m for m in mailmons if not m.startswith("before-")):
                entry: dict[str, Any] = {"size": size}
                if shutil.which("perf"):
                    data = tmp / f"perf-{name}.data"
                    recorder = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(procs[name]), "-o",
                                                 str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                    entry["perf_block"] = block(name, size)
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait(timeout=60)
                    entry["perf"] = data
                prof = tmp / f"cprofile-{name}.prof"
                entry["cprofile_block"] = block(name, size, profile_to=prof)
                entry["cprofile"] = prof
                profiled[name] = entry
    finally:
        for child in children.values():
            stop(child, 30, close_stdin=True)
        stop(bb, 10)
        bb_log.close()

    print(machine_line())
    print(f"load average at the end: {tuple(round(x, 2) for x in os.getloadavg())} (the machine and lab are shared)")
    print(f"blackbox: {(version.stdout or version.stderr).splitlines()[0]}")
    print(f"mailmon event loops: {loops}")
    print(f"target {target}; {args.count} probes per variant in {args.blocks} interleaved blocks (+20 warm-up each, "
          f"not counted); concurrency {args.concurrency}; at most {args.rate:g} probes/s")
    print(f"\n{'variant':<21} {'ok':>6} {'failed':>6} {'CPU s/1000':>11} {'loop thread':>12} {'VmHWM MB':>9} "
          f"{'RSS idle MB':>12} {'threads':>8} {'probes/s':>9}")
    per1000 = {}
    for name in variants:
        t = totals[name]
        n = t["ok"] + t["failed"]
        per1000[name] = 1000 * t["cpu"] / max(1, n)
        main = f"{1000 * t['main_cpu'] / max(1, n):.2f}" if not name.startswith("blackbox") else "-"
        print(f"{name:<21} {t['ok']:>6} {t['failed']:>6} {per1000[name]:>11.2f} {main:>12} "
              f"{peak[name] / 1024:>9.1f} {startup[name]['rss_kb'] / 1024:>12.1f} {threads[name]:>8} "
              f"{n / max(t['wall'], 1e-9):>9.1f}")
        for failure in t["failures"][:2]:
            print(f"    e.g. failure: {failure[:200]!r}")
    print("  (CPU s/1000 probes = CPU ms per probe; blackbox and blackbox-full are one process: one VmHWM)")
    for line in discarded:
        print(f"  discarded and re-run: {line}")
    print("\nratios (CPU per probe)")
    for mm in mailmons:
        for bbn in ("blackbox", "blackbox-full"):
            print(f"  {mm + ' / ' + bbn:<38} {per1000[mm] / per1000[bbn]:.2f}")
    print(f"  {'mailmon-auth / mailmon':<32} {per1000['mailmon-auth'] / per1000['mailmon']:.2f}")
    if "mailmon-uvloop" in per1000:
        print(f"  {'mailmon-uvloop / mailmon':<32} {per1000['mailmon-uvloop'] / per1000['mailmon']:.2f}")
    for mm in mailmons:
        if mm.startswith("before-"):
            after = mm.removeprefix("before-")
            print(f"  {after + ' / ' + mm:<38} {per1000[after] / per1000[mm]:.2f}   (after / before)")
    print("ratios (peak RSS)")
    for mm in mailmons:
        print(f"  {mm + ' / blackbox':<32} {peak[mm] / peak['blackbox']:.2f}")
    print("goal: mailmon <= 0.8x blackbox CPU per probe")
    for name, entry in profiled.items():
        print(f"\nprofile of {name} ({entry['size']} probes per profiled block; files in {tmp})")
        if "perf" in entry:
            block_cpu = entry["perf_block"]["cpu"]
            print(f"    perf: CPU by shared object ({1000 * block_cpu / entry['size']:.2f} ms/probe in that block)")
            for share, dso in perf_dso_split(entry["perf"])[:8]:
                print(f"      {share:5.1f}%  {dso}   (~{share / 100 * 1000 * block_cpu / entry['size']:.2f} ms/probe)")
            print("    perf: top symbols")
            for line in perf_top_symbols(entry["perf"]):
                print(f"      {line}")
        print_cprofile(entry["cprofile"], entry["size"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
