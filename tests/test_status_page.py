"""The status page's 24 h timeline shows what the journal recorded: no data as no data, restarts marked."""

from __future__ import annotations

import re
from typing import Any

from monitor.web.page import render

NOW = 1_800_000_000.0
HOUR = 3600.0


def _status() -> dict[str, Any]:
    check = {"check": "smtp", "via": None, "ok": True, "stage": None, "reason": None, "duration_seconds": 0.1,
             "age_seconds": 5.0, "smtp_reply": "250 ok", "detail": ""}
    return {"vantage": "v", "targets": [{"target": "lab", "verdict": "ok", "summary": "fine", "checks": [check]}]}


def _run(hours_ago: float, ok: bool, number: int) -> dict[str, Any]:
    return {"id": number, "target": "lab", "check": "smtp", "via": None, "ok": ok, "started_at": NOW - hours_ago * HOUR,
            "stage": None if ok else "connect", "reason": None if ok else "refused", "detail": "", "transcript": []}


def _states(page: str) -> list[str]:
    """The states of the timeline's 96 slots, oldest first."""
    states = re.findall(r'data-state="([a-z-]+)"', page)
    assert len(states) == 96
    return states


def test_hours_without_runs_are_no_data_not_ok() -> None:
    """A monitor that ran only the last hour shows the 23 hours before as no data; its runs as recorded."""
    runs = [_run(minutes / 60, True, i) for i, minutes in enumerate(range(1, 60, 1))]
    runs.append(_run(0.5, False, 100))
    page = render(_status(), {"lab": [r for r in runs if not r["ok"]]}, NOW, runs={"lab": runs})
    states = _states(page)
    assert set(states[:92]) == {"no-data"}
    assert states[92:] == ["ok", "mixed", "ok", "ok"]


def test_failures_only_leave_the_rest_of_the_day_without_data() -> None:
    """Given only failures (no journal of passed runs), nothing is painted ok."""
    failure = _run(2.0, False, 1)
    states = _states(render(_status(), {"lab": [failure]}, NOW))
    assert "ok" not in states and states.count("failed") == 1 and states.count("no-data") == 95


def test_the_monitor_start_is_marked_where_it_happened() -> None:
    """The process start appears as one marker, placed at its time on the 24 h axis."""
    page = render(_status(), {}, NOW, runs={"lab": []}, monitor_started=NOW - 6 * HOUR)
    marks = re.findall(r'<line x1="([0-9.]+)"[^>]*data-mark="monitor-start"', page)
    assert len(marks) == 1
    assert abs(float(marks[0]) - (150 + 810 * 18 / 24)) < 1  # 6 h before now = three quarters along
    assert "monitor started at" in page
