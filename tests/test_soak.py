"""Soak: thousands of checks against healthy and hostile fakes at concurrency 100 leave nothing growing.

A monitor runs for months: a task, a socket or a few kilobytes kept per failed probe is an outage later.
This runs 3,000 checks (CI-sized: well under a minute here) through `Runner.run` with 100 in flight at
any moment, round-robin over 26 fakes (healthy ones, and ones that stay silent, drip, reset, refuse, send
garbage, 1 MB lines, endless lines, bad certificates...). Every result must carry its expected
(stage, reason), also under load. After a warm-up round (lazy imports, SSL contexts, the resolver's
thread pool, allocator arenas) it measures open file descriptors, asyncio tasks and RSS, and again at the
end, after a short settle. Bounds, and why:

- fds: within ±10 of the warm baseline. Every probe closes its socket; the slack covers sockets of the
  fakes still closing when measured, not a per-check leak (3,000 checks would leak hundreds).
- tasks: back to the baseline set exactly. A probe's helpers (aioimaplib's tasks, our watchers) all end.
- RSS: grows by less than 20 MB. Transcripts and buffers are bounded per probe, and the results are not
  kept; a leak of a few KB per check (a ProbeContext, a transport) would be 10+ MB over 3,000 checks,
  while allocator noise after the warm-up stays within a few MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from monitor.config import Target
from monitor.result import Result
from monitor.runner import Runner
from tests.conftest import open_fds
from tests.fakes import CLOSE, HANG, RESET, FakeServer, TlsMaterial, drip, seq
from tests.test_hostile import (
    MB,
    Case,
    endless_line,
    fake_target,
    imap,
    imap_flood,
    pop3,
    roundtrip_target,
    runner,
    smtp,
    smtp_tls,
)
from tests.test_hostile import tls_material as tls_material  # the session fixture, shared

pytestmark = pytest.mark.slow  # thousands of checks against fakes

CHECKS = 3000
WARMUP_CHECKS = 1000
CONCURRENCY = 100
FD_SLACK = 10
RSS_GROWTH_MAX = 20 * 1024 * 1024
TIMEOUT_HOSTILE = 0.5  # fakes that never answer: short, so they do not dominate the run
TIMEOUT = 10.0  # everyone else: generous, so load never turns a verdict into a timeout

OK = (None, None)
MIX: list[Case] = [
    Case("smtp-healthy", "smtp", smtp(), OK, timeout=TIMEOUT),
    Case("smtp-healthy-starttls", "smtp", smtp_tls("good"), OK, timeout=TIMEOUT, tls_mode="starttls"),
    Case("imap-healthy", "imap", imap(), OK, timeout=TIMEOUT),
    Case("imap-healthy-implicit", "imap", imap(), OK, timeout=TIMEOUT, tls_mode="implicit", implicit_cert="good"),
    Case("imap-flood-ok", "imap", imap(select=imap_flood(5000)), OK, timeout=TIMEOUT),
    Case("pop3-healthy", "pop3", pop3(), OK, timeout=TIMEOUT),
    Case("pop3-healthy-implicit", "pop3", pop3(), OK, timeout=TIMEOUT, tls_mode="implicit", implicit_cert="good"),
    Case("smtp-silent", "smtp", smtp(greeting=HANG), ("greeting", "timeout"), timeout=TIMEOUT_HOSTILE),
    Case("imap-silent", "imap", imap(greeting=HANG), ("greeting", "timeout"), timeout=TIMEOUT_HOSTILE),
    Case("pop3-greeting-drip", "pop3", pop3(greeting=drip(b"+OK fake POP3 ready\r\n")), ("greeting", "timeout"),
         timeout=TIMEOUT_HOSTILE),
    Case("pop3-multiline-unterminated", "roundtrip-pop3", pop3(uidl=seq(b"+OK\r\n1 a\r\n", HANG)),
         ("fetch", "timeout"), timeout=TIMEOUT_HOSTILE),
    Case("smtp-rst-at-accept", "smtp", smtp(greeting=RESET), ("greeting", "reset"), timeout=TIMEOUT),
    Case("imap-close-after-login", "imap", imap(login=seq(b"{tag} OK Logged in\r\n", CLOSE)), ("select", "reset"),
         timeout=TIMEOUT),
    Case("pop3-err-greeting", "pop3", pop3(greeting=b"-ERR go away\r\n"), ("greeting", "reply_5xx"),
         timeout=TIMEOUT),
    Case("imap-bye", "imap", imap(greeting=b"* BYE busy\r\n"), ("greeting", "reply_5xx"), timeout=TIMEOUT),
    Case("smtp-554", "smtp", smtp(greeting=b"554 no\r\n"), ("greeting", "reply_5xx"), timeout=TIMEOUT),
    Case("smtp-garbage", "smtp", smtp(greeting=b"HELLO\r\n"), ("greeting", "protocol"), timeout=TIMEOUT),
    Case("smtp-endless-line", "smtp", smtp(greeting=endless_line), ("greeting", "protocol"), timeout=TIMEOUT),
    Case("imap-1mb-line", "imap", imap(greeting=b"* OK " + b"x" * MB + b"\r\n"), ("greeting", "protocol"),
         timeout=TIMEOUT),
    Case("imap-foreign-tag", "imap", imap(login=b"ZZ1 OK yes\r\n"), ("auth", "protocol"), timeout=TIMEOUT),
    Case("smtp-auth-535", "smtp", smtp(auth=b"535 5.7.8 no\r\n"), ("auth", "auth_rejected"), timeout=TIMEOUT),
    Case("imap-login-no", "imap", imap(login=b"{tag} NO [AUTHENTICATIONFAILED] no\r\n"), ("auth", "auth_rejected"),
         timeout=TIMEOUT),
    Case("smtp-starttls-454", "smtp", smtp_tls("good", starttls=b"454 4.7.0 no TLS\r\n"), ("tls", "reply_4xx"),
         timeout=TIMEOUT, tls_mode="starttls"),
    Case("smtp-starttls-expired", "smtp", smtp_tls("expired"), ("tls", "cert_expired"), timeout=TIMEOUT,
         tls_mode="starttls"),
    Case("imap-implicit-wrong-host", "imap", imap(), ("tls", "cert_invalid"), timeout=TIMEOUT, tls_mode="implicit",
         implicit_cert="wrong_host"),
    Case("pop3-implicit-self-signed", "pop3", pop3(), ("tls", "cert_invalid"), timeout=TIMEOUT,
         tls_mode="implicit", implicit_cert="self_signed"),
]


@dataclass
class Snapshot:
    fds: int
    tasks: set[asyncio.Task[object]]
    rss: int  # bytes

    def __str__(self) -> str:
        return f"fds={self.fds} tasks={len(self.tasks)} rss={self.rss / MB:.1f}MB"


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc), so RSS shows what is alive rather than the high-water mark of
    100 TLS handshakes in flight; without it RSS wanders by ±10 MB between two identical rounds."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS is noisier, the bound still holds
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def snapshot(fakes: list[FakeServer]) -> Snapshot:
    """Counters once the fakes dropped their side of every connection (a dripping fake notices that the
    client left only at its next byte, up to a second later): what is left is the monitor's."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 5.0
    while any(fake.live for fake in fakes) and loop.time() < until:
        await asyncio.sleep(0.05)
    for _ in range(5):  # let aborted transports close and cancelled helpers finish
        await asyncio.sleep(0.05)
    gc.collect()
    _malloc_trim()
    return Snapshot(fds=open_fds(), tasks=set(asyncio.all_tasks()), rss=rss_bytes())


async def run_checks(jobs: list[tuple[Case, Target]], failures: list[str]) -> Counter[str]:
    """Run every job through Runner.run with CONCURRENCY workers; count outcomes, keep no Result."""
    seen: Counter[str] = Counter()
    queue: asyncio.Queue[tuple[Case, Target]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            case, target = queue.get_nowait()
            outcome: list[Result] = []
            result = await runner_with_recorder(outcome).run(target, target.checks[0])
            assert outcome == [result]  # the recorder saw exactly this result
            got = (result.stage, result.reason)
            seen[case.id] += 1
            if got != case.expected and len(failures) < 20:
                failures.append(f"{case.id}: expected {case.expected}, got {got}: {result.detail}")
            if result.duration_seconds >= case.timeout + 1.0 and len(failures) < 20:
                failures.append(f"{case.id}: took {result.duration_seconds:.2f}s (timeout {case.timeout}s)")

    workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
    await asyncio.gather(*workers)
    return seen


class _Kept:
    """A recorder that keeps what it is given."""

    def __init__(self, into: list[Result]) -> None:
        self.into = into

    def record(self, result: Result) -> None:
        self.into.append(result)


def runner_with_recorder(into: list[Result]) -> Runner:
    base = runner()
    base.recorder = _Kept(into)
    return base


async def test_soak_stays_flat(tls_material: TlsMaterial, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    fakes: list[tuple[Case, FakeServer]] = []
    for case in MIX:
        server_ssl = tls_material.server_context(case.implicit_cert) if case.implicit_cert else None
        fakes.append((case, await FakeServer(case.server(tls_material), ssl=server_ssl).start()))
    try:
        targets: list[tuple[Case, Target]] = []
        for case, fake in fakes:
            if case.check == "roundtrip-pop3":
                target = roundtrip_target(fake.port, via="pop3", timeout=case.timeout, ca_file=str(tls_material.ca))
            else:
                target = fake_target(case.check, fake.port, tls_mode=case.tls_mode, timeout=case.timeout,
                                     ca_file=str(tls_material.ca))
            targets.append((case, target))
        failures: list[str] = []

        servers = [fake for _, fake in fakes]
        # The warm-up is the same workload: RSS is a high-water mark (glibc keeps freed arenas), and 100
        # TLS handshakes in flight (client and fake server in this one process) raise it by ~100 MB once.
        await run_checks([targets[i % len(targets)] for i in range(WARMUP_CHECKS)], failures)
        start = await snapshot(servers)

        jobs = [targets[i % len(targets)] for i in range(CHECKS)]
        began = time.perf_counter()
        seen = await run_checks(jobs, failures)
        elapsed = time.perf_counter() - began
        end = await snapshot(servers)
        print(f"\nsoak: {CHECKS} checks in {elapsed:.1f}s ({CHECKS / elapsed:.0f} checks/s), "
              f"concurrency {CONCURRENCY}; start {start}; end {end}")

        assert not failures, "\n".join(failures)
        asyncio_errors = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
        assert not asyncio_errors, asyncio_errors[:5]
        assert sum(seen.values()) == CHECKS
        assert abs(end.fds - start.fds) <= FD_SLACK, f"fds {start.fds} -> {end.fds}"
        assert end.tasks == start.tasks, f"tasks left: {end.tasks - start.tasks}"
        assert end.rss - start.rss < RSS_GROWTH_MAX, f"RSS {start.rss / MB:.1f}MB -> {end.rss / MB:.1f}MB"
    finally:
        for _, fake in fakes:
            await fake.close()
