"""`mailmon auth login`: the RFC 8628 device-code sign-in against the lab's identity provider (scripts/lab/idp.py).

The IdP answers the polls as its device script says (`/_lab/device`). Tests of the dialogue pass their own `sleep`
and `clock` to `login`, so pending/slow_down sequences run without waiting real intervals and the waits asked for
are checked exactly; the CLI tests use the real clock with a 1 s interval.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from monitor.config import load
from monitor.signin.device import DeviceLoginError, login
from monitor.signin.settings import OAuth2Settings
from tests.conftest import Lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent


def idp_control(lab: Lab, name: str, **document: object) -> None:
    """POST a lab control (/_lab/<name>) to the IdP."""
    context = ssl.create_default_context(cafile=lab.env["LAB_IDP_CA"])
    request = urllib.request.Request(f"{lab.env['LAB_IDP_CONTROL_URL']}/{name}", data=json.dumps(document).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        assert response.status == 200


def issued_secrets(lab: Lab) -> list[str]:
    """Every token the IdP has issued (its /_lab/issued control)."""
    context = ssl.create_default_context(cafile=lab.env["LAB_IDP_CA"])
    with urllib.request.urlopen(f"{lab.env['LAB_IDP_CONTROL_URL']}/issued", timeout=10, context=context) as response:
        document = json.load(response)
    found: list[str] = []
    for values in document.values():
        if isinstance(values, list):
            found += [v for v in values if isinstance(v, str)]
    return found


@pytest.fixture
def device_config(lab: Lab, tmp_path: Path) -> Path:
    """A config whose target `m365` signs in with the refresh-token grant at the lab IdP, file not yet there."""
    idp_control(lab, "reset")
    env = lab.env
    path = tmp_path / "mailmon.yaml"
    path.write_text(f"""vantage: test
targets:
  - name: m365
    host: {lab.host}
    tls: {{ca_file: {lab.ca}, server_name: {lab.server_name}}}
    auth:
      username: {lab.user}
      oauth2:
        grant: refresh_token
        token_url: {env["LAB_IDP_TOKEN_URL"]}
        device_url: {env["LAB_IDP_DEVICE_URL"]}
        client_id: {env["LAB_IDP_CLIENT_ID"]}
        client_secret_file: {env["LAB_IDP_CLIENT_SECRET_FILE"]}
        refresh_token_file: {tmp_path / "refresh.token"}
        ca_file: {env["LAB_IDP_CA"]}
    imap: {{port: 993, tls: implicit}}
  - name: password
    host: {lab.host}
    auth: {{username: {lab.user}, password_file: {env["LAB_PASSWORD_FILE"]}}}
    imap: {{port: 993, tls: implicit}}
""")
    return path


def settings_of(path: Path) -> OAuth2Settings:
    auth = load(str(path)).targets[0].auth
    assert auth is not None and auth.oauth2 is not None
    return auth.oauth2


class FakeTime:
    """A clock that moves only when the code under test sleeps; records every wait it asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def run_login(settings: OAuth2Settings, fake: FakeTime, out: io.StringIO) -> str:
    return asyncio.run(login(settings, "probe@lab.test", out, sleep=fake.sleep, clock=fake.clock))


def test_pending_then_slow_down_then_success_stores_the_refresh_token(lab: Lab, device_config: Path) -> None:
    """Waits one interval before each poll, 5 s more for good after slow_down; the refresh token lands 0600."""
    idp_control(lab, "device", script=["authorization_pending", "slow_down", "authorization_pending", "approve"],
                interval=2)
    settings = settings_of(device_config)
    fake, out = FakeTime(), io.StringIO()
    stored = run_login(settings, fake, out)
    assert fake.waits == [2, 2, 7, 7]
    path = Path(stored)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert token in issued_secrets(lab)


def test_prints_the_verification_uri_and_user_code_never_a_token(lab: Lab, device_config: Path) -> None:
    """The administrator is told where to go and which code to enter; no token is printed."""
    idp_control(lab, "device", script=["approve"], interval=1)
    settings = settings_of(device_config)
    out = io.StringIO()
    run_login(settings, FakeTime(), out)
    text = out.getvalue()
    assert f"open {lab.env['LAB_IDP_URL']}/device " in text and "enter the code " in text
    assert f"{lab.env['LAB_IDP_URL']}/device?user_code=" in text  # verification_uri_complete
    assert not [s for s in issued_secrets(lab) if s in text]


@pytest.mark.parametrize("fault", ["500", "refuse"])
def test_a_failing_token_endpoint_doubles_the_interval_and_polling_goes_on(lab: Lab, device_config: Path,
                                                                           fault: str) -> None:
    """RFC 8628 3.5: after a 500 or a reset connection the next poll waits twice as long; then the sign-in ends."""
    idp_control(lab, "device", script=["approve"], interval=2)
    idp_control(lab, "fault", fault=fault, count=1)
    settings = settings_of(device_config)
    fake = FakeTime()
    stored = run_login(settings, fake, io.StringIO())
    assert fake.waits == [2, 4]
    assert Path(stored).read_text().strip() in issued_secrets(lab)


@pytest.mark.parametrize(("step", "words"), [("expired_token", "expired"), ("access_denied", "declined")])
def test_refusal_ends_the_sign_in_and_keeps_the_old_token(lab: Lab, device_config: Path, step: str,
                                                          words: str) -> None:
    """expired_token / access_denied: a clear message, and an existing refresh token file is left as it was."""
    idp_control(lab, "device", script=["authorization_pending", step], interval=1)
    settings = settings_of(device_config)
    assert settings.refresh_token_file is not None
    Path(settings.refresh_token_file).write_text("the-old-refresh-token\n")
    with pytest.raises(DeviceLoginError, match=words):
        run_login(settings, FakeTime(), io.StringIO())
    assert Path(settings.refresh_token_file).read_text() == "the-old-refresh-token\n"


def test_the_code_expiry_stops_polling_without_the_provider_saying_so(lab: Lab, device_config: Path) -> None:
    """A user who never signs in: polling stops once expires_in has passed on our clock (RFC 8628 3.2)."""
    idp_control(lab, "device", script=["authorization_pending"] * 50, interval=5, expires_in=30)
    settings = settings_of(device_config)
    fake = FakeTime()
    with pytest.raises(DeviceLoginError, match="expired"):
        run_login(settings, fake, io.StringIO())
    assert sum(fake.waits) <= 30
    assert settings.refresh_token_file is not None and not Path(settings.refresh_token_file).exists()


def mailmon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_success_exits_0_and_stores_the_token(lab: Lab, device_config: Path, tmp_path: Path) -> None:
    """`mailmon auth login` end to end, on the real clock: one pending poll, then approval (about 2 s)."""
    idp_control(lab, "device", script=["authorization_pending", "approve"], interval=1)
    done = mailmon("auth", "login", "--config", str(device_config), "--target", "m365", "--log.level", "debug")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enter the code" in done.stdout and "Signed in" in done.stdout
    assert stat.S_IMODE((tmp_path / "refresh.token").stat().st_mode) == 0o600
    # Neither the output nor the debug log holds the client secret or a token.
    secrets = [*issued_secrets(lab), Path(lab.env["LAB_IDP_CLIENT_SECRET_FILE"]).read_text().strip()]
    assert not [s[:6] for s in secrets if s in done.stdout + done.stderr]


def test_cli_expired_token_exits_2_and_writes_nothing(lab: Lab, device_config: Path, tmp_path: Path) -> None:
    """expired_token: exit 2, the reason on stderr without a traceback, no refresh token file."""
    idp_control(lab, "device", script=["expired_token"], interval=1)
    done = mailmon("auth", "login", "--config", str(device_config), "--target", "m365")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "expired" in done.stderr and "Traceback" not in done.stderr
    assert "HTTP Request" not in done.stderr  # no per-poll log lines next to the prompt at the default level
    assert not (tmp_path / "refresh.token").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mailmon-")] == []


@pytest.mark.parametrize(("target", "words"), [("password", "does not sign in with auth.oauth2 grant refresh_token"),
                                               ("nope", "no target 'nope'")])
def test_cli_refuses_a_target_it_cannot_sign_in_for(device_config: Path, target: str, words: str) -> None:
    """A password target or an unknown name: exit 2 with a message, nothing asked of any provider."""
    done = mailmon("auth", "login", "--config", str(device_config), "--target", target)
    assert done.returncode == 2 and words in done.stderr, done.stdout + done.stderr


def test_cli_bad_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    """A broken oauth2 block (two token sources) stops `auth login` before any request: file:line, exit 2."""
    path = tmp_path / "bad.yaml"
    path.write_text("vantage: t\ntargets:\n  - name: m365\n    host: h.example\n    auth:\n      username: u@x\n"
                    "      oauth2:\n        grant: refresh_token\n        token_file: /run/token\n    imap:\n")
    done = mailmon("auth", "login", "--config", str(path), "--target", "m365")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{path}:8: targets[0].auth.oauth2: give exactly one of grant" in done.stderr, done.stderr


def test_cli_ctrl_c_while_waiting_exits_130_and_writes_nothing(lab: Lab, device_config: Path, tmp_path: Path) -> None:
    """An administrator who gives up (SIGINT while polling): a one-line message, no traceback, no file."""
    idp_control(lab, "device", script=["authorization_pending"] * 100, interval=1)
    process = subprocess.Popen([sys.executable, "-m", "monitor", "auth", "login", "--config", str(device_config),
                                "--target", "m365"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout is not None
    while "Waiting for the sign-in" not in process.stdout.readline():
        assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, out + err
    assert "interrupted: nothing was stored" in err and "Traceback" not in err
    assert not (tmp_path / "refresh.token").exists()
