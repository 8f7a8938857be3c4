"""A real Dovecot that delays failed logins (`auth_failure_delay`, the anti brute-force pause many servers
have): a wrong password that ends as `auth/timeout` is a login problem, never a receive-side outage.

The instance is the lab's own Dovecot configuration with a 3 s failure delay, on its own ports and run
directory, started and stopped by this module (the lab's Dovecot keeps no delay so other tests stay fast).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from monitor.result import Result
from monitor.verdict import VerdictBoard, describe
from tests.conftest import Lab, run_once
from tests.processes import end_session, wait_listening

pytestmark = pytest.mark.lab

DELAY = 3.0  # seconds; "3-5 s is common"
IMAPS_PORT = 10993
POP3S_PORT = 10995
SHORT_TIMEOUT = 1.5  # shorter than the delay: a wrong password then ends as auth/timeout


def _delaying_config(lab_config: str, run: Path) -> str:
    """The lab's dovecot.conf with a failed-login delay, private directories and ports, no LMTP."""
    replacements = {
        "instance_name = mailmon-lab": "instance_name = mailmon-lab-delay",
        "protocols = imap pop3 lmtp": "protocols = imap pop3",
        "auth_failure_delay = 0": f"auth_failure_delay = {int(DELAY)} secs",
        "port = 143": "port = 0",
        "port = 110": "port = 0",
        "port = 993": f"port = {IMAPS_PORT}",
        "port = 995": f"port = {POP3S_PORT}",
    }
    lines = []
    for line in lab_config.splitlines():
        key = line.strip()
        if key in replacements:
            line = line.replace(key, replacements[key])
        elif key.startswith(("base_dir =", "state_dir =")):
            line = f"{key.split(' =')[0]} = {run / key.split(' =')[0]}"
        elif key.startswith("log_path ="):
            line = f"log_path = {run / 'dovecot.log'}"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    assert f"auth_failure_delay = {int(DELAY)} secs" in text and f"port = {IMAPS_PORT}" in text
    return text


@pytest.fixture(scope="module")
def delaying_dovecot(lab: Lab) -> Iterator[None]:
    run = Path(tempfile.mkdtemp(prefix="mailmon-auth-delay-"))
    run.chmod(0o755)
    for sub in ("base_dir", "state_dir"):
        (run / sub).mkdir(mode=0o755)
    config = run / "dovecot.conf"
    config.write_text(_delaying_config(Path(lab.env["LAB_DOVECOT_CONFIG"]).read_text(), run))
    # -F: in the foreground, in a session of its own, so its children (auth, anvil, log) end with it.
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_listening(lab.host, IMAPS_PORT, "the delaying Dovecot", limit=20)
        wait_listening(lab.host, POP3S_PORT, "the delaying Dovecot", limit=5)
        yield
    finally:
        end_session(proc)
        subprocess.run(["rm", "-rf", str(run)], check=False)


async def _wrong_password(lab: Lab, check: str, timeout: float) -> Result:
    port = IMAPS_PORT if check == "imap" else POP3S_PORT
    return await run_once(lab.target(check, "implicit", port=port, password="not-the-password", timeout=timeout))


@pytest.mark.parametrize("check", ["imap", "pop3"])
async def test_the_server_really_delays_failed_logins(lab: Lab, delaying_dovecot: None, check: str) -> None:
    """With time enough, the wrong password is rejected, after the server's delay (the behaviour is real)."""
    result = await _wrong_password(lab, check, timeout=10.0)
    assert (result.stage, result.reason) == ("auth", "auth_rejected"), result.detail
    # Dovecot spreads the delay somewhat (2.6-3 s measured for 3 s); it must exceed the short timeout used below.
    assert result.duration_seconds > SHORT_TIMEOUT


async def test_delayed_failed_login_is_not_a_receive_outage(lab: Lab, delaying_dovecot: None) -> None:
    """A wrong password timing out on both reading protocols reads auth_failed, with words about delayed logins."""
    smtp = await run_once(lab.target("smtp", "starttls"))
    imap = await _wrong_password(lab, "imap", timeout=SHORT_TIMEOUT)
    pop3 = await _wrong_password(lab, "pop3", timeout=SHORT_TIMEOUT)
    assert smtp.ok, smtp.detail
    assert (imap.stage, imap.reason) == ("auth", "timeout"), imap.detail
    assert (pop3.stage, pop3.reason) == ("auth", "timeout"), pop3.detail
    board = VerdictBoard()
    board.reset({"lab": {"smtp", "imap", "pop3"}}, {})
    for result in (smtp, imap, pop3):
        verdict = board.record(replace(result, target="lab"))
    assert verdict == "auth_failed"
    text = describe(verdict, board.results("lab"), "test")
    assert re.search(r"login did not complete in 1\.[56] s — the server may be delaying failed logins", text), text
