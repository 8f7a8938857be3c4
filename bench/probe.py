#!/usr/bin/env python3
"""GET /probe throughput and CPU per probe, against the scheduler mode and blackbox_exporter's /probe, in one run.

The same check everywhere: SMTP on the lab's port 25 without TLS or AUTH (banner, EHLO, QUIT), so the figures
compare the machinery around a check, not the checks.

  scheduler   `mailmon run` with --targets configured targets (all the lab, interval --interval): the rate is
              what the schedule asks for (targets / interval); probes counted from mailmon_check_runs_total.
  probe       `mailmon run` with one module and no targets, driven by --scrapers Prometheus-style clients in
              this process, each looping GET /probe?module=smtp_relay&target=127.0.0.2:25 with the header
              X-Prometheus-Scrape-Timeout-Seconds (closed loop: as fast as answers come).
  blackbox    prometheus-blackbox-exporter (Debian's package), tcp prober with the same dialogue (expect ^220,
              EHLO, expect ^250 , QUIT, expect ^221), driven by the same clients.

Each variant runs --seconds after a warm-up; CPU is utime+stime of the server process (not the clients) from
/proc/PID/stat, read at the start and end of the window. Variants run in rounds (--rounds), the order rotating,
so the machine's drift (other engineers' work) spreads over all of them; the table gives medians over rounds.

Run inside your lab's network namespace: /work/tools/labns NAME .venv/bin/python bench/probe.py
Usage: python bench/probe.py [--seconds 15] [--rounds 2] [--scrapers 8] [--targets 200] [--interval 2]
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import lab_env, machine_line, median, proc_cpu, stop, wait_port  # noqa: E402

BLACKBOX_CONFIG = """\
modules:
  smtp_relay:
    prober: tcp
    timeout: 10s
    tcp:
      preferred_ip_protocol: ip4
      query_response:
        - expect: "^220"
        - send: "EHLO bench.test\\r"
        - expect: "^250 "
        - send: "QUIT\\r"
        - expect: "^221"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_http(port: int, path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"nothing answered {path} on port {port}")


def drive(port: int, path: str, scrapers: int, seconds: float, ok: bytes) -> tuple[int, int]:
    """Closed-loop scrapers for `seconds`; (answers carrying `ok`, other answers)."""
    counts = [0, 0]
    lock = threading.Lock()
    end = time.monotonic() + seconds
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < end:
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                good = response.status == 200 and ok in response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                good = False
            with lock:
                counts[0 if good else 1] += 1
        conn.close()

    threads = [threading.Thread(target=loop) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts[0], counts[1]


def runs_total(port: int) -> float:
    _, body = get(port, "/metrics")
    return sum(float(line.rsplit(b" ", 1)[1]) for line in body.splitlines()
               if line.startswith(b"mailmon_check_runs_total{"))


def measure(pid: int, seconds: float, work: callable) -> tuple[float, float, int, int]:  # type: ignore[valid-type]
    """(wall seconds, CPU seconds of pid, probes ok, probes failed) over one window of `work`."""
    cpu0, t0 = proc_cpu(pid), time.monotonic()
    ok, failed = work(seconds)
    return time.monotonic() - t0, proc_cpu(pid) - cpu0, ok, failed


def mailmon(tmp: Path, config: str, name: str) -> tuple[subprocess.Popen[bytes], int]:
    path = tmp / f"{name}.yaml"
    path.write_text(config)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(path), "--listen",
                                f"127.0.0.1:{port}", "--log.level", "error"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=(tmp / f"{name}.log").open("wb"))
    wait_http(port, "/-/healthy")
    return process, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scrapers", type=int, default=8)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    env = lab_env()
    host = env["LAB_HOST"]
    if not wait_port(host, 25, 30):
        raise SystemExit(f"the lab's SMTP port {host}:25 does not answer: start the lab")
    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    module = "modules:\n  smtp_relay: {protocol: smtp, port: 25, tls: none, timeout: 10s}\n"
    targets = "".join(f"  - {{name: lab{i:04d}, host: {host}, smtp: {{port: 25, tls: none}}}}\n"
                      for i in range(args.targets))
    interval = f"{args.interval:g}s"
    exporter = shutil.which("prometheus-blackbox-exporter") or (
        "/usr/bin/prometheus-blackbox-exporter" if Path("/usr/bin/prometheus-blackbox-exporter").exists() else None)
    variants = ["scheduler", "probe"] + (["blackbox"] if exporter else [])
    if not exporter:
        print("prometheus-blackbox-exporter not installed (apt-get install prometheus-blackbox-exporter): "
              "blackbox left out", file=sys.stderr)
    results: dict[str, list[tuple[float, float, int, int]]] = {v: [] for v in variants}
    print(machine_line())
    print(f"check: SMTP {host}:25, no TLS, no AUTH; {args.seconds:g} s per window, {args.rounds} rounds; "
          f"/probe and blackbox: {args.scrapers} closed-loop scrapers; scheduler: {args.targets} targets every "
          f"{interval}")
    for round_no in range(args.rounds):
        order = variants[round_no % len(variants):] + variants[:round_no % len(variants)]
        for variant in order:
            if variant == "scheduler":
                process, port = mailmon(tmp, f"vantage: bench\ndefaults: {{interval: {interval}, timeout: "
                                             f"{min(args.interval, 10):g}s}}\nselfcheck: {{interval: 1h}}\n"
                                             f"targets:\n{targets}", "scheduler")
                time.sleep(args.interval * 2)  # past the start-up spread

                def work(seconds: float, port: int = port) -> tuple[int, int]:
                    before = runs_total(port)
                    time.sleep(seconds)
                    return int(runs_total(port) - before), 0
            elif variant == "probe":
                process, port = mailmon(tmp, f"vantage: bench\nconcurrency: 64\n{module}", "probe")
                path = f"/probe?module=smtp_relay&target={host}:25"
                drive(port, path, args.scrapers, 2.0, b"mailmon_check_success")  # warm-up

                def work(seconds: float, port: int = port, path: str = path) -> tuple[int, int]:
                    return drive(port, path, args.scrapers, seconds,
                                 b'mailmon_check_success{check="smtp",target="' + host.encode() + b':25",'
                                 b'vantage="bench",via=""} 1.0')
            else:
                assert exporter is not None
                (tmp / "blackbox.yml").write_text(BLACKBOX_CONFIG)
                port = free_port()
                process = subprocess.Popen([exporter, f"--config.file={tmp / 'blackbox.yml'}",
                                            f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_http(port, "/metrics")
                path = f"/probe?module=smtp_relay&target={host}:25"
                drive(port, path, args.scrapers, 2.0, b"probe_success 1")

                def work(seconds: float, port: int = port, path: str = path) -> tuple[int, int]:
                    return drive(port, path, args.scrapers, seconds, b"probe_success 1")
            try:
                results[variant].append(measure(process.pid, args.seconds, work))
            finally:
                stop(process, 20)
            wall, cpu, ok, failed = results[variant][-1]
            print(f"  round {round_no + 1} {variant:<9} {ok / wall:8.1f} probes/s  {1000 * cpu / max(ok, 1):6.2f} "
                  f"ms CPU/probe  ({ok} ok, {failed} failed, CPU {cpu:.2f} s over {wall:.1f} s)", flush=True)
    print(f"{'variant':<10} {'probes/s':>9} {'CPU ms/probe':>13} {'CPU share':>10} {'failed':>7}")
    for variant, rows in results.items():
        rate = median([ok / wall for wall, _, ok, _ in rows])
        per = median([1000 * cpu / max(ok, 1) for _, cpu, ok, _ in rows])
        share = median([cpu / wall for wall, cpu, _, _ in rows])
        failed = sum(f for *_, f in rows)
        print(f"{variant:<10} {rate:9.1f} {per:13.2f} {100 * share:9.0f}% {failed:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
