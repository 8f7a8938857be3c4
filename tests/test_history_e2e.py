"""The probe history end to end: a real outage recorded, listed for support, served by the API and the page."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Lab, mailmon_command
from tests.processes import Monitor, http_get, wait_for
from tests.tools import tool

pytestmark = pytest.mark.lab

WRONG = "Wr0ng-Secret-For-History"


@pytest.fixture
def outage(tmp_path: Path, lab: Lab) -> Iterator[tuple[Monitor, Path, Path]]:
    """A monitor with a journal that lived through SMTP being stopped for a while; yields (monitor, config, db)."""
    secret = tmp_path / "password"
    secret.write_text(lab.password)
    wrong = tmp_path / "wrong"
    wrong.write_text(WRONG)
    db = tmp_path / "history.sqlite"
    config = tmp_path / "config.yaml"
    config.write_text(f"""
vantage: support
defaults: {{interval: 2s, timeout: 2s}}
history: {{path: {db}}}
targets:
{lab.target_yaml("lab", f"password_file: {secret}", "smtp: {port: 587, tls: starttls}",
                 "imap: {port: 993, tls: implicit}")}\
{lab.target_yaml("lab-wrong-password", f"password_file: {wrong}", "smtp: {port: 465, tls: implicit}")}""")
    monitor = Monitor(config, tmp_path / "monitor.log")
    try:
        wait_for(lambda: monitor.verdict("lab") == "ok", "the lab to be ok", limit=20)
        lab.control("stop", "postfix")
        try:
            wait_for(lambda: _failures(monitor, "smtp", "connect", "refused") >= 3, "three refused SMTP runs", 20)
        finally:
            lab.control("start", "postfix")
        wait_for(lambda: monitor.verdict("lab") == "ok", "the lab to recover", limit=20)
        wait_for(lambda: _failures(monitor, "smtp", "auth", "auth_rejected", "lab-wrong-password") >= 1,
                 "a rejected login after the outage", limit=20)
        time.sleep(0.5)  # the journal commits at least every 0.2 s
        yield monitor, config, db
    finally:
        monitor.stop()


def _failures(monitor: Monitor, check: str, stage: str, reason: str, target: str = "lab") -> float:
    for line in monitor.metrics().splitlines():
        if (line.startswith("mailmon_check_failures_total{") and f'check="{check}"' in line
                and f'target="{target}"' in line and f'stage="{stage}"' in line and f'reason="{reason}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _history(config: Path, *args: str) -> list[dict]:  # type: ignore[type-arg]
    done = subprocess.run(mailmon_command("history", "--config", str(config), *args), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_history_lists_exactly_the_outage(outage: tuple[Monitor, Path, Path]) -> None:
    """`history --failed --target lab` lists exactly the refused SMTP runs, as many as the metrics counted."""
    monitor, config, _ = outage
    rows = _history(config, "--failed", "--target", "lab", "--json")
    assert rows, "no failures recorded"
    assert {(r["check"], r["stage"], r["reason"]) for r in rows} == {("smtp", "connect", "refused")}
    assert len(rows) == _failures(monitor, "smtp", "connect", "refused")
    assert all("refused" in r["detail"].lower() and r["verdict"] == "smtp_down" for r in rows)
    assert all(not r["ok"] and r["vantage"] == "support" for r in rows)


def test_api_history_returns_the_same_rows(outage: tuple[Monitor, Path, Path]) -> None:
    """/api/history?failed=1&target=lab returns the rows the command lists, same ids, same fields."""
    monitor, config, _ = outage
    cli = _history(config, "--failed", "--target", "lab", "--json")
    api = json.loads(http_get(monitor.url + "/api/history?failed=1&target=lab&limit=1000")[1])["rows"]
    assert [r["id"] for r in api] == [r["id"] for r in cli]
    assert api[0].keys() == cli[0].keys()


def test_server_words_are_kept(outage: tuple[Monitor, Path, Path]) -> None:
    """A rejected login keeps the server's reply (code and text) in the journal."""
    _, config, _ = outage
    rows = _history(config, "--failed", "--target", "lab-wrong-password", "--json")
    # While Postfix stopped and started, this target was refused (or cut off mid-session) like the other;
    # every other failure is the rejected login.
    rejected = [r for r in rows if r["reason"] == "auth_rejected"]
    assert rejected and all(r["stage"] == "auth" for r in rejected)
    assert all(r["reason"] in ("refused", "reset") for r in rows if r not in rejected), rows
    assert all(r["smtp_code"] == 535 and r["detail"].startswith("535 5.7.8") for r in rejected)


def test_api_history_pages_without_gaps(outage: tuple[Monitor, Path, Path]) -> None:
    """Following next_before_id walks the whole journal once, newest first."""
    monitor, _, _ = outage
    seen: list[int] = []
    url = monitor.url + "/api/history?limit=7"
    while True:
        page = json.loads(http_get(url)[1])
        seen += [r["id"] for r in page["rows"]]
        if page["next_before_id"] is None:
            break
        url = monitor.url + f"/api/history?limit=7&before_id={page['next_before_id']}"
    # Read after the walk: the monitor keeps probing, so rows newer than the walk's first may head this answer;
    # from the walk's first row on, the two must be the same list: a gap, a duplicate or a short walk fails.
    everything = [r["id"] for r in json.loads(http_get(monitor.url + "/api/history?limit=1000")[1])["rows"]]
    assert 7 < len(everything) < 1000, len(everything)
    assert seen and seen[0] in everything
    assert seen == everything[everything.index(seen[0]):]


def test_bad_api_history_parameter_is_400(outage: tuple[Monitor, Path, Path]) -> None:
    """A malformed parameter gets 400 with a sentence, not a traceback."""
    monitor, _, _ = outage
    status, body = http_get(monitor.url + "/api/history?since=yesterday")
    assert status == 400 and b"since must be a Unix time" in body


def test_no_secret_anywhere(lab: Lab, outage: tuple[Monitor, Path, Path]) -> None:
    """Neither password nor the AUTH PLAIN base64 string is in the journal file, the APIs or the page."""
    monitor, _, db = outage
    secrets = [lab.password, WRONG]
    secrets += [base64.b64encode(f"\0{lab.user}\0{p}".encode()).decode() for p in (lab.password, WRONG)]
    places = {
        "journal": b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*")),
        "api/history": http_get(monitor.url + "/api/history?limit=1000")[1],
        "api/status": http_get(monitor.url + "/api/status")[1],
        "page": http_get(monitor.url + "/")[1],
    }
    for where, data in places.items():
        for secret in secrets:
            assert secret.encode() not in data, f"a secret leaked into {where}"


def test_status_page_renders_in_chromium(outage: tuple[Monitor, Path, Path], tmp_path: Path) -> None:
    """Headless Chromium renders the page: verdicts in words, the timeline and the outage's transcripts."""
    monitor, _, _ = outage
    chromium = tool("chromium", package="the Debian package chromium")
    artifacts = tmp_path  # a fresh directory: a screenshot left by an earlier run cannot pass this test
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={artifacts / 'chromium-profile'}", "--window-size=1280,1800"]
    dumped = subprocess.run([chromium, *flags, "--dump-dom", monitor.url + "/"], capture_output=True, text=True,
                            timeout=120)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    assert 'data-target="lab" data-verdict="ok"' in dom
    assert "Everything works from support" in dom
    assert 'data-target="lab-wrong-password" data-verdict="auth_failed"' in dom
    assert "<svg" in dom and 'href="#failure-' in dom
    assert "connect/refused" in dom
    # The monitor has run for under a minute: most of the day is no data, the recent slots hold its runs, and
    # its start is marked.
    states = re.findall(r'data-state="([a-z-]+)"', dom)
    assert states.count("no-data") >= 3 * 90 and {"ok", "mixed", "failed"} & set(states)
    assert 'data-mark="monitor-start"' in dom
    shot = artifacts / "status-page.png"
    shooting = subprocess.run([chromium, *flags, f"--screenshot={shot}", monitor.url + "/"], capture_output=True,
                              text=True, timeout=120)
    assert shooting.returncode == 0, shooting.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 10_000
