"""The Recorder: every Result in one order (verdict, metrics, log, history), and nothing of a check that left the
configuration, even when its run was in flight during the reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import monitor.app as app_module
from monitor.app import App
from monitor.authres import LoopCollector
from monitor.config import load, load_text
from monitor.metrics import Metrics
from monitor.mx import MxCollector
from monitor.ondemand import OnDemand
from monitor.recorder import Recorder
from monitor.result import Result
from monitor.verdict import VerdictBoard
from tests.builders import config_file, result
from tests.fakes import Conn, FakeServer

_CONFIG = """vantage: test
defaults: {{interval: 60s, timeout: 30s}}
history: {{path: {history}}}
targets:
  - name: stay
    host: 127.0.0.1
    smtp: {{port: 1, tls: none}}
{slow}"""
_SLOW = """  - name: slow
    host: 127.0.0.1
    smtp: {{port: {port}, tls: none}}
"""


def _recorder(config_text: str) -> Recorder:
    metrics = Metrics(CollectorRegistry(), "test")
    recorder = Recorder(metrics, VerdictBoard(), LoopCollector("test"), MxCollector("test"), OnDemand("test"))
    recorder.follow(load_text(config_text, "c.yaml"))
    return recorder


def test_result_of_an_unconfigured_check_is_dropped() -> None:
    recorder = _recorder(_CONFIG.format(history="h.sqlite", slow=""))
    recorder.record(result("gone", "smtp", stage="greeting", reason="timeout"))
    assert recorder.board.results("gone") == []
    assert b'target="gone"' not in recorder.metrics.exposition()


def test_late_and_swept_counts_of_a_result_reach_the_target_series() -> None:
    recorder = _recorder(_CONFIG.format(history="h.sqlite", slow=""))
    recorder.record(result("stay", "smtp", late=(("imap", 2),), swept=3))
    text = recorder.metrics.exposition().decode()
    assert 'mailmon_roundtrip_late_total{target="stay",vantage="test",via="imap"} 2.0' in text
    assert 'mailmon_roundtrip_swept_total{target="stay",vantage="test"} 3.0' in text


async def test_reload_removing_a_target_while_its_slow_check_runs_leaves_nothing_of_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run goes on after the reload (the scheduler lets it finish) and ends afterwards: no series, no verdict
    and no history row of the removed target come back."""
    monkeypatch.setattr(app_module, "_MIN_SPREAD", 0.0)  # first runs at once, not spread over 5 s
    connected = asyncio.Event()
    release = asyncio.Event()

    async def slow_peer(conn: Conn) -> None:  # accepts, and says nothing until the test lets it close
        connected.set()
        await release.wait()
        conn.close()

    history = tmp_path / "history.sqlite"
    async with FakeServer(slow_peer) as peer:
        path = config_file(tmp_path, _CONFIG.format(history=history, slow=_SLOW.format(port=peer.port)))
        app = App(load(str(path)), listen="127.0.0.1:0", config_path=str(path))
        ended = asyncio.Event()
        record = app.recorder.record

        def observed(outcome: Result) -> None:
            record(outcome)
            if outcome.target == "slow":
                ended.set()

        app.recorder.record = observed  # type: ignore[method-assign,assignment]
        await app.start()
        try:
            await asyncio.wait_for(connected.wait(), 30)
            assert b'target="slow"' in app.metrics.exposition()
            config_file(tmp_path, _CONFIG.format(history=history, slow=""))
            assert await app.reload()
            release.set()
            await asyncio.wait_for(ended.wait(), 30)  # the run ended (greeting: connection closed)
            assert b'target="slow"' not in app.metrics.exposition()
            assert app.board.results("slow") == []
            assert app.board.verdict("slow") == "unknown"
            assert app.history is not None
            assert await asyncio.to_thread(app.history.flush, 30)
            assert app.history.query(target="slow", limit=10) == []
        finally:
            await app.stop()
