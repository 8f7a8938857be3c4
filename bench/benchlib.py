#!/usr/bin/env python3
"""Helpers shared by the benchmarks in bench/: the lab's settings, the machine, /proc readings, percentiles,
a tiny HTTP GET, and a loopback packet capture that times TCP connections on the wire.

Not a test module and not part of mailmon. `python bench/benchlib.py sniff ...` is the capture's child process.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import platform
import re
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAIL_LAB = ROOT / "scripts" / "mail-lab"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the machine and the lab ------------------------------------------------------------------------------------

def monitor_of(ref: str, directory: Path) -> Path:
    """monitor/ of git REF unpacked into `directory`/before (for --before: an older revision driven by the same
    harness, ahead of this checkout on sys.path)."""
    before = directory / "before"
    before.mkdir()
    archive = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "archive", ref, "monitor"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    return before


async def loop_lateness(into: list[tuple[float, float]], period: float) -> None:
    """Sleep `period` seconds again and again on the running loop, noting (when, how late it woke): a stalled
    loop wakes late, and every probe's timing with it."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(period)
        into.append((t0, loop.time() - t0 - period))


def observe_results(app: Any, observed: Any) -> None:
    """Have `observed(result)` see every Result a monitor App records, on this checkout's App (its recorder) and on
    an older revision's (its runner's sink list, `--before`)."""
    recorder = getattr(app, "recorder", None)
    if recorder is None:
        app.runner.sinks.append(observed)
        return
    record = recorder.record

    def both(result: Any) -> None:
        record(result)
        observed(result)

    recorder.record = both


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version()}


def machine_line() -> str:
    m = machine()
    return f"machine: nproc={m['nproc']} cpu={m['cpu']!r} kernel={m['kernel']} python={m['python']}"


def lab_env() -> dict[str, str]:
    done = subprocess.run([str(MAIL_LAB), "env"], capture_output=True, text=True, timeout=30, check=True)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def wait_port(host: str, port: int, timeout: float = 120.0) -> bool:
    """Wait (bounded) until HOST:PORT accepts a TCP connection: other engineers' tests stop and start lab
    daemons. True once it does, False at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(2)


# --- numbers ----------------------------------------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


# --- /proc ------------------------------------------------------------------------------------------------------

def proc_cpu(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or of one of its threads), in seconds (resolution 1/CLK_TCK)."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmHWM, VmRSS), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat: the difference of two readings says what share of the
    machine the hypervisor gave to other guests meanwhile (on a VM, the noise no run of ours can control)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user and nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid`, by thread id. Time a thread waited for a core,
    or that the hypervisor stole, is not in it: a cost figure that the machine's noise leaves alone."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
    return out


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time stolen between two `cpu_times` readings (0..1)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def proc_threads(pid: int) -> int:
    return proc_status_kb(pid, "Threads")


def top_frames(*raws: Path, limit: int = 25) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """From py-spy's collapsed stacks: (self samples per frame, inclusive samples per frame, total samples)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    lines = [line for raw in raws if raw.exists() for line in raw.read_text().splitlines()]
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        # One entry per function, not per line: "f (file.py:12)" and "f (file.py:30)" are both "f (file.py)".
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += count
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    key = lambda kv: -kv[1]  # noqa: E731
    return sorted(own.items(), key=key)[:limit], sorted(inclusive.items(), key=key)[:limit], total


def print_profile(own: list[tuple[str, int]], inclusive: list[tuple[str, int]], total: int,
                  indent: str = "    ", n_self: int = 15, n_incl: int = 25) -> None:
    print(f"{indent}self (leaf frame), % of {total} samples:")
    for frame, count in own[:n_self]:
        print(f"{indent}  {100 * count / max(total, 1):5.1f}%  {frame}")
    print(f"{indent}inclusive (frame anywhere on the stack):")
    for frame, count in inclusive[:n_incl]:
        print(f"{indent}  {100 * count / max(total, 1):5.1f}%  {frame}")


# --- HTTP -------------------------------------------------------------------------------------------------------

def http_get(host: str, port: int, path: str, timeout: float = 60.0,
             accept_gzip: bool = False) -> tuple[int, bytes, float, int]:
    """(status, body, seconds from connect to the last byte, bytes on the wire); one request per connection.

    With `accept_gzip` the request says `Accept-Encoding: gzip`, as Prometheus does; a gzip body is decompressed
    after the clock stops (the scraper's own work, not the server's).
    """
    started = time.perf_counter()
    accept = "Accept-Encoding: gzip\r\n" if accept_gzip else ""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{accept}Connection: close\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    elapsed = time.perf_counter() - started
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    wire = len(body)
    if b"content-encoding: gzip" in head.lower():
        body = gzip.decompress(body)
    return status, body, elapsed, wire


def _unchunk(body: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


# --- wire timing ------------------------------------------------------------------------------------------------

class WireCapture:
    """Times TCP connections to HOST:PORT on the loopback interface, from the client's SYN to the first FIN/RST
    of either side, with kernel timestamps, in a child process (so it neither shares the GIL with nor steals
    time from the measured client). Connections are told apart by the name the client sent in its first EHLO,
    which each benchmark run makes unique: other engineers' traffic to the same port is simply ignored."""

    def __init__(self, host: str, port: int, max_seconds: float = 1800.0) -> None:
        self.flows: dict[str, dict[str, float]] = {}
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "sniff", "--host", host, "--port", str(port), "--max-seconds", str(max_seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"packet capture did not start (needs root): {ready!r}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            flow = json.loads(line)
            with self._cond:
                self.flows[flow["ehlo"]] = flow
                self._cond.notify_all()

    def wait(self, ehlo: str, timeout: float = 5.0) -> dict[str, float] | None:
        """The flow whose first EHLO carried `ehlo`, once it closed; None if it never showed up."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while ehlo not in self.flows:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.flows[ehlo]

    def close(self) -> None:
        stop(self._proc, 10, close_stdin=True)


def stop(process: subprocess.Popen[Any], grace: float, close_stdin: bool = False) -> None:
    """Ask `process` to end (SIGTERM, or closing its stdin for children that stop at EOF), wait up to `grace`
    seconds, then kill it."""
    if not close_stdin:
        process.terminate()
    elif process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_SO_TIMESTAMPNS = 35  # Linux; not exported by Python's socket module
_PACKET_HOST = 0      # sll_pkttype: on `lo` every packet is seen twice, as OUTGOING (4) and as HOST (0)
_FIN, _SYN, _RST = 0x01, 0x02, 0x04


def _sniff(host: str, port: int, max_seconds: float) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    sock.bind(("lo", 0))
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    server = socket.inet_aton(host)
    flows: dict[int, dict[str, Any]] = {}
    print("ready", flush=True)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock, sys.stdin], [], [], 1.0)
        if sys.stdin in readable and not sys.stdin.readline():
            return  # the parent closed our stdin: done
        if sock not in readable:
            continue
        data, ancillary, _flags, address = sock.recvmsg(65535, 64)
        if address[2] != _PACKET_HOST or len(data) < 14 + 20 or data[12:14] != b"\x08\x00":
            continue
        ts = time.time()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                ts = sec + nsec / 1e9
        ip = data[14:]
        if ip[9] != 6:  # TCP only
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        src, dst = ip[12:16], ip[16:20]
        sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
        flags = ip[ihl + 13]
        offset = (ip[ihl + 12] >> 4) * 4
        payload = ip[ihl + offset:total]
        if dst == server and dport == port:
            client_port, from_client = sport, True
        elif src == server and sport == port:
            client_port, from_client = dport, False
        else:
            continue
        if from_client and flags & _SYN:
            flows[client_port] = {"syn": ts, "ehlo": None}
            continue
        flow = flows.get(client_port)
        if flow is None:
            continue
        if from_client and flow["ehlo"] is None and payload.upper().startswith(b"EHLO "):
            flow["ehlo"] = payload[5:].strip().decode("ascii", "replace")
            flow["ehlo_sent"] = ts
        if not from_client and payload:
            flow.setdefault("first_server_payload", ts)
        if flags & (_FIN | _RST):
            flow.setdefault("end", ts)
            flow.setdefault("ender", ("client" if from_client else "server") + (" rst" if flags & _RST else " fin"))
            flows.pop(client_port)
            if flow["ehlo"] is not None:
                print(json.dumps(flow), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sniff = sub.add_parser("sniff", help="(internal) the WireCapture child process")
    sniff.add_argument("--host", required=True)
    sniff.add_argument("--port", type=int, required=True)
    sniff.add_argument("--max-seconds", type=float, default=1800.0)
    sub.add_parser("machine", help="print the machine line")
    args = parser.parse_args()
    if args.command == "sniff":
        _sniff(args.host, args.port, args.max_seconds)
    else:
        print(machine_line())


if __name__ == "__main__":
    main()
