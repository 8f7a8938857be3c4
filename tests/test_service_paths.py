"""Where state and secrets are found under a service manager (systemd's StateDirectory=, the container image).

The image and the unit mount or keep the config read-only, so a relative history.path goes to $STATE_DIRECTORY;
they run as their own user, so an unreadable secret must be one error that says whose read failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import ConfigError, load_text
from tests.conftest import mailmon_command
from tests.tools import tool

NOBODY = 65534
ROUNDTRIP_TARGET = ("vantage: v\nprobe_key: {{env: KEY}}\ntargets:\n  - name: a\n    host: 127.0.0.2\n"
                    "    auth: {{username: probe@lab.test, password_file: {secret}}}\n"
                    "    smtp: {{port: 587, tls: none}}\n    imap: {{port: 143, tls: none}}\n    roundtrip: {{}}\n")


def test_relative_history_path_goes_to_the_state_directory() -> None:
    """With $STATE_DIRECTORY (systemd, the image) a relative history.path is taken from it, not the config's dir."""
    text = "vantage: v\nhistory: {path: h.sqlite}\ntargets: [{name: a, host: h, smtp: {}}]\n"
    config = load_text(text, "/etc/mailmon/config.yaml", environ={"STATE_DIRECTORY": "/var/lib/mailmon"})
    assert config.history is not None and config.history.path == "/var/lib/mailmon/h.sqlite"


def test_relative_history_path_uses_the_first_state_directory() -> None:
    """systemd lists several StateDirectory= entries colon-separated; the first is the monitor's."""
    text = "vantage: v\nhistory: {path: h.sqlite}\ntargets: [{name: a, host: h, smtp: {}}]\n"
    config = load_text(text, "/etc/mailmon/config.yaml", environ={"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"})
    assert config.history is not None and config.history.path == "/var/lib/a/h.sqlite"


def test_relative_history_path_without_state_directory_stays_beside_the_config() -> None:
    """Run by hand (no service manager), a relative path is still taken from the config file's directory."""
    text = "vantage: v\nhistory: {path: h.sqlite}\ntargets: [{name: a, host: h, smtp: {}}]\n"
    config = load_text(text, "/srv/mon/config.yaml", environ={})
    assert config.history is not None and config.history.path == "/srv/mon/h.sqlite"


def test_absolute_history_path_ignores_the_state_directory() -> None:
    """An absolute history.path is used as written."""
    text = "vantage: v\nhistory: {path: /data/h.sqlite}\ntargets: [{name: a, host: h, smtp: {}}]\n"
    config = load_text(text, "/etc/mailmon/config.yaml", environ={"STATE_DIRECTORY": "/var/lib/mailmon"})
    assert config.history is not None and config.history.path == "/data/h.sqlite"


def test_missing_password_file_of_a_roundtrip_target_is_one_error(tmp_path: Path) -> None:
    """The round trip's recipient defaults to the auth user: a password file that cannot be read is the only
    problem reported, not also a "recipient is required" that sends the reader after a block that is there."""
    secret = tmp_path / "absent"
    with pytest.raises(ConfigError) as caught:
        load_text(ROUNDTRIP_TARGET.format(secret=secret), "c.yml", environ={"KEY": "k" * 16})
    assert caught.value.problems == [
        f"c.yml:6: targets[0].auth.password_file: cannot read password file '{secret}': No such file or directory"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's own temp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mailmon-secrets-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unreadable_password_file_names_the_file_and_the_user(shared_dir: Path) -> None:
    """`validate` as another user than the secret's owner (the image's uid 10001 with a root 0600 file): one
    error, naming the file and the uid that must be able to read it; exit 2."""
    tmp_path = shared_dir
    secret = tmp_path / "probe.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config = tmp_path / "config.yaml"
    config.write_text(ROUNDTRIP_TARGET.format(secret=secret))
    config.chmod(0o644)
    setpriv = tool("setpriv", package="util-linux")
    done = subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           *mailmon_command("validate", "--config", str(config))],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "KEY": "k" * 16},
                          cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == ["mailmon: configuration is not valid (1 problem):",
                     f"{config}:6: targets[0].auth.password_file: cannot read password file '{secret}': "
                     f"Permission denied (mailmon runs as uid {NOBODY}: make the file readable by that user)"]
