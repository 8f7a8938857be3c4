"""Choosing the event loop: uvloop when installed (the `uvloop` extra), asyncio's otherwise or when asked."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import types
from pathlib import Path

import pytest

from monitor import eventloop


def _no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError


def _fake_uvloop(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    fake = types.ModuleType("uvloop")
    fake.new_event_loop = asyncio.new_event_loop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", fake)
    return fake


def test_auto_takes_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_uvloop(monkeypatch)
    assert eventloop.loop_factory("auto") is fake.new_event_loop
    assert eventloop.loop_factory("uvloop") is fake.new_event_loop


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_uvloop(monkeypatch)
    assert eventloop.loop_factory("auto") is None


def test_asyncio_is_asyncio_even_with_uvloop_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_uvloop(monkeypatch)
    assert eventloop.loop_factory("asyncio") is None


def test_uvloop_asked_but_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_uvloop(monkeypatch)
    with pytest.raises(eventloop.EventLoopError, match=r"mailmon\[uvloop\]"):
        eventloop.loop_factory("uvloop")


def test_unknown_choice_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown event loop"):
        eventloop.loop_factory("trio")


def test_run_returns_the_result_on_the_chosen_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_uvloop(monkeypatch)

    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(main(), "asyncio").startswith("asyncio")
    assert eventloop.run(main(), "auto").startswith("asyncio")


def test_run_closes_the_coroutine_when_the_loop_cannot_be_had(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_uvloop(monkeypatch)

    async def main() -> None:
        raise AssertionError("must not run")

    coroutine = main()
    with pytest.raises(eventloop.EventLoopError):
        eventloop.run(coroutine, "uvloop")
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # no "never awaited" warning


def test_cli_rejects_uvloop_when_missing(tmp_path: Path) -> None:
    """`--event-loop uvloop` where uvloop is not installed: a usage error (exit 2) that says how to get it."""
    config = tmp_path / "config.yaml"
    config.write_text("vantage: t\ntargets:\n  - name: t\n    host: 127.0.0.1\n    smtp: {port: 1, tls: none}\n")
    # `-c` wrapper: hide uvloop from this child even in an interpreter that has it.
    code = ("import sys; sys.modules['uvloop'] = None; from monitor.cli import main; "
            f"sys.exit(main(['check', '--config', {str(config)!r}, '--event-loop', 'uvloop']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2, done.stderr
    assert "pip install mailmon[uvloop]" in done.stderr
