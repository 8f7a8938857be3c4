"""The support desk against the real lab and two running monitors: "a user reports error X", and change windows."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import builders
from tests.conftest import Lab, free_port, mailmon_command
from tests.processes import Monitor, http_get, wait_for
from tests.tools import tool

pytestmark = pytest.mark.lab

VANTAGES = ("office", "datacenter")
# A weekly window that first opens tomorrow at 02:00 UTC.
NEXT_MAINTENANCE = (int(time.time() // 86400) + 1) * 86400 + 7200


def _config(tmp: Path, lab: Lab, vantage: str) -> Path:
    # A change window that opened an hour ago and lasts a day, in the monitor's config as support would add it.
    opened = time.strftime("%Y-%m-%d %H:%M", time.gmtime(time.time() - 3600))
    weekly = time.strftime("%Y-%m-%d %H:%M", time.gmtime(NEXT_MAINTENANCE))
    return builders.lab_config(tmp, lab, f"""
vantage: {vantage}
listen: 127.0.0.1:9
defaults: {{interval: 2s, timeout: 2s}}
changes:
  - calendar: client-updates
    entries:
      - {{name: Patch Tuesday, start: "{opened}", timezone: UTC, duration: 1d}}
      - {{name: Maintenance, start: "{weekly}", timezone: UTC, duration: 1h, rrule: FREQ=WEEKLY}}
""", name=f"{vantage}.yaml")


@pytest.fixture(scope="module")
def monitors(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Monitor]]:
    tmp = tmp_path_factory.mktemp("support")
    lab.control("fault", "reset")
    running = [Monitor(_config(tmp, lab, vantage), tmp / f"{vantage}.log") for vantage in VANTAGES]
    try:
        for monitor in running:
            wait_for(_verdict_is(monitor, "ok"), "each monitor to see the lab healthy", limit=20)
        yield running
    finally:
        for monitor in running:
            monitor.stop()
        lab.control("fault", "reset")


def _verdict_is(monitor: Monitor, verdict: str) -> Callable[[], bool]:
    return lambda: monitor.verdict("lab") == verdict


@pytest.fixture
def smtp_down(lab: Lab, monitors: list[Monitor]) -> Iterator[None]:
    lab.control("fault", "smtp", "on")
    try:
        for monitor in monitors:
            wait_for(_verdict_is(monitor, "smtp_down"), "each monitor to see SMTP down", limit=20)
        yield
    finally:
        lab.control("fault", "smtp", "off")
        for monitor in monitors:
            wait_for(_verdict_is(monitor, "ok"), "each monitor to see the lab healthy", limit=20)


def _ask(monitors: list[Monitor], tmp: Path, lab: Lab, reported: str) -> subprocess.CompletedProcess[str]:
    urls = [arg for m in monitors for arg in ("--monitor", m.url)]
    return subprocess.run(mailmon_command("diagnose", "--config", str(_config(tmp, lab, "laptop")), "--target", "lab",
                                          *urls, "--client-error", reported),
                          capture_output=True, text=True, timeout=60)


def test_0x800ccc13_with_smtp_down_is_server_side(monitors: list[Monitor], smtp_down: None, tmp_path: Path,
                                                   lab: Lab) -> None:
    """Postfix's SMTP down: 0x800CCC13 is server side (2), naming SMTP connect failing from both vantages."""
    done = _ask(monitors, tmp_path, lab, "0x800CCC13")
    assert done.returncode == 2, done.stdout + done.stderr
    for vantage in VANTAGES:
        assert f"SMTP (smtp) from {vantage} fails at connect (refused)" in done.stdout
    assert "from every vantage (datacenter, office): the fault is on the server side" in done.stdout
    assert "Change window open now: Patch Tuesday (client-updates)." in done.stdout


def test_0x800ccc13_with_the_lab_healthy_is_client_side(monitors: list[Monitor], tmp_path: Path, lab: Lab) -> None:
    """The lab healthy: 0x800CCC13 is the client or its network (1), naming the working step."""
    done = _ask(monitors, tmp_path, lab, "Sending reported error (0x800CCC13)")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "The server accepts connect from datacenter, office: this is the client or its network" in done.stdout


def test_thunderbird_text_with_smtp_down_is_server_side(monitors: list[Monitor], smtp_down: None, tmp_path: Path,
                                                        lab: Lab) -> None:
    """Thunderbird's "connecting to Outgoing server (SMTP) failed" with SMTP down: server side (2)."""
    done = _ask(monitors, tmp_path, lab, "The message could not be sent because connecting to Outgoing server (SMTP) "
                                         "mail.lab.test failed. The server may be unavailable or is refusing SMTP "
                                         "connections.")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Thunderbird reports thunderbird-smtp-request-refused" in done.stdout


def test_japanese_outlook_message_with_the_lab_healthy_is_client_side(monitors: list[Monitor], tmp_path: Path,
                                                                      lab: Lab) -> None:
    """Outlook's Japanese "the connection to the server was interrupted": whole sessions work, so client side."""
    done = _ask(monitors, tmp_path, lab, "サーバーへの接続が中断されました。")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "outlook-0x800ccc0f" in done.stdout


def test_japanese_thunderbird_message_with_smtp_down_is_server_side(monitors: list[Monitor], smtp_down: None,
                                                                    tmp_path: Path, lab: Lab) -> None:
    """Thunderbird's Japanese connect failure with SMTP down: server side (2)."""
    done = _ask(monitors, tmp_path, lab,
                "送信 (SMTP) サーバー mail.lab.test に接続できなかったため、メッセージを送信できませんでした。")
    assert done.returncode == 2, done.stdout + done.stderr


def test_unreachable_monitors_cannot_tell(tmp_path: Path, lab: Lab) -> None:
    """No monitor to ask: cannot tell (3)."""
    done = subprocess.run(mailmon_command("diagnose", "--config", str(_config(tmp_path, lab, "laptop")), "--monitor",
                                          f"http://127.0.0.1:{free_port()}", "--client-error", "0x800CCC13"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "could not be reached" in done.stdout


def test_api_explain_answers_in_json(monitors: list[Monitor]) -> None:
    """/api/explain gives the same answer as JSON, with the matched entry and its source."""
    query = urllib.parse.urlencode({"error": "0x800CCC13", "target": "lab"})
    status, body = http_get(f"{monitors[0].url}/api/explain?{query}")
    answer = json.loads(body)
    assert status == 200 and answer["code"] == 1 and answer["conclusion"] == "client_side"
    assert answer["matches"][0]["id"] == "outlook-0x800ccc13"
    assert answer["matches"][0]["source"].startswith("Windows SDK")


def test_api_explain_rejects_an_unknown_target(monitors: list[Monitor]) -> None:
    """An unknown target is a 400 with the names that exist."""
    status, body = http_get(f"{monitors[0].url}/api/explain?error=0x800CCC13&target=nope")
    assert status == 400 and json.loads(body) == {"error": "target must be one of: lab"}


def test_change_window_series_and_summary(monitors: list[Monitor]) -> None:
    """The open window is 1 in the metrics, has a next start, and the verdict summary names it."""
    metrics = monitors[0].metrics()
    assert ('mailmon_change_window_active{calendar="client-updates",change="Patch Tuesday",vantage="office"} 1.0'
            in metrics)
    assert ('mailmon_change_window_active{calendar="client-updates",change="Maintenance",vantage="office"} 0.0'
            in metrics)
    starts = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(
        'mailmon_change_window_next_start_timestamp_seconds{calendar="client-updates",change="Maintenance",')]
    assert starts == [float(NEXT_MAINTENANCE)]
    status = json.loads(http_get(monitors[0].url + "/api/status")[1])
    assert status["targets"][0]["summary"].endswith("During change window Patch Tuesday (client-updates).")
    assert [w["change"] for w in status["change_windows_open"]] == ["Patch Tuesday"]


def test_status_page_form_answers_in_chromium(monitors: list[Monitor], tmp_path: Path) -> None:
    """The page's "a user reports" form, submitted in headless Chromium, shows the server-computed answer."""
    chromium = tool("chromium", package="chromium")
    url = f"{monitors[0].url}/?{urllib.parse.urlencode({'error': '0x800CCC13', 'target': 'lab'})}"
    shot = tmp_path / "answer.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1400"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-conclusion="client_side"' in dom.stdout
    assert "The server accepts connect from office: this is the client or its network" in dom.stdout
    assert 'class="change-window"' in dom.stdout
    done = subprocess.run([chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=90)
    assert done.returncode == 0 and shot.stat().st_size > 10_000
    artifacts = Path(__file__).parent.parent / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "support-desk-answer.png")  # for a person to look at


def test_reload_rereads_the_calendars(tmp_path: Path, lab: Lab) -> None:
    """SIGHUP with an edited `changes:` replaces the calendars: the old change's series go, the new one's come."""
    config = _config(tmp_path, lab, "reload")
    monitor = Monitor(config, tmp_path / "reload.log")
    try:
        wait_for(lambda: 'change="Patch Tuesday"' in monitor.metrics(), "the first calendar's series")
        config.write_text(config.read_text().replace("name: Patch Tuesday", "name: Office update"))
        monitor.process.send_signal(signal.SIGHUP)
        wait_for(lambda: 'change="Office update",vantage="reload"} 1.0' in monitor.metrics(), "the edited calendar")
        assert 'change="Patch Tuesday"' not in monitor.metrics()
    finally:
        monitor.stop()
