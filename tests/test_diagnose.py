"""`mailmon diagnose` against a running monitor and the real lab: "is it me or the server?"."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.diagnose import CLIENT_SIDE, CREDENTIALS, SERVER_SIDE, judge
from tests import builders
from tests.conftest import Lab, mailmon_command
from tests.processes import Monitor, wait_for


def _config(tmp: Path, lab: Lab, name: str, smtp_port: int = 587, listen: str = "127.0.0.1:9") -> Path:
    head = f"\nvantage: {name}\nlisten: {listen}\ndefaults: {{interval: 2s, timeout: 2s}}\n"
    return builders.lab_config(tmp, lab, head,
                               f"smtp: {{port: {smtp_port}, tls: starttls}}", "imap: {port: 993, tls: implicit}",
                               name=f"{name}.yaml")


@pytest.fixture
def monitor(tmp_path: Path, lab: Lab) -> Iterator[Monitor]:
    lab.control("fault", "reset")
    running = Monitor(_config(tmp_path, lab, "datacenter"), tmp_path / "monitor.log")
    try:
        wait_for(lambda: running.verdict("lab") == "ok", "the monitor to see the lab healthy", limit=20)
        yield running
    finally:
        running.stop()
        lab.control("fault", "reset")


def _diagnose(config: Path, monitor_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mailmon_command("diagnose", "--config", str(config), "--monitor", monitor_url),
                          capture_output=True, text=True, timeout=60)


def _diagnose_during(tmp: Path, lab: Lab, monitor: Monitor, fault: str, verdict: str,
                     limit: float) -> subprocess.CompletedProcess[str]:
    """Turn a lab fault on, wait until the monitor's verdict shows it, then diagnose from "laptop"."""
    lab.control("fault", fault, "on")
    wait_for(lambda: monitor.verdict("lab") == verdict, f"the monitor's verdict {verdict}", limit=limit)
    return _diagnose(_config(tmp, lab, "laptop"), monitor.url)


@pytest.mark.lab
def test_all_fine_exits_0(tmp_path: Path, lab: Lab, monitor: Monitor) -> None:
    """With everything working here, diagnose says so and exits 0."""
    done = _diagnose(_config(tmp_path, lab, "laptop"), monitor.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every check works from this machine" in done.stdout


@pytest.mark.lab
def test_local_fault_is_client_side(tmp_path: Path, lab: Lab, monitor: Monitor,
                                    refused_ports: Callable[[], int]) -> None:
    """This machine cannot reach SMTP (a closed port) while the monitor submits fine: exit 1, client side."""
    done = _diagnose(_config(tmp_path, lab, "laptop", smtp_port=refused_ports()), monitor.url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SMTP from this machine fails at connect (refused" in done.stdout
    assert "The monitor at datacenter passed the same check" in done.stdout
    assert "the fault is on this machine or its network path" in done.stdout


@pytest.mark.lab
def test_smtp_down_for_both_is_server_side(tmp_path: Path, lab: Lab, monitor: Monitor) -> None:
    """SMTP stopped on the server fails here and at the monitor: exit 2, server side."""
    done = _diagnose_during(tmp_path, lab, monitor, "smtp", "smtp_down", limit=15)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the fault is on the server side" in done.stdout


@pytest.mark.lab
def test_unreachable_monitor_cannot_tell(tmp_path: Path, lab: Lab, refused_ports: Callable[[], int]) -> None:
    """A local failure with no monitor to ask: exit 3, cannot tell."""
    done = _diagnose(_config(tmp_path, lab, "laptop", smtp_port=refused_ports()),
                     f"http://127.0.0.1:{refused_ports()}")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "could not be reached" in done.stdout


@pytest.mark.lab
def test_transcript_is_shown_without_the_password(tmp_path: Path, lab: Lab, monitor: Monitor) -> None:
    """The verbose transcript shows the dialogue but never the password."""
    done = _diagnose(_config(tmp_path, lab, "laptop"), monitor.url)
    assert "C: EHLO" in done.stdout and "AUTH PLAIN ********" in done.stdout
    assert lab.password not in done.stdout


@pytest.mark.lab
def test_password_refused_for_both_is_not_server_side(tmp_path: Path, lab: Lab, monitor: Monitor) -> None:
    """The server refuses the probe account's password here and at the monitor: exit 4, never "server side"."""
    done = _diagnose_during(tmp_path, lab, monitor, "auth", "auth_failed", limit=20)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "refuses the login" in done.stdout and "Not an outage" in done.stdout
    assert "server side" not in done.stdout


def _remote(stage: str, reason: str) -> dict[str, object]:
    return {"vantage": "dc", "vantage_healthy": True,
            "row": {"ok": False, "stage": stage, "reason": reason, "age_seconds": 1.0}}


def test_temporary_auth_failure_for_both_stays_server_side() -> None:
    """454 4.7.0 (the server's authentication service is down) at both places is the server's fault: exit 2."""
    local = builders.result("lab", "smtp", stage="auth", reason="reply_4xx")
    assert judge(local, _remote("auth", "reply_4xx"), 60.0).code == SERVER_SIDE


def test_sign_in_failing_for_both_is_credentials() -> None:
    """The identity provider refuses the monitor's client here and there: the sign-in, exit 4."""
    local = builders.result("lab", "imap", stage="token", reason="auth_rejected")
    assert judge(local, _remote("token", "auth_rejected"), 60.0).code == CREDENTIALS


def test_password_refused_here_only_is_client_side() -> None:
    """A wrong password only in this machine's configuration, the monitor passing: this side, exit 1."""
    local = builders.result("lab", "imap", stage="auth", reason="auth_rejected")
    remote = {"vantage": "dc", "vantage_healthy": True, "row": {"ok": True, "age_seconds": 1.0}}
    assert judge(local, remote, 60.0).code == CLIENT_SIDE
