"""`mailmon check`: one-shot results as a table or JSON lines, with Nagios exit codes."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import builders
from tests.conftest import Lab, mailmon_command

pytestmark = pytest.mark.lab

JSON_FIELDS = {"target", "check", "ok", "stage", "reason", "phases", "duration_seconds", "smtp_code", "detail"}


def _config(tmp_path: Path, lab: Lab, password: str, extra: str = "") -> Path:
    return builders.lab_config(tmp_path, lab, "\nvantage: cli-test\n", "smtp: {port: 587, tls: starttls, timeout: 5s}",
                               "imap: {port: 993, tls: implicit, timeout: 5s}",
                               "pop3: {port: 995, tls: implicit, timeout: 5s}", password=password, tail=extra)


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mailmon_command("check", *args), capture_output=True, text=True, timeout=60)


def test_all_ok_exits_0_with_a_table(tmp_path: Path, lab: Lab) -> None:
    """A healthy lab gives exit 0 and a Nagios-style first line naming the state."""
    done = _check("--config", str(_config(tmp_path, lab, lab.password)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("MAILMON OK - 3 checks passed")
    assert all(name in done.stdout for name in ("smtp", "imap", "pop3"))


def test_json_lines_carry_the_public_fields(tmp_path: Path, lab: Lab) -> None:
    """--json prints one object per result with the documented fields, reason null when ok."""
    done = _check("--config", str(_config(tmp_path, lab, lab.password)), "--json")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(row["target"], row["check"]) for row in rows] == [("lab", "smtp"), ("lab", "imap"), ("lab", "pop3")]
    for row in rows:
        assert set(row) >= JSON_FIELDS
        assert row["ok"] is True and row["stage"] is None and row["reason"] is None
        assert isinstance(row["phases"], dict) and all(isinstance(v, float) for v in row["phases"].values())


def test_a_failure_exits_2_critical(tmp_path: Path, lab: Lab, refused_ports: Callable[[], int]) -> None:
    """A refused port makes the run CRITICAL (exit 2) and the JSON row says connect/refused."""
    extra = f"""  - name: closed
    host: 127.0.0.1
    smtp: {{port: {refused_ports()}, tls: none, timeout: 5s}}
"""
    done = _check("--config", str(_config(tmp_path, lab, lab.password, extra)), "--target", "closed", "--json")
    assert done.returncode == 2
    row = json.loads(done.stdout)
    assert (row["ok"], row["stage"], row["reason"]) == (False, "connect", "refused")


def test_unknown_target_exits_3_unknown(tmp_path: Path, lab: Lab) -> None:
    """Asking for a target the config does not have is UNKNOWN (exit 3), not OK."""
    done = _check("--config", str(_config(tmp_path, lab, lab.password)), "--target", "nope")
    assert done.returncode == 3
    assert done.stdout.startswith("UNKNOWN")


def test_check_filter_runs_one_check(tmp_path: Path, lab: Lab) -> None:
    """--check limits the run to that protocol."""
    done = _check("--config", str(_config(tmp_path, lab, lab.password)), "--check", "pop3", "--json")
    assert [json.loads(line)["check"] for line in done.stdout.splitlines()] == ["pop3"]


def test_passwords_never_printed(tmp_path: Path, lab: Lab) -> None:
    """Neither table nor JSON nor stderr shows the password, right or wrong, even on auth failures."""
    wrong = "Wr0ng-But-Secret"
    for password in (lab.password, wrong):
        config = str(_config(tmp_path, lab, password))
        for args in ((), ("--json",), ("--log.level", "debug")):
            done = _check("--config", config, *args)
            assert password not in done.stdout and password not in done.stderr
    assert _check("--config", str(_config(tmp_path, lab, wrong))).returncode == 2


# 'label'=value[UOM];[warn];[crit];[min];[max] (monitoring-plugins development guidelines, performance data)
PERFDATA = re.compile(r"'((?:[^']|'')+)'=([0-9.]+s|U);;;0")


def test_first_line_carries_nagios_performance_data(tmp_path: Path, lab: Lab) -> None:
    """The first line ends with one perfdata item per check: its duration in seconds, min 0."""
    done = _check("--config", str(_config(tmp_path, lab, lab.password)))
    text, _, perf = done.stdout.splitlines()[0].partition(" | ")
    assert text == "MAILMON OK - 3 checks passed"
    items = perf.split(" ")
    found = [PERFDATA.fullmatch(item) for item in items]
    assert all(found), items
    assert [m.group(1) for m in found if m] == ["lab/smtp", "lab/imap", "lab/pop3"]
    assert all(0 < float(m.group(2).removesuffix("s")) < 5 for m in found if m)


def test_configuration_error_in_check_exits_3_unknown(tmp_path: Path) -> None:
    """A bad config makes `check` UNKNOWN (exit 3, a Nagios UNKNOWN line) with file:line on stderr; validate exits 2."""
    path = tmp_path / "config.yaml"
    path.write_text("vantage: v\ntargets:\n  - name: a\n    host: 127.0.0.1\n    smtp: {port: 70000}\n")
    done = _check("--config", str(path))
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith("MAILMON UNKNOWN - configuration error")
    assert f"{path}:5:" in done.stderr
    validate = subprocess.run(mailmon_command("validate", "--config", str(path)), capture_output=True, text=True,
                              timeout=60)
    assert validate.returncode == 2
