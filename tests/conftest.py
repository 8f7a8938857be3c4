"""Shared fixtures: the real Postfix + Dovecot lab (scripts/mail-lab), targets pointing at it, and local fakes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from monitor.config import DEFAULT_PORTS, KINDS, Auth, Secret, Target, TlsSettings
from monitor.result import Result
from monitor.runner import Runner
from tests import builders

if TYPE_CHECKING:
    from tests.lab_idp import Idp

ROOT = Path(__file__).resolve().parent.parent
MAIL_LAB = ROOT / "scripts" / "mail-lab"


@dataclass(frozen=True)
class Lab:
    """Where the running mail lab is and how to log in to it."""

    env: dict[str, str]

    @property
    def host(self) -> str:
        return self.env["LAB_HOST"]

    @property
    def ca(self) -> str:
        return self.env["LAB_CA"]

    @property
    def server_name(self) -> str:
        return self.env["LAB_TLS_SERVER_NAME"]

    @property
    def user(self) -> str:
        return self.env["LAB_USER"]

    @property
    def password(self) -> str:
        return Path(self.env["LAB_PASSWORD_FILE"]).read_text()

    def target_yaml(self, name: str, auth: str | None, *checks: str, host: str | None = None) -> str:
        """A target block for a config file aimed at the lab; `auth` is e.g. `password_file: F` (None: no auth)."""
        lines = [f"  - name: {name}", f"    host: {host or self.host}",
                 f"    tls: {{ca_file: {self.ca}, server_name: {self.server_name}}}"]
        if auth is not None:
            lines.append(f"    auth: {{username: {self.user}, {auth}}}")
        return "\n".join(lines + [f"    {check}" for check in checks]) + "\n"

    def control(self, *args: str) -> None:
        """Run a mail-lab subcommand (start/stop a daemon, ...), failing the test if it fails."""
        done = subprocess.run([str(MAIL_LAB), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"mail-lab {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"

    def target(self, check: str, tls_mode: str, *, port: int | None = None, password: str | None = None,
               ca: bool = True, with_auth: bool = True, timeout: float = 10.0, **extra: object) -> Target:
        """A one-check target aimed at the lab."""
        settings = KINDS[check](port=port or DEFAULT_PORTS[(check, tls_mode)], tls_mode=tls_mode, interval=60.0,
                                timeout=timeout, use_auth=with_auth, **extra)  # type: ignore[arg-type]
        auth = Auth(self.user, Secret(self.password if password is None else password)) if with_auth else None
        return Target(name="lab", host=self.host, tls=TlsSettings(ca_file=self.ca if ca else None,
                                                                  server_name=self.server_name),
                      auth=auth, checks=(settings,))


if os.environ.get("MAILMON_TEST_EVENT_LOOP") == "uvloop":
    # Defined only then: pytest-asyncio takes the hook's mere presence as "use these loops".
    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
        """MAILMON_TEST_EVENT_LOOP=uvloop runs every async test on uvloop (the `uvloop` extra) instead of
        asyncio's loop; `mailmon` child processes pick uvloop by themselves where it is installed."""
        return {"uvloop": _warm_uvloop}


def _warm_uvloop() -> asyncio.AbstractEventLoop:
    """A uvloop loop that has listened once: libuv opens /dev/null on a loop's first listening socket (a spare
    descriptor for running out of them) and keeps it, which the tests' descriptor accounting would count."""
    import uvloop

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    server = loop.run_until_complete(loop.create_server(asyncio.Protocol, "127.0.0.1", 0))
    server.close()
    loop.run_until_complete(server.wait_closed())
    return loop


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the mail lab, directly or through another fixture, is marked `lab`: `-m "not lab"`
    (scripts/test --unit) then leaves out exactly the tests that need it, whether or not their file says so."""
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The running mail lab; fails (never skips) when it is not running: CI starts it, so must you."""
    done = subprocess.run([str(MAIL_LAB), "env"], capture_output=True, text=True, timeout=30)
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    status = subprocess.run([str(MAIL_LAB), "status"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or status.returncode != 0:
        pytest.fail("the mail lab is not running: run `scripts/mail-lab install && scripts/mail-lab start`\n"
                    + status.stdout + status.stderr)
    return Lab(env)


@pytest.fixture
def postfix_stopped(lab: Lab) -> Iterator[None]:
    """Postfix down, Dovecot up, for the length of one test."""
    lab.control("stop", "postfix")
    try:
        yield
    finally:
        lab.control("start", "postfix")


async def run_once(target: Target) -> Result:
    """Run the target's only check once, as the monitor would."""
    return await Runner("test").execute(target, target.checks[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def refused_ports() -> Iterator[Callable[[], int]]:
    """Make ports on 127.0.0.1 that refuse connections until the test ends.

    Each port stays bound (never listening) for the whole test: Linux answers a SYN to it with RST, and no other
    process can bind it meanwhile, unlike a port found free and released, which anything may take before use.
    """
    held: list[socket.socket] = []

    def make() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        return int(sock.getsockname()[1])

    try:
        yield make
    finally:
        for sock in held:
            sock.close()


def local_target(check: str, port: int, tls_mode: str = "none", timeout: float = 2.0) -> Target:
    """A target aimed at a local fake on 127.0.0.1."""
    return builders.target("fake", builders.check(check, port=port, tls_mode=tls_mode, timeout=timeout),
                           host="127.0.0.1", auth=Auth("u@example.test", Secret("pw-fake")))


@pytest.fixture
async def black_hole() -> AsyncIterator[int]:
    """A local port that accepts connections and then never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def mailmon_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "monitor", *args]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def idp(lab: Lab) -> Iterator[Idp]:
    """The lab identity provider reset (no faults, default lifetimes, counters at zero) and no cached tokens in
    this process, before and after the test."""
    from monitor.signin import IDENTITIES
    from tests.lab_idp import Idp as LabIdp  # lab_idp imports this module: import it when the fixture runs

    idp = LabIdp(lab)
    idp.control("reset")
    IDENTITIES.clear()
    try:
        yield idp
    finally:
        IDENTITIES.clear()
        IDENTITIES.clock = time.time
        idp.control("reset")
