"""`mailmon run` as a real process: served metrics pass promtool, a real Prometheus scrapes them, secrets stay out."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Lab, free_port, mailmon_command
from tests.processes import http_get, wait_for
from tests.tools import tool

pytestmark = [pytest.mark.lab, pytest.mark.prometheus]


def _write_config(path: Path, lab: Lab, listen: str, password_file: Path) -> None:
    path.write_text(f"""
vantage: ci
listen: {listen}
defaults: {{interval: 2s, timeout: 2s}}
targets:
{lab.target_yaml("lab", f"password_file: {password_file}", "smtp: {port: 587, tls: starttls}",
                 "imap: {port: 993, tls: implicit}", "pop3: {port: 995, tls: implicit}")}\
{lab.target_yaml("lab-wrong-password", "password_env: MAILMON_WRONG_PASSWORD", "smtp: {port: 465, tls: implicit}")}""")


@pytest.fixture
def monitor_process(lab: Lab, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A running `mailmon run` against the lab; yields (base URL, process, stderr log path)."""
    listen = f"127.0.0.1:{free_port()}"
    password_file = tmp_path / "password"
    password_file.write_text(lab.password)
    config = tmp_path / "config.yaml"
    _write_config(config, lab, listen, password_file)
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        process = subprocess.Popen(mailmon_command("run", "--config", str(config)), stderr=err,
                                   env={"PATH": "/usr/bin:/bin", "MAILMON_WRONG_PASSWORD": "Wr0ng-Secret-Value"})
    base = f"http://{listen}"
    try:
        wait_for(lambda: http_get(base + "/-/healthy")[0] == 200, "the monitor to serve /-/healthy")
        yield base, process, stderr
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def _successes(body: bytes) -> dict[tuple[str, str], float]:
    values = {}
    for line in body.decode().splitlines():
        if line.startswith("mailmon_check_success{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            values[(labels["target"].strip('"'), labels["check"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return values


def test_every_series_exists_before_the_first_run(monitor_process: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    """Right after start, every (target, check) has its success and current-failure series (failure counters
    appear with their first failure: metrics.failure_series defaults to on_failure)."""
    base, _, _ = monitor_process
    status, body = http_get(base + "/metrics")
    assert status == 200
    assert set(_successes(body)) == {("lab", "smtp"), ("lab", "imap"), ("lab", "pop3"), ("lab-wrong-password", "smtp")}
    current = (b'mailmon_check_current_failure{check="smtp",reason="",stage="",target="lab",vantage="ci",via=""}')
    assert current + b" 0.0" in body
    assert b'mailmon_check_failures_total{check="smtp",reason="refused"' not in body


def test_scrape_passes_promtool(monitor_process: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    """`promtool check metrics` finds no problem in a real scrape after the checks ran."""
    base, _, _ = monitor_process
    wait_for(lambda: _successes(http_get(base + "/metrics")[1]).get(("lab", "pop3")) == 1.0, "pop3 to succeed")
    _, body = http_get(base + "/metrics")
    promtool = tool("promtool", package="the Debian package prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == b"" and checked.stderr == b""


def test_results_reach_metrics(monitor_process: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    """Scheduled runs set success 1 for healthy checks and count auth/auth_rejected for the wrong password."""
    base, _, _ = monitor_process
    wrong = b'mailmon_check_failures_total{check="smtp",reason="auth_rejected",stage="auth",' \
            b'target="lab-wrong-password",vantage="ci",via=""}'

    def rejected(body: bytes) -> float:
        line = next((raw for raw in body.splitlines() if raw.startswith(wrong)), None)
        return 0.0 if line is None else float(line.rsplit(b" ", 1)[1])  # the counter appears with the failure

    wait_for(lambda: all(_successes(http_get(base + "/metrics")[1]).get(("lab", c)) == 1.0
                         for c in ("smtp", "imap", "pop3")), "all lab checks to succeed")
    wait_for(lambda: rejected(http_get(base + "/metrics")[1]) >= 1.0, "the wrong password to be counted")
    _, body = http_get(base + "/metrics")
    assert _successes(body)[("lab-wrong-password", "smtp")] == 0.0


def test_secrets_stay_out_of_metrics_and_logs(lab: Lab,
                                              monitor_process: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    """Neither the real nor the wrong password appears in /metrics or the log, after failures were logged."""
    base, process, stderr = monitor_process
    wait_for(lambda: b"auth_rejected" in stderr.read_bytes(), "the wrong password failure to be logged")
    _, body = http_get(base + "/metrics")
    process.terminate()
    process.wait(timeout=10)
    for secret in (lab.password, "Wr0ng-Secret-Value"):
        assert secret.encode() not in body
        assert secret.encode() not in stderr.read_bytes()


def test_sigterm_stops_cleanly(monitor_process: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    """SIGTERM ends the monitor with exit status 0 and no traceback."""
    _, process, stderr = monitor_process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert b"Traceback" not in stderr.read_bytes()


@pytest.fixture
def prometheus(tmp_path: Path, monitor_process: tuple[str, subprocess.Popen[bytes], Path]) -> Iterator[str]:
    """A real Prometheus scraping the monitor every second; yields its base URL."""
    prometheus = tool("prometheus", package="the Debian package prometheus")
    base, _, _ = monitor_process
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "mailmon", "static_configs": [{"targets": [base.removeprefix("http://")]}]}],
    }))
    listen = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address={listen}"], stdout=log, stderr=log)
    try:
        wait_for(lambda: http_get(f"http://{listen}/-/ready")[0] == 200, "Prometheus to be ready")
        yield f"http://{listen}"
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def test_prometheus_scrapes_a_series_per_target_and_check(prometheus: str) -> None:
    """A real Prometheus returns `mailmon_check_success` for every (target, check), labelled with the vantage."""
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": "mailmon_check_success"})

    def series() -> set[tuple[str, str, str]]:
        data = json.loads(http_get(url)[1])
        return {(s["metric"]["target"], s["metric"]["check"], s["metric"]["vantage"]) for s in data["data"]["result"]}

    expected = {("lab", "smtp", "ci"), ("lab", "imap", "ci"), ("lab", "pop3", "ci"),
                ("lab-wrong-password", "smtp", "ci")}
    assert wait_for(lambda: series() == expected and series(), "Prometheus to hold every series") == expected
