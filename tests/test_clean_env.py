"""The suite runs from a clean environment (`env -i`, minimal PATH), as .ci/run starts it: no tool found by luck."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT
from tests.tools import SYSTEM_DIRS

# A test that runs a tool scripts/bootstrap installs into the virtualenv (hadolint) and ones from Debian packages.
TOOL_TESTS = ["tests/test_dockerfile.py::test_dockerfile_passes_hadolint",
              "tests/test_rules.py::test_promtool_check_rules"]


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
