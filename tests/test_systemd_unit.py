"""deploy/mailmon.service, checked by systemd's own verifier and for the container's classes of problem: where a
relative state path goes when the config directory is read-only, and who must be able to read the secrets."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

from monitor.config import load_text
from tests.conftest import ROOT
from tests.tools import tool

UNIT = ROOT / "deploy" / "mailmon.service"
INSTALLED_MAILMON = "/opt/mailmon/venv/bin/mailmon"  # where the unit's header says to install


def service() -> configparser.SectionProxy:
    """The unit's [Service] section (the last of repeated keys wins, as in systemd)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing, with ExecStart pointing at this checkout's mailmon (the only change:
    the verifier requires the program to exist). It rejects relative paths in the unit's own directives."""
    mailmon = tool("mailmon", package="this project (scripts/bootstrap installs it into .venv)")
    unit = tmp_path / "mailmon.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_MAILMON, mailmon))
    done = subprocess.run([tool("systemd-analyze", package="the Debian package systemd"), "verify", "--man=no",
                           str(unit)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_relative_history_path_lands_in_the_units_writable_state_directory() -> None:
    """Under the unit, config.yaml's relative history.path resolves into StateDirectory= (its $STATE_DIRECTORY),
    the directory the unit leaves writable, not /etc/mailmon (read-only under ProtectSystem=strict)."""
    unit = service()
    state = f"/var/lib/{unit['StateDirectory']}"
    assert unit["ProtectSystem"] == "strict" and unit["WorkingDirectory"] == state
    config = load_text((ROOT / "config.yaml").read_text(), "/etc/mailmon/config.yaml",
                       environ={"STATE_DIRECTORY": state})
    assert config.history is not None and Path(config.history.path).parent == Path(state)


def test_unit_says_the_secrets_belong_to_its_user() -> None:
    """The install notes tell to make the secrets readable by the unit's User= (it is not root)."""
    user = service()["User"]
    assert user != "root"
    assert f"chown {user}:" in UNIT.read_text()
