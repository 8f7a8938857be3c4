#!/usr/bin/env python3
"""How late does the round trip notice a delivered message? Reported latency versus real visibility.

Real visibility is when Dovecot's delivery renames the message file into the Maildir's `new/` directory,
seen by an inotify watch in this process (microsecond resolution, same clock as the probe). For each
round trip: reported = what mailmon says (acceptance → the poll that saw it); real = acceptance → the
file appearing; detection delay = reported − real.

Modes, run interleaved in one session against the lab (which must be quiet: no other mail):
  imap        mailmon's read-back: fast polls after acceptance, IDLE for the long tail
  imap-idle   baseline: IDLE only (what a plain IDLE client sees; Dovecot delays IDLE by 0.5 s)
  pop3        mailmon's read-back: fast polls (a fresh login each), slow polls for the long tail
  pop3-slow   baseline: one poll a second
  courier     with --courier: mailmon's IMAP read-back through Courier-IMAP (unpacked by scripts/other-mailstores),
              a server that reports new mail only in answer to NOOP/IDLE, reading the same Maildir

Usage: python bench/roundtrip_detection.py [--rounds N] [--courier]   (needs `scripts/mail-lab start`, as root)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor import config  # noqa: E402
from monitor.config import DEFAULT_JUNK_FOLDERS, Auth, RoundTripSettings, Secret, Target, TlsSettings  # noqa: E402
from monitor.probes import PROBES, for_kind  # noqa: E402
from monitor.probes import roundtrip as roundtrip_module  # noqa: E402
from monitor.probes.roundtrip import RoundTrip  # noqa: E402
from monitor.runner import Runner  # noqa: E402

IN_CREATE = 0x100
IN_MOVED_TO = 0x80


class MaildirWatch:
    """Timestamps (perf_counter) of every file that appears in the watched directories."""

    def __init__(self, directories: list[Path]) -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = libc.inotify_init()
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init failed")
        for directory in directories:
            if libc.inotify_add_watch(self.fd, str(directory).encode(), IN_CREATE | IN_MOVED_TO) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self.events: list[float] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            data = os.read(self.fd, 65536)
            now = time.perf_counter()
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                offset += 16 + length
                if mask & (IN_CREATE | IN_MOVED_TO):
                    with self._lock:
                        self.events.append(now)

    def first_after(self, moment: float) -> float | None:
        with self._lock:
            later = [t for t in self.events if t >= moment]
        return min(later) if later else None


def lab_env() -> dict[str, str]:
    out = subprocess.run([str(ROOT / "scripts" / "mail-lab"), "env"], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def lab_target(env: dict[str, str]) -> Target:
    password = Path(env["LAB_PASSWORD_FILE"]).read_text()
    smtp = config.SmtpSettings(port=587, tls_mode="starttls", interval=60, timeout=10)
    trips = tuple(RoundTripSettings(port=port, tls_mode="implicit", interval=60, timeout=20, via=via,
                                    recipient=env["LAB_USER"], sender=env["LAB_USER"],
                                    junk_folders=DEFAULT_JUNK_FOLDERS)
                  for via, port in (("imap", 993), ("pop3", 995)))
    imap = config.ImapSettings(port=993, tls_mode="implicit", interval=60, timeout=10)
    pop3 = config.Pop3Settings(port=995, tls_mode="implicit", interval=60, timeout=10)
    return Target(name="lab", host=env["LAB_HOST"], tls=TlsSettings(env["LAB_CA"], env["LAB_TLS_SERVER_NAME"]),
                  auth=Auth(env["LAB_USER"], Secret(password)), checks=(smtp, imap, pop3, *trips))


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


@contextlib.contextmanager
def courier(env: dict[str, str]) -> Iterator[Target]:
    """Courier-IMAP on the lab's Maildir (as tests/test_other_mailstores.py runs it); yields a target reading back
    through it."""
    from tests.test_other_mailstores import COURIER_PORT, COURIER_ROOT, COURIER_START
    from tests.tools import find_tool

    run = Path(tempfile.mkdtemp(prefix="mailmon-bench-courier-"))
    run.chmod(0o755)
    (run / "log").mkdir()
    shutil.chown(run / "log", "mailmonlab", "mailmonlab")
    (run / "start.sh").write_text(COURIER_START.format(root=COURIER_ROOT, maildir=env["LAB_MAILDIR"], user="mailmonlab",
                                                       host=env["LAB_HOST"], port=COURIER_PORT, run=run,
                                                       setpriv=find_tool("setpriv") or "setpriv"))
    proc = subprocess.Popen(["sh", str(run / "start.sh")], stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        until = time.monotonic() + 20
        while not _listening(env["LAB_HOST"], COURIER_PORT):
            if time.monotonic() > until or proc.poll() is not None:
                raise RuntimeError("Courier-IMAP did not start (run scripts/other-mailstores)")
            time.sleep(0.05)
        target = lab_target(env)
        trip = dataclasses.replace(next(c for c in target.checks if c.via == "imap"), port=COURIER_PORT,
                                   tls_mode="none")
        yield dataclasses.replace(target, checks=(*target.checks, trip))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(run, ignore_errors=True)


async def one(target: Target, via: str, fast: bool, watch: MaildirWatch,
              port: int | None = None) -> tuple[float, float]:
    """(reported, real) latency in seconds for one round trip in the given mode."""
    trip = RoundTrip(Secret("bench-probe-key-0123456789"), "bench")
    accepted: list[float] = []
    submit = trip._submit

    async def timed_submit(*args):  # type: ignore[no-untyped-def]
        sent = await submit(*args)  # (accepted at, message size)
        accepted.append(sent[0])
        return sent

    trip._submit = timed_submit  # type: ignore[method-assign]
    saved = roundtrip_module._FAST_WINDOW
    roundtrip_module._FAST_WINDOW = saved if fast else 0.0
    try:
        check = next(c for c in target.checks if c.via == via and (port is None or c.port == port))
        probes = {**PROBES, "roundtrip": for_kind(RoundTripSettings, trip)}
        result = await Runner("bench", probes=probes).execute(target, check)
    finally:
        roundtrip_module._FAST_WINDOW = saved
    if not result.ok:
        raise RuntimeError(f"round trip failed: {result.stage}/{result.reason} {result.detail}")
    visible = watch.first_after(accepted[0])
    if visible is None:
        raise RuntimeError("the watch saw no delivery")
    return result.phases["delivery"], visible - accepted[0]


def summary(name: str, delays: list[float], reals: list[float]) -> str:
    ordered = sorted(delays)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"{name:10s} n={len(delays):3d}  detection delay median {statistics.median(delays) * 1000:7.1f} ms"
            f"  p95 {p95 * 1000:7.1f} ms   (real delivery median {statistics.median(reals) * 1000:6.1f} ms)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="round trips per mode (default 40)")
    parser.add_argument("--courier", action="store_true", help="also read back through Courier-IMAP")
    args = parser.parse_args()
    env = lab_env()
    maildir = Path(env["LAB_MAILDIR"])
    watch = MaildirWatch([maildir / "new", maildir / "cur"])
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(courier(env)) if args.courier else lab_target(env)
        await measure(args.rounds, target, watch, args.courier)


async def measure(rounds: int, target: Target, watch: MaildirWatch, with_courier: bool) -> None:
    modes: dict[str, tuple[str, bool, int | None]] = {
        "imap": ("imap", True, 993), "imap-idle": ("imap", False, 993), "pop3": ("pop3", True, None),
        "pop3-slow": ("pop3", False, None)}
    if with_courier:
        modes["courier"] = ("imap", True, target.checks[-1].port)
    delays: dict[str, list[float]] = {name: [] for name in modes}
    reals: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, (via, fast, port) in modes.items():  # interleaved, so drift in the lab hits every mode alike
            reported, real = await one(target, via, fast, watch, port)
            delays[name].append(reported - real)
            reals[name].append(real)
    print(f"round trips per mode: {rounds}; lab: Postfix submission 587 → LMTP → Dovecot Maildir")
    for name in modes:
        print(summary(name, delays[name], reals[name]))
    for ours, baseline in (("imap", "imap-idle"), ("pop3", "pop3-slow")):
        ratio = statistics.median(delays[baseline]) / max(statistics.median(delays[ours]), 1e-6)
        print(f"{ours}: median detection delay {ratio:.0f}x smaller than {baseline}")


if __name__ == "__main__":
    asyncio.run(main())
