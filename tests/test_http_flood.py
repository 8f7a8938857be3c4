"""Acceptance for issue 18: a flood of idle half-requests on the HTTP port never reads as a server outage.

A real `mailmon run` under `prlimit --nofile=1024` probes the real mail lab while about 1,100 clients keep
opening connections to its HTTP port and sending half a request line, for 20 s. Every probe result of that time
(from the history) must pass, or fail with the local reason and `vantage_fault`; never a server state.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import builders
from tests.conftest import Lab, mailmon_command
from tests.processes import Monitor, http_get, wait_for
from tests.tools import tool

pytestmark = pytest.mark.lab

FLOOD_SECONDS = 20.0
FLOOD_CLIENTS = 1100  # more than the monitor's 1,024 descriptors
NOFILE = 1024
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\n"  # never the blank line that ends the head


def _config(tmp: Path, lab: Lab) -> Path:
    return builders.lab_config(tmp, lab, f"""
vantage: flood
defaults: {{interval: 2s, timeout: 2s}}
history: {{path: {tmp / "history.sqlite"}}}
""", name="flood.yaml")


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _peak_descriptors(pid: int, seconds: float) -> int:
    peak, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        peak = max(peak, _descriptors(pid))
        time.sleep(0.1)
    return peak


def _rejected(monitor: Monitor) -> float:
    for line in monitor.metrics().splitlines():
        if line.startswith("mailmon_http_connections_rejected_total "):
            return float(line.split()[1])
    raise AssertionError("mailmon_http_connections_rejected_total is missing")


async def _client(port: int, until: float) -> None:
    """Open, send half a request, hold until the server closes; again after a pause, until `until`."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        try:
            writer.write(HALF_REQUEST)
            await asyncio.wait_for(reader.read(), max(0.01, until - time.monotonic()))
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
        await asyncio.sleep(0.5)  # a careless client, not a tight loop: the machine's cores are shared


async def _flood(port: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    await asyncio.gather(*(_client(port, until) for _ in range(FLOOD_CLIENTS)))


@pytest.fixture
def flooded_monitor(tmp_path: Path, lab: Lab) -> Iterator[tuple[Monitor, Path]]:
    lab.control("fault", "reset")
    prlimit = tool("prlimit", package="util-linux")
    config = _config(tmp_path, lab)
    monitor = Monitor(config, tmp_path / "monitor.log", prefix=[prlimit, f"--nofile={NOFILE}"])
    try:
        yield monitor, config
    finally:
        monitor.stop()


def _history(config: Path, since: float) -> list[dict[str, object]]:
    done = subprocess.run(mailmon_command("history", "--config", str(config), "--json", "--since", f"{since:.0f}"),
                          capture_output=True, text=True, timeout=30, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_half_request_flood_never_reads_as_a_server_fault(flooded_monitor: tuple[Monitor, Path]) -> None:
    """Under a 20 s flood at nofile=1024, probes pass (or are vantage_fault/local_resources), the monitor
    answers /-/healthy within 1 s of the flood's end and returns to its descriptor baseline."""
    monitor, config = flooded_monitor
    pid = monitor.process.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * FLOOD_CLIENTS)), hard))
    try:
        wait_for(lambda: monitor.verdict("lab") == "ok", "the first verdict ok")
        baseline = _peak_descriptors(pid, 2.0)  # probes in flight hold sockets: the peak of a few cycles' time
        started = time.time()
        asyncio.run(_flood(int(monitor.listen.rsplit(":", 1)[1]), FLOOD_SECONDS))
        stopped = time.monotonic()
        status = wait_for(lambda: http_get(monitor.url + "/-/healthy", timeout=1.0)[0] == 200, "/-/healthy",
                          limit=1.0, every=0.05)
        healthy_after = time.monotonic() - stopped
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert status and healthy_after < 1.0
    wait_for(lambda: _descriptors(pid) <= baseline, f"descriptors back to the baseline {baseline}", limit=10.0)
    rows = [row for row in _history(config, started) if float(str(row["started_at"])) <= started + FLOOD_SECONDS]
    assert len(rows) >= 3 * int(FLOOD_SECONDS / 2) - 3, "the probes kept to their schedule"
    bad = [row for row in rows if not row["ok"] and (row["reason"], row["verdict"]) != ("local_resources",
                                                                                        "vantage_fault")]
    assert bad == []
    assert _rejected(monitor) > 0, "the flood reached the connection cap"


def _gauge(monitor: Monitor, name: str) -> float:
    for line in monitor.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is missing")


def test_connection_cap_is_lowered_to_keep_the_probes_descriptors(tmp_path: Path, lab: Lab) -> None:
    """--web.max-connections 500 under nofile=512 is lowered to 512 - (64 + 4 x 64) = 192, with a warning."""
    prlimit = tool("prlimit", package="util-linux")
    monitor = Monitor(_config(tmp_path, lab), tmp_path / "monitor.log", prefix=[prlimit, "--nofile=512"],
                      args=["--web.max-connections", "500"])
    try:
        assert _gauge(monitor, "mailmon_http_connections_max") == 192
    finally:
        monitor.stop()
    log = (tmp_path / "monitor.log").read_text()
    assert "descriptor limit too low for the HTTP connection cap" in log and "cap=192" in log


def test_configured_cap_is_kept_when_the_limit_allows_it(tmp_path: Path, lab: Lab) -> None:
    """--web.max-connections 7 with room to spare is the cap in force, without a warning."""
    monitor = Monitor(_config(tmp_path, lab), tmp_path / "monitor.log", args=["--web.max-connections", "7"])
    try:
        assert _gauge(monitor, "mailmon_http_connections_max") == 7
    finally:
        monitor.stop()
    assert "descriptor limit too low" not in (tmp_path / "monitor.log").read_text()
