"""The parts of aioimaplib's private state mailmon relies on, pinned down so an upgrade that changes them fails here,
loudly, rather than as hung or unbounded IMAP probes in production.

monitor/probes/imap_protocol.py reads `incomplete_line` (to bound a response line that never ends), cancels `tasks`
(the library's background work) on close, and overrides `_continuation` / `_handle_line`;
monitor/probes/readback_imap.py reads IDLE pushes from `idle_queue`. pyproject.toml pins the minor series these tests
passed on.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from collections.abc import Callable
from importlib.metadata import version

from aioimaplib import aioimaplib

from tests.conftest import ROOT


class _Wire(asyncio.Transport):
    """A transport that keeps what the client writes (the library's commands), for driving the protocol by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (the library's tasks take a few turns), at most 5 s."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true within 5 s")


def _connected() -> tuple[aioimaplib.IMAP4ClientProtocol, _Wire]:
    protocol = aioimaplib.IMAP4ClientProtocol(asyncio.get_running_loop(), None)
    wire = _Wire()
    protocol.connection_made(wire)
    return protocol, wire


def test_installed_version_is_in_the_pinned_series() -> None:
    """The installed aioimaplib is of the minor series pyproject.toml pins (the one these tests cover)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in dependencies if d.startswith("aioimaplib"))
    found = re.fullmatch(r"aioimaplib~=(\d+)\.(\d+)\.(\d+)", pin)
    assert found is not None, f"aioimaplib must be pinned to a minor series (~=X.Y.Z), not {pin!r}"
    assert version("aioimaplib").split(".")[:2] == [found.group(1), found.group(2)]


async def test_incomplete_line_holds_the_unfinished_line() -> None:
    """Bytes without a line end wait in `incomplete_line` (imap.py bounds its length) until the line completes."""
    protocol, _ = _connected()
    assert protocol.incomplete_line == b""
    protocol.data_received(b"* OK a greeting that goes on")
    assert protocol.incomplete_line == b"* OK a greeting that goes on"
    protocol.data_received(b"\r\n")
    assert protocol.incomplete_line == b""


async def test_background_work_is_in_tasks() -> None:
    """The greeting's handling runs as a task in `tasks` (imap.py cancels them when it drops a session)."""
    protocol, wire = _connected()
    assert isinstance(protocol.tasks, set) and not protocol.tasks
    protocol.data_received(b"* OK ready\r\n")
    assert len(protocol.tasks) == 1
    for task in list(protocol.tasks):
        task.cancel()
    await _until(lambda: not protocol.tasks)  # each task leaves the set when done
    assert wire.sent == [] or wire.sent[0].endswith(b" CAPABILITY\r\n")


async def test_idle_pushes_arrive_on_idle_queue() -> None:
    """During IDLE the server's untagged lines arrive, as lists of lines, on `idle_queue` (readback_imap.py waits
    there)."""
    protocol, wire = _connected()
    assert isinstance(protocol.idle_queue, asyncio.Queue)
    protocol.state, protocol.capabilities = aioimaplib.SELECTED, {"IMAP4REV1", "IDLE"}
    idle = asyncio.ensure_future(protocol.idle())
    await _until(lambda: bool(wire.sent))
    assert wire.sent[-1].endswith(b" IDLE\r\n")
    protocol.data_received(b"+ idling\r\n* 3 EXISTS\r\n")
    assert await asyncio.wait_for(protocol.idle_queue.get(), 5) == [b"3 EXISTS"]
    idle.cancel()


def test_overridden_hooks_keep_their_signatures() -> None:
    """The methods imap.py overrides exist with the parameters it passes."""
    hooks = {"_continuation": ["self", "line"], "_handle_line": ["self", "line", "current_cmd"],
             "welcome": ["self", "command"], "send": ["self", "line", "scrub"],
             "execute": ["self", "command", "scrub"]}
    for name, parameters in hooks.items():
        method = getattr(aioimaplib.IMAP4ClientProtocol, name)
        assert list(inspect.signature(method).parameters) == parameters, name
