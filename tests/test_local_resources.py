"""The monitor's own exhaustion (descriptors, buffers, memory, ephemeral ports) reads as its fault, never the server's.

Local errors are injected at connect through the socket seam in monitor/net.py, against the real mail lab: a
kernel gives them only when the whole host is exhausted. The selfcheck's descriptor check runs under a really
lowered RLIMIT_NOFILE.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from collections.abc import Iterator

import pytest

from monitor import net, selfcheck
from monitor.config import SelfcheckSettings, load_text
from monitor.errors import LOCAL_RESOURCE_ERRNOS, ProbeError, classify
from monitor.result import ProbeContext
from monitor.steps import Stage
from monitor.verdict import VerdictBoard
from tests.conftest import Lab, run_once

LOCAL_ERRNOS = sorted(LOCAL_RESOURCE_ERRNOS)


class _FailingConnect(socket.socket):
    """A real socket whose connect fails with one local errno, as the kernel's would."""

    failure = errno.EMFILE

    def connect(self, address: object) -> None:
        raise OSError(self.failure, os.strerror(self.failure))


@pytest.fixture
def connect_fails(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[int]:
    code: int = request.param

    def factory(family: int, kind: int, proto: int) -> socket.socket:
        sock = _FailingConnect(family, kind, proto)
        sock.failure = code
        return sock

    monkeypatch.setattr(net, "socket_factory", factory)
    yield code


@pytest.mark.lab
@pytest.mark.parametrize("connect_fails", LOCAL_ERRNOS, indirect=True, ids=errno.errorcode.get)
async def test_local_errno_at_connect_is_local_resources(lab: Lab, connect_fails: int) -> None:
    """An SMTP check whose connect fails for lack of local resources reports connect/local_resources."""
    result = await run_once(lab.target("smtp", "starttls"))
    assert (result.ok, result.stage, result.reason) == (False, "connect", "local_resources")


@pytest.mark.lab
@pytest.mark.parametrize("connect_fails", LOCAL_ERRNOS, indirect=True, ids=errno.errorcode.get)
async def test_local_errno_at_connect_gives_vantage_fault(lab: Lab, connect_fails: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SMTP failing for local reasons while IMAP passes is vantage_fault, not smtp_down."""
    failed = await run_once(lab.target("smtp", "starttls"))
    monkeypatch.setattr(net, "socket_factory", socket.socket)
    passed = await run_once(lab.target("imap", "starttls"))
    assert passed.ok, passed.detail
    board = VerdictBoard()
    board.record(passed)
    assert board.record(failed) == "vantage_fault"


@pytest.mark.parametrize("code", LOCAL_ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize("stage", ["connect", "data", "fetch", "auth"])
def test_local_errno_is_local_resources_at_any_stage(code: int, stage: Stage) -> None:
    """A local errno names local_resources whichever step raised it."""
    assert classify(OSError(code, os.strerror(code)), stage) == (stage, "local_resources")


def test_local_errno_wrapped_by_a_library_is_still_local() -> None:
    """A library error raised from EMFILE is classified by the EMFILE underneath."""
    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as inner:
            raise RuntimeError("could not connect") from inner
    except RuntimeError as outer:
        assert classify(outer, "connect") == ("connect", "local_resources")


def test_memory_error_is_local_resources() -> None:
    """Running out of memory is the monitor's fault."""
    assert classify(MemoryError(), "data") == ("data", "local_resources")


def test_resolver_out_of_memory_is_local_resources() -> None:
    """getaddrinfo's EAI_MEMORY is this host's, not the DNS's."""
    assert classify(socket.gaierror(socket.EAI_MEMORY, "Memory allocation failure"), "dns")[1] == "local_resources"


def test_unrouted_peer_is_still_unreachable() -> None:
    """ENETUNREACH stays a network failure: only our own exhaustion moved to local_resources."""
    assert classify(OSError(errno.ENETUNREACH, "Network is unreachable"), "connect") == ("connect", "unreachable")


@pytest.fixture
def few_descriptors_free() -> Iterator[None]:
    """RLIMIT_NOFILE lowered to a few above what this process has open, for one test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_selfcheck_fails_when_descriptors_run_short(few_descriptors_free: None) -> None:
    """With fewer than 16 descriptors free the selfcheck fails with connect/local_resources."""
    config = load_text("vantage: v\ntargets:\n  - name: t\n    host: 127.0.0.1\n    smtp: {port: 25}\n",
                       "inline.yaml")
    with pytest.raises(ProbeError) as caught:
        await selfcheck.probe(ProbeContext(), config, SelfcheckSettings(resolve=()))
    assert (caught.value.stage, caught.value.reason) == ("connect", "local_resources")
