"""The suite's own footing: it runs from a clean environment (`env -i`, minimal PATH) as .ci/run starts it, with
no tool found by luck, and its refused ports cannot be taken by another process mid-test."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.conftest import ROOT
from tests.tools import SYSTEM_DIRS

# A test that runs a tool scripts/bootstrap installs into the virtualenv (hadolint) and ones from Debian packages.
TOOL_TESTS = ["tests/test_dockerfile.py::test_dockerfile_passes_hadolint",
              "tests/test_rules.py::test_promtool_check_rules"]


@pytest.mark.prometheus  # and slow: a pytest of its own, running promtool and hadolint
@pytest.mark.slow
def test_tool_tests_pass_with_a_minimal_path() -> None:
    """pytest started with only HOME and the system directories on PATH (no .venv/bin) still finds every tool."""
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": ":".join(SYSTEM_DIRS)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TOOL_TESTS], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{len(TOOL_TESTS)} passed" in done.stdout


def test_no_test_looks_a_tool_up_on_path() -> None:
    """Tests find programs through tests/tools.py, never shutil.which (the caller's PATH)."""
    offenders = [f"{path.name}:{number}" for path in sorted((ROOT / "tests").rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\bwhich\(", line)]
    assert offenders == []


def test_a_refused_port_stays_refused_and_unbindable_while_held(refused_ports: Callable[[], int]) -> None:
    """refused_ports() gives a port that refuses connections and that nothing else can bind during the test."""
    port = refused_ports()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with other, pytest.raises(OSError) as taken:
        other.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE
