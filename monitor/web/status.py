"""The status document (`/api/status`, the status page) and "a user reports X" (`/api/explain`), built from one
monitor's verdict board, change calendars and /probe results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from monitor.authres import auth_note
from monitor.changes import ChangeCalendars
from monitor.config import Config, Target
from monitor.diagnose import freshness
from monitor.explain import Answer, explain
from monitor.ondemand import OnDemand
from monitor.result import Result
from monitor.verdict import VerdictBoard, describe

__all__ = ["MAX_REPORT", "StatusSource", "explain_report", "quota_note", "status"]

# What a user reported is looked up, echoed and matched: bound it.
MAX_REPORT = 500
# Change windows that ended this long ago still matter to "a user reports X": faults follow changes.
_RECENT_CHANGES = 3 * 86400.0


@dataclass(frozen=True)
class StatusSource:
    """What the status is read from: the monitor's current configuration and state (taken at request time)."""

    config: Config
    board: VerdictBoard
    calendars: ChangeCalendars
    on_demand: OnDemand


def status(source: StatusSource) -> dict[str, Any]:
    """The latest result and verdict per target and check, as served at /api/status."""
    config, board, calendars = source.config, source.board, source.calendars
    now = time.time()
    targets = []
    open_windows = calendars.active(now)
    during = (f" During change window {', '.join(f'{w.change} ({w.calendar})' for w in open_windows)}."
              if open_windows else "")
    for target in config.targets:
        results = board.results(target.name)
        verdict = board.verdict(target.name)
        targets.append({
            "target": target.name,
            "verdict": verdict,
            "summary": (describe(verdict, results, config.vantage) + quota_note(target, results)
                        + auth_note(results) + during),
            "checks": [{**r.as_json(), "age_seconds": round(now - r.started_at, 3), "transcript": r.transcript}
                       for r in results],
        })
    recent = [w for w in calendars.windows(now - _RECENT_CHANGES, now) if w.end <= now]
    return {"vantage": config.vantage, "generated_at": now,
            "vantage_healthy": board.vantage_healthy, "targets": targets,
            "change_windows_open": [w.as_json() for w in open_windows],
            "change_windows_recent": [w.as_json() for w in recent],
            "on_demand": source.on_demand.status()}


def explain_report(source: StatusSource, reported: str, target: str | None) -> Answer | str:
    """"A user reports X" answered from this monitor's current results; a str is a bad request's reason."""
    names = [t.name for t in source.config.targets]
    if target is None and len(names) == 1:
        target = names[0]
    if target not in names:
        return f"target must be one of: {', '.join(names)}"
    if not reported.strip():
        return "error must say what the user's client reported (a code such as 0x800CCC13, or its message)"
    return explain(reported[:MAX_REPORT], str(target), [status(source)], freshness(source.config))


def quota_note(target: Target, results: list[Result]) -> str:
    """" The INBOX mailbox is 95% full (MESSAGE 95 of 100)." for each checked mailbox above its quota_warning."""
    notes = []
    for result in results:
        check = next((c for c in target.checks if c.key == result.key), None)
        if check is None or not result.quota:
            continue
        name, (usage, limit) = max(result.quota.items(), key=lambda item: item[1][0] / item[1][1])
        if usage / limit >= check.quota_warning:
            unit = " KiB" if name == "STORAGE" else ""
            notes.append(f" The {check.mailbox} mailbox is {100 * usage / limit:.0f}% full ({name} {usage}{unit} of "
                         f"{limit}{unit}): new mail may be refused.")
    return "".join(notes)
