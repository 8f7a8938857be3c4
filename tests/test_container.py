"""The container image, built from the Dockerfile with podman and run against the mail lab.

scripts/container-image builds it (cached by a content hash: the first run on a machine costs a few minutes, the
next ones well under a second when nothing changed) from a local stand-in for python:3.11-slim-bookworm, because no
registry is reachable here; the stand-in's differences from the official image are listed in that script. podman
runs with deploy/podman/containers.conf (runc, and ulimits this machine allows). Containers use the host's network:
the lab is on 127.0.0.2, and in the test suite's network namespace the host's loopback is private to the suite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Lab, free_port
from tests.processes import http_get, wait_for
from tests.tools import tool

IMAGE_UID = 10001
CONFIG_IN_CONTAINER = "/etc/mailmon/config.yaml"
README_PORT = 9917  # the image's own --listen; the README's line keeps it
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "podman" / "containers.conf")}
PODMAN = ROOT / "scripts" / "podman"  # podman with that conf, able to run inside the suite's network namespace


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run podman with the suite's containers.conf; fail the test with its output when `check` and it fails."""
    tool("podman", package="the Debian package podman")
    done = subprocess.run([str(PODMAN), *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    if check and done.returncode != 0:
        pytest.fail(f"podman {shlex.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def healthy(name: str) -> bool:
    """The image's own HEALTHCHECK, run now."""
    return podman("healthcheck", "run", name, check=False, timeout=60).returncode == 0


def readme_commands() -> list[str]:
    """The shell lines of the README's "Container" section, continuation lines joined."""
    section = (ROOT / "README.md").read_text().split("### Container", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines()]


@pytest.fixture(scope="module")
def image() -> str:
    """The image's tag, built (or found in the cache) by scripts/container-image."""
    done = subprocess.run([str(ROOT / "scripts" / "container-image")], capture_output=True, text=True,
                          timeout=1800, env=ENV)
    if done.returncode != 0:
        pytest.fail(f"scripts/container-image exited {done.returncode}:\n{done.stdout}{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A directory like the README's $PWD, enterable by uid 10001 (pytest's temp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mailmon-container-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def secrets(lab: Lab, workdir: Path) -> Path:
    """The README's secrets/: the lab's CA, password and probe key, owned by uid 10001, mode 0400."""
    directory = workdir / "secrets"
    directory.mkdir()
    directory.chmod(0o755)
    for source in (lab.ca, lab.env["LAB_PASSWORD_FILE"], lab.env["LAB_PROBE_KEY_FILE"]):
        copy = directory / Path(source).name
        shutil.copyfile(source, copy)
        os.chown(copy, IMAGE_UID, IMAGE_UID)
        copy.chmod(0o400)
    return directory


@pytest.fixture(scope="module")
def readme_container(image: str, secrets: Path, workdir: Path) -> Iterator[str]:
    """The README's `docker run` line, adjusted only for podman and this machine: podman for docker, the test's
    image tag, names and volume of its own, `--network host` (the lab is on the host's loopback)."""
    line = next(command for command in readme_commands() if command.startswith("docker run "))
    name, volume = f"mailmon-test-{uuid.uuid4().hex[:8]}", f"mailmon-test-{uuid.uuid4().hex[:8]}"
    args = shlex.split(line.replace("$PWD", str(ROOT)).replace(f"{ROOT}/secrets", str(secrets)))
    assert args[:2] == ["docker", "run"] and args[-1] == "mailmon", line
    args = [name if arg == "mailmon" else arg.replace("mailmon-data:", f"{volume}:") for arg in args[2:-1]]
    podman("run", "--network", "host", *args, image)
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "5", name, check=False)
        podman("volume", "rm", "--force", volume, check=False)


@pytest.fixture
def container(image: str, secrets: Path, workdir: Path) -> Iterator[tuple[str, int]]:
    """A container of its own (the image with a changed --listen), for tests that stop it; its name and port."""
    name, port = f"mailmon-test-{uuid.uuid4().hex[:8]}", free_port()
    # An absolute history.path, so that what these tests prove does not hang on the relative path's fix.
    config = workdir / "absolute-history.yaml"
    config.write_text((ROOT / "deploy" / "container-config.yaml").read_text().replace(
        "path: mailmon-history.sqlite", "path: /var/lib/mailmon/mailmon-history.sqlite"))
    config.chmod(0o644)
    podman("run", "-d", "--name", name, "--network", "host", "-v", f"{config}:{CONFIG_IN_CONTAINER}:ro",
           "-v", f"{secrets}:/run/secrets:ro", image, "run", "--config", CONFIG_IN_CONTAINER,
           "--listen", f"0.0.0.0:{port}")
    try:
        yield name, port
    finally:
        podman("rm", "--force", "--volumes", "--time", "5", name, check=False)


def test_container_config_is_config_yaml_with_secrets_in_run_secrets() -> None:
    """deploy/container-config.yaml stays config.yaml (below its header) with the lab's files at /run/secrets."""
    example = (ROOT / "config.yaml").read_text().split("\n", 2)[2]
    shipped = (ROOT / "deploy" / "container-config.yaml").read_text()
    assert shipped.endswith(example.replace("/var/lib/mailmon-lab/", "/run/secrets/"))


def test_readme_run_line_becomes_healthy(readme_container: str) -> None:
    """The README's line starts a container the image's own HEALTHCHECK finds healthy (issue 17, defect 2: the
    relative history.path under the read-only /etc/mailmon made it exit 2 at once)."""
    wait_for(lambda: healthy(readme_container), "the container to be healthy", limit=120, every=2)


def test_monitor_runs_as_uid_and_gid_10001(readme_container: str) -> None:
    """The running monitor (PID 1) has uid and gid 10001, no capabilities."""
    status = podman("exec", readme_container, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[:2] == ["10001", "10001"] and fields["Gid"].split()[:2] == ["10001", "10001"]
    assert int(fields["CapEff"], 16) == 0


def test_image_user_and_group_10001_have_names(image: str) -> None:
    """uid 10001 and gid 10001 both have an entry named mailmon (defect 4: the group was created with a system
    gid, so gid 10001, the one USER and chown use, had none)."""
    done = podman("run", "--rm", "--network", "host", "--entrypoint", "id", image)
    assert done.stdout.strip() == "uid=10001(mailmon) gid=10001(mailmon) groups=10001(mailmon)"


def test_every_check_succeeds_against_the_lab(readme_container: str) -> None:
    """`mailmon check` in the container runs every check of the container-shaped config: all succeed."""
    done = podman("exec", readme_container, "mailmon", "check", "--config", CONFIG_IN_CONTAINER, "--json",
                  check=False, timeout=180)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stdout + done.stderr
    assert {(r["target"], r["check"]) for r in results} >= {("lab", "smtp"), ("lab", "imap"), ("lab", "pop3"),
                                                             ("lab", "roundtrip"), ("lab-smtps", "smtp"),
                                                             ("lab-mx", "smtp")}
    assert all(r["ok"] for r in results), results


def test_metrics_and_status_page_answer(readme_container: str) -> None:
    """/metrics and the status page answer on the published port."""
    wait_for(lambda: http_get(f"http://127.0.0.1:{README_PORT}/-/ready")[0] == 200, "the monitor to be ready",
             limit=120, every=1)
    status, body = http_get(f"http://127.0.0.1:{README_PORT}/metrics")
    assert status == 200 and b'mailmon_check_success{' in body
    status, body = http_get(f"http://127.0.0.1:{README_PORT}/")
    assert status == 200 and b"<html" in body.lower()


def test_history_is_written_to_the_volume_and_read_inside(readme_container: str) -> None:
    """The scheduled checks' history goes to the volume, and `mailmon history` in the container reads it."""
    def rows() -> list[dict[str, object]]:
        done = podman("exec", readme_container, "mailmon", "history", "--config", CONFIG_IN_CONTAINER, "--json",
                      check=False)
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    found = wait_for(rows, "history rows", limit=180, every=3)
    assert {row["target"] for row in found} & {"lab", "lab-smtps", "lab-mx"}  # (and the vantage's selfcheck)
    mounts = json.loads(podman("inspect", "--format", "{{json .Mounts}}", readme_container).stdout)
    volume = next(m for m in mounts if m["Destination"] == "/var/lib/mailmon")
    assert (Path(volume["Source"]) / "mailmon-history.sqlite").is_file()


def test_changed_listen_is_still_healthy(container: tuple[str, int]) -> None:
    """With `--listen 0.0.0.0:PORT` the HEALTHCHECK asks PORT (defect 1: it asked 9917 and turned unhealthy)."""
    name, port = container
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/-/healthy")[0] == 200, "the monitor to serve", limit=120,
             every=1)
    assert healthy(name)


def test_sigterm_exits_zero_promptly(container: tuple[str, int]) -> None:
    """`podman stop` (SIGTERM) ends the monitor with exit 0, long before podman's SIGKILL, the history closed."""
    name, port = container
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, "the monitor to be ready", limit=120,
             every=1)
    started = time.monotonic()
    podman("stop", "--time", "60", name)
    assert time.monotonic() - started < 30  # 0.14 s measured; the margin is for a loaded machine, not the monitor
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    # Closed cleanly: the history's write-ahead log was checkpointed into the file and removed (or emptied).
    mounts = json.loads(podman("inspect", "--format", "{{json .Mounts}}", name).stdout)
    state = Path(next(m for m in mounts if m["Destination"] == "/var/lib/mailmon")["Source"])
    assert (state / "mailmon-history.sqlite").is_file()
    wal = state / "mailmon-history.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_one_unreadable_secret_is_one_error(image: str, secrets: Path, workdir: Path) -> None:
    """A root-owned 0600 password file (the lab's own): `validate` in the container exits 2 with one problem that
    names the file and uid 10001 (defect 3: a second, misleading "recipient is required" followed)."""
    private = workdir / "private-secrets"
    shutil.copytree(secrets, private)
    for copy in private.iterdir():
        os.chown(copy, IMAGE_UID, IMAGE_UID)
    os.chown(private / "probe.password", 0, 0)
    (private / "probe.password").chmod(0o600)
    done = podman("run", "--rm", "--network", "host",
                  "-v", f"{ROOT / 'deploy' / 'container-config.yaml'}:{CONFIG_IN_CONTAINER}:ro",
                  "-v", f"{private}:/run/secrets:ro", image, "validate", "--config", CONFIG_IN_CONTAINER,
                  check=False)
    problems = [line.strip() for line in done.stderr.splitlines() if re.match(r"\s+\S+:\d+: ", line)]
    assert done.returncode == 2, done.stdout + done.stderr
    # Two targets name the file: one problem at each, and nothing else.
    config = (ROOT / "deploy" / "container-config.yaml").read_text().splitlines()
    uses = [number for number, text in enumerate(config, 1) if "password_file: /run/secrets/probe.password" in text]
    assert problems == [
        f"{CONFIG_IN_CONTAINER}:{line}: targets[{index}].auth.password_file: cannot read password file "
        "'/run/secrets/probe.password': Permission denied (mailmon runs as uid 10001: make the file readable by "
        "that user)" for index, line in enumerate(uses)], done.stderr


def test_readme_podman_build_keeps_the_healthcheck(image: str) -> None:
    """The README's podman build uses --format docker, as scripts/container-image does, and the image built so
    carries the Dockerfile's HEALTHCHECK (defect 5: podman's default OCI format drops it, and nothing said so)."""
    build = next(command for command in readme_commands() if command.startswith("podman build "))
    assert "--format docker" in build
    test = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image).stdout)
    assert test["Test"] == ["CMD", "python", "/usr/local/lib/mailmon/healthcheck.py"]
