"""`mailmon run` refuses what it cannot use, with one plain line and exit 2, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests import builders
from tests.conftest import free_port, mailmon_command


def _config(tmp: Path, extra: str = "") -> Path:
    return builders.config_file(tmp, f"vantage: v\n{extra}targets:\n  - name: t\n    host: 127.0.0.1\n"
                                     f"    smtp: {{port: {free_port()}, tls: none}}\n")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mailmon_command("run", *args), capture_output=True, text=True, timeout=30)


def test_unusable_history_file_exits_2(tmp_path: Path) -> None:
    """A history path that is not a SQLite database is refused before probing starts."""
    bad = tmp_path / "history.sqlite"
    bad.write_text("not a database\n")
    done = _run("--config", str(_config(tmp_path, f"history: {{path: {bad}}}\n")), "--listen",
                f"127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert f"history database {bad}: not a SQLite database" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_listen_flag_exits_2(tmp_path: Path) -> None:
    """--listen that is not HOST:PORT is refused."""
    done = _run("--config", str(_config(tmp_path)), "--listen", "localhost")
    assert done.returncode == 2 and "--listen" in done.stderr and "Traceback" not in done.stderr


def test_port_in_use_exits_2(tmp_path: Path) -> None:
    """A listen address that is taken is reported, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run("--config", str(_config(tmp_path)), "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


def test_json_logs_one_object_per_line(tmp_path: Path, refused_ports: Callable[[], int]) -> None:
    """--log.format json writes one JSON object per line, a failed probe with its stage and reason as fields."""
    config = tmp_path / "config.yaml"
    config.write_text(f"vantage: v\ndefaults: {{interval: 1s, timeout: 1s}}\ntargets:\n  - name: closed\n"
                      f"    host: 127.0.0.1\n    smtp: {{port: {refused_ports()}, tls: none}}\n")
    process = subprocess.Popen(mailmon_command("run", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}",
                                               "--log.format", "json", "--log.level", "info"),
                               stderr=subprocess.PIPE, text=True)
    try:
        lines: list[dict[str, object]] = []
        assert process.stderr is not None
        for raw in process.stderr:
            lines.append(json.loads(raw))
            if lines[-1].get("msg") == "check failed":
                break
    finally:
        process.terminate()
        process.wait(timeout=10)
    failed = lines[-1]
    assert failed["level"] == "warning" and failed["target"] == "closed"
    assert (failed["stage"], failed["reason"]) == ("connect", "refused")
    assert any(line.get("msg") == "mailmon started" for line in lines)
