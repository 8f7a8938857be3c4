#!/usr/bin/env python3
"""Is the duration mailmon reports for an SMTP submission check accurate? mailmon versus swaks, same dialogue.

Every client does, against the lab's submission port (127.0.0.2:587): banner, EHLO, STARTTLS (certificate
verified against the lab CA), EHLO, AUTH PLAIN, QUIT. Runs are interleaved (the order rotates every round)
so that all see the same server state. Clients:

  mailmon           `Runner("bench").execute(target, check)` in this process, the target built as tests/conftest.py
                    `Lab.target("smtp", "starttls")` does: reported `duration_seconds`, wall time around
                    `execute()`, per-step phases
  mailmon-tls12     the same with the check's `tls_max: "1.2"` (an existing SmtpSettings field): a control, no
                    TLS 1.3 NewSessionTicket after the handshake
  mailmon-quickack  the same as `mailmon` with a bench-side monkeypatch (monitor/ is not changed) that sets
                    TCP_QUICKACK on the socket right after each SMTP command is written: the candidate fix (since
                    commit 7db8237 the probe itself does this after the post-STARTTLS EHLO, so on later code this
                    variant differs from `mailmon` only on the other commands)
  swaks             one process per run: process wall time, its CPU, the sum of its `--show-time-lapse`
                    "response in" figures (1 ms resolution; replies only, no connect/TLS)
  wire              for every client: the connection on the loopback interface, from the client's SYN to the first
                    FIN/RST (kernel packet timestamps, captured in a separate process; flows matched by a unique
                    EHLO name, so other traffic to the lab is ignored). The independent reference: the dialogue time
                    without process start-up or client bookkeeping.

swaks pins the CA with `--tls-verify --tls-ca-path <lab CA>` (chain verified: a wrong CA makes it fail), and gets
the password through its environment (SWAKS_OPT_auth_password), not argv. Process start-up baselines:
`swaks --version` (perl + swaks compile) and `swaks --help` (perldoc; much slower, shown for reference only).

Usage: python bench/accuracy_vs_swaks.py [--rounds 50] [--warmup 3]   (as root: the capture needs AF_PACKET)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiosmtplib  # noqa: E402
from benchlib import WireCapture, lab_env, machine_line, median, ms, pct, wait_port  # noqa: E402

from monitor.config import Auth, Secret, SmtpSettings, Target, TlsSettings  # noqa: E402
from monitor.runner import Runner  # noqa: E402

LAPSE = re.compile(r"^=== response in (\d+(?:\.\d+)?)s", re.MULTILINE)
CLIENTS = ("mailmon", "mailmon-tls12", "mailmon-quickack", "swaks")
SLOW_EHLO_TLS = 0.020  # an ehlo_tls step above this on loopback is the delayed-ACK stall, not the server

# --- the candidate fix, applied from outside for the `mailmon-quickack` runs only ---------------------------------
_quickack = False
_execute_command = aiosmtplib.SMTP.execute_command


async def _execute_command_quickack(self: aiosmtplib.SMTP, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
    if not _quickack:
        return await _execute_command(self, *args, **kwargs)
    sock = self.transport.get_extra_info("socket") if self.transport is not None else None
    task = asyncio.ensure_future(_execute_command(self, *args, **kwargs))
    await asyncio.sleep(0)  # the command is written; now ACK whatever arrives at once instead of delaying it
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    return await task


aiosmtplib.SMTP.execute_command = _execute_command_quickack  # type: ignore[method-assign]


def lab_target(env: dict[str, str], helo: str, tls_max: str | None = None) -> Target:
    """The lab's submission check, as tests/conftest.py `Lab.target("smtp", "starttls")` builds it."""
    check = SmtpSettings(port=int(env["LAB_SUBMISSION_PORT"]), tls_mode="starttls", interval=60.0,
                         timeout=10.0, use_auth=True, helo_name=helo, tls_max=tls_max)
    password = Path(env["LAB_PASSWORD_FILE"]).read_text()
    return Target(name="lab", host=env["LAB_HOST"], tls=TlsSettings(ca_file=env["LAB_CA"],
                                                                     server_name=env["LAB_TLS_SERVER_NAME"]),
                  auth=Auth(env["LAB_USER"], Secret(password)), checks=(check,))


def swaks_command(env: dict[str, str], helo: str) -> list[str]:
    return ["swaks", "--server", f"{env['LAB_HOST']}:{env['LAB_SUBMISSION_PORT']}", "--tls", "--tls-verify",
            "--tls-ca-path", env["LAB_CA"], "--tls-sni", env["LAB_TLS_SERVER_NAME"], "--ehlo", helo,
            "--auth", "PLAIN", "--auth-user", env["LAB_USER"], "--quit-after", "AUTH", "--show-time-lapse"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_swaks(command: list[str], child_env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=child_env, timeout=30)
    wall = time.perf_counter() - t0
    return wall, children_cpu() - cpu0, done


@dataclasses.dataclass
class Stats:
    values: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    phases: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    unmatched: int = 0

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def get(self, key: str) -> list[float]:
        return self.values.get(key, [])


def row(name: str, values: list[float]) -> str:
    return (f"  {name:<44} median {ms(median(values)):>10}   p10 {ms(pct(values, 0.1)):>10}   "
            f"p90 {ms(pct(values, 0.9)):>10}   n={len(values)}")


async def run_mailmon(who: str, runner: Runner, env: dict[str, str], helo: str, capture: WireCapture, stats: Stats,
                      measured: bool) -> None:
    global _quickack
    target = lab_target(env, helo, tls_max="1.2" if who == "mailmon-tls12" else None)
    _quickack = who == "mailmon-quickack"
    t_real = time.time()
    t0 = time.perf_counter()
    try:
        result = await runner.execute(target, target.checks[0])
    finally:
        _quickack = False
    wall = time.perf_counter() - t0
    t_real_end = time.time()
    if not result.ok:
        stats.failures.append(f"{result.stage}/{result.reason}: {result.detail}")
        return
    flow = capture.wait(helo)
    if not measured:
        return
    stats.add("reported", result.duration_seconds)
    stats.add("wall", wall)
    stats.add("phases", sum(result.phases.values()))
    stats.add("slow_ehlo_tls", 1.0 if result.phases.get("ehlo_tls", 0.0) > SLOW_EHLO_TLS else 0.0)
    stats.add("reported_minus_ehlo_tls", result.duration_seconds - result.phases.get("ehlo_tls", 0.0))
    for phase, seconds in result.phases.items():
        stats.phases.setdefault(phase, []).append(seconds)
    if flow is None:
        stats.unmatched += 1
        return
    wire = flow["end"] - flow["syn"]
    stats.add("wire", wire)
    stats.add("reported-wire", result.duration_seconds - wire)
    stats.add("before-syn", flow["syn"] - t_real)
    stats.add("after-close", t_real_end - flow["end"])


def run_swaks_once(env: dict[str, str], child_env: dict[str, str], helo: str, capture: WireCapture, stats: Stats,
                   measured: bool) -> None:
    t_real = time.time()
    wall, cpu, done = run_swaks(swaks_command(env, helo), child_env)
    if done.returncode != 0 or "\n<~  235 " not in done.stdout:
        stats.failures.append(f"exit {done.returncode}: {done.stdout[-200:]!r}")
        return
    flow = capture.wait(helo)
    if not measured:
        return
    stats.add("wall", wall)
    stats.add("cpu", cpu)
    stats.add("lapse", sum(float(x) for x in LAPSE.findall(done.stdout)))
    if flow is None:
        stats.unmatched += 1
        return
    stats.add("wire", flow["end"] - flow["syn"])
    stats.add("before-syn", flow["syn"] - t_real)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50, help="measured runs of each client (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs of each client first (default 3)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between runs (default 0.05)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 500:
        parser.error("--rounds must be 1..500")
    if shutil.which("swaks") is None:
        print("swaks is not installed: apt-get install -y swaks", file=sys.stderr)
        return 2
    env = lab_env()
    host, port = env["LAB_HOST"], int(env["LAB_SUBMISSION_PORT"])
    tag = uuid.uuid4().hex[:6]
    child_env = dict(os.environ, SWAKS_OPT_auth_password=Path(env["LAB_PASSWORD_FILE"]).read_text())
    runner = Runner("bench")
    capture = WireCapture(host, port, max_seconds=900)
    stats = {who: Stats() for who in CLIENTS}
    budget = time.monotonic() + 900  # hard bound on the whole loop
    started = time.monotonic()
    try:
        for i in range(args.warmup + args.rounds):
            if time.monotonic() > budget:
                print("time budget exhausted; stopping early", file=sys.stderr)
                break
            measured = i >= args.warmup
            order = CLIENTS[i % len(CLIENTS):] + CLIENTS[:i % len(CLIENTS)]
            for who in order:
                if not wait_port(host, port):
                    print("the lab's submission port stayed down for 120 s; stopping early", file=sys.stderr)
                    budget = 0
                    break
                helo = f"{who.replace('mailmon', 'mm')}-{tag}-{i}.bench.test"
                if who == "swaks":
                    run_swaks_once(env, child_env, helo, capture, stats[who], measured)
                else:
                    await run_mailmon(who, runner, env, helo, capture, stats[who], measured)
                await asyncio.sleep(args.pause)
        version_walls = [run_swaks(["swaks", "--version"], child_env)[0] for _ in range(20)]
        help_walls = [run_swaks(["swaks", "--help"], child_env)[0] for _ in range(5)]
    finally:
        capture.close()
    elapsed = time.monotonic() - started

    print(machine_line())
    print(f"load average at the end: {tuple(round(x, 2) for x in os.getloadavg())} (the lab is shared)")
    print(f"server: {host}:{port} (Postfix submission, STARTTLS, AUTH PLAIN via Dovecot SASL); rounds={args.rounds} "
          f"per client, warm-up={args.warmup} per client, interleaved in rotating order; {elapsed:.0f} s")
    swaks_version = subprocess.run(["swaks", "--version"], capture_output=True, text=True).stdout.split()[2]
    print(f"swaks {swaks_version}: CA pinned with --tls-verify --tls-ca-path (chain verified)")
    for who in CLIENTS:
        s = stats[who]
        if s.failures:
            print(f"{who}: {len(s.failures)} failed runs, not counted (other tests fault the shared lab: expired "
                  f"certificate, stopped daemon, ...), e.g. {s.failures[0][:160]}")
        if s.unmatched:
            print(f"{who}: {s.unmatched} runs whose connection the capture did not see")
    for who in CLIENTS[:3]:
        s = stats[who]
        slow = s.get("slow_ehlo_tls")
        print(f"\n{who} (Runner.execute in-process)")
        print(row("reported duration_seconds", s.get("reported")))
        print(row("wall time around execute()", s.get("wall")))
        print(row("sum of reported phases", s.get("phases")))
        print(row("wire: SYN -> first FIN/RST", s.get("wire")))
        print(row("reported - wire (per run)", s.get("reported-wire")))
        print(row("  of which: execute() start -> SYN", s.get("before-syn")))
        print(row("  of which: FIN/RST -> execute() returned", s.get("after-close")))
        print(row("reported - ehlo_tls phase", s.get("reported_minus_ehlo_tls")))
        for phase, values in s.phases.items():
            print(row(f"  phase {phase}", values))
        print(f"  runs with ehlo_tls > {SLOW_EHLO_TLS * 1000:.0f} ms: {int(sum(slow))}/{len(slow)}")
    s = stats["swaks"]
    print("\nswaks (one process per run)")
    print(row("process wall time", s.get("wall")))
    print(row("process CPU (user+sys)", s.get("cpu")))
    print(row("wire: SYN -> first FIN/RST", s.get("wire")))
    print(row("process start -> SYN", s.get("before-syn")))
    print(row("sum of --show-time-lapse replies", s.get("lapse")))
    print(row("baseline: `swaks --version` wall", version_walls))
    print(row("baseline: `swaks --help` wall", help_walls))
    wall_minus = [w - median(version_walls) for w in s.get("wall")]
    print(row("process wall - median(--version)", wall_minus))

    def ratio(a: list[float], b: list[float]) -> str:
        return f"{median(a) / median(b):.2f}" if a and b else "n/a"

    mm, sw = stats["mailmon"], stats["swaks"]
    print("\nratios of medians")
    print(f"  mailmon reported / mailmon wire                    {ratio(mm.get('reported'), mm.get('wire'))}")
    print(f"  mailmon reported / swaks wire                      {ratio(mm.get('reported'), sw.get('wire'))}")
    print(f"  mailmon wire / swaks wire                          {ratio(mm.get('wire'), sw.get('wire'))}")
    print(f"  mailmon reported / (swaks wall - --version)        {ratio(mm.get('reported'), wall_minus)}")
    print(f"  swaks process wall / mailmon reported              {ratio(sw.get('wall'), mm.get('reported'))}")
    for who in ("mailmon-tls12", "mailmon-quickack"):
        o = stats[who]
        print(f"  {who + ' reported / its wire':<50} {ratio(o.get('reported'), o.get('wire'))}")
        print(f"  {who + ' reported / swaks wire':<50} {ratio(o.get('reported'), sw.get('wire'))}")
    return 1 if any(not stats[w].get("wire") for w in CLIENTS) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
