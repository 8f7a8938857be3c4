"""The status document in two halves (monitor/web/status.py): encoded one target at a time, it is byte for byte
what encoding the whole document at once gives."""

from __future__ import annotations

import json

from monitor.changes import ChangeCalendars
from monitor.config import load_text
from monitor.ondemand import OnDemand
from monitor.verdict import VerdictBoard
from monitor.web.status import StatusSource, build, encode, snapshot
from tests.builders import result

_CONFIG = """vantage: v
targets:
  - {name: a, host: 127.0.0.1, smtp: {port: 25}}
  - {name: b, host: 127.0.0.1, smtp: {port: 25}, pop3: {port: 110, tls: none}, auth: {username: u, password_env: P}}
"""


def test_encoded_by_target_is_the_whole_document() -> None:
    config = load_text(_CONFIG, "c.yaml", {"P": "x"})
    board = VerdictBoard()
    board.reset({t.name: {c.key for c in t.checks} for t in config.targets}, {})
    board.record(result("a", "smtp", transcript=["S: 220 \u00e9t\u00e9 \"hi\"", "C: QUIT"]))
    board.record(result("b", "pop3", stage="greeting", reason="timeout"))
    taken = snapshot(StatusSource(config, board, ChangeCalendars(()), OnDemand("v")))
    assert encode(taken) == json.dumps(build(taken)).encode()


def test_targets_without_results_are_listed() -> None:
    config = load_text(_CONFIG, "c.yaml", {"P": "x"})
    taken = snapshot(StatusSource(config, VerdictBoard(), ChangeCalendars(()), OnDemand("v")))
    document = json.loads(encode(taken))
    assert [t["target"] for t in document["targets"]] == ["a", "b"]
