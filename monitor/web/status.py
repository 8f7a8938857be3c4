"""The status document (`/api/status`, the status page) and "a user reports X" (`/api/explain`), built from one
monitor's verdict board, change calendars and /probe results.

In two halves, so that the costly one can leave the event loop: `snapshot` (on the loop: references to each
target's latest Results, a few ms at 5,000 targets) and `build` / `encode` (anywhere: a thread of the web pool).
At 5,000 targets the document is ~27 MB of JSON, ~0.4-0.6 s of CPU: built and encoded on the loop it stalled every
probe that long (bench/status_api.py, docs/benchmarks.md). `encode` writes one target at a time, so a thread
running it gives the GIL back to the loop between targets.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from monitor.authres import auth_note
from monitor.changes import ChangeCalendars
from monitor.config import Config, ImapSettings, RoundTripSettings, Target
from monitor.diagnose import freshness
from monitor.explain import Answer, explain
from monitor.ondemand import OnDemand
from monitor.result import Result
from monitor.verdict import VerdictBoard, describe

__all__ = ["MAX_REPORT", "StatusSnapshot", "StatusSource", "build", "encode", "explain_report", "quota_note",
           "snapshot", "status"]

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


@dataclass(frozen=True)
class StatusSnapshot:
    """The status document's parts, taken on the event loop: each target with its verdict and its checks' latest
    Results (a recorded Result is not changed afterwards), and the small parts already as JSON values."""

    vantage: str
    generated_at: float
    vantage_healthy: bool
    targets: list[tuple[Target, str, list[Result]]]
    during: str  # " During change window ..." while windows are open
    change_windows_open: list[dict[str, Any]]
    change_windows_recent: list[dict[str, Any]]
    on_demand: list[dict[str, object]]


def snapshot(source: StatusSource) -> StatusSnapshot:
    """Take the status's parts (on the event loop: the board and the calendars change there)."""
    config, board, calendars = source.config, source.board, source.calendars
    now = time.time()
    open_windows = calendars.active(now)
    during = (f" During change window {', '.join(f'{w.change} ({w.calendar})' for w in open_windows)}."
              if open_windows else "")
    recent = [w for w in calendars.windows(now - _RECENT_CHANGES, now) if w.end <= now]
    return StatusSnapshot(
        vantage=config.vantage, generated_at=now, vantage_healthy=board.vantage_healthy,
        targets=[(t, board.verdict(t.name), board.results(t.name)) for t in config.targets], during=during,
        change_windows_open=[w.as_json() for w in open_windows],
        change_windows_recent=[w.as_json() for w in recent], on_demand=source.on_demand.status())


def _target(snap: StatusSnapshot, target: Target, verdict: str, results: list[Result]) -> dict[str, Any]:
    now = snap.generated_at
    return {
        "target": target.name,
        "verdict": verdict,
        "summary": (describe(verdict, results, snap.vantage) + quota_note(target, results) + auth_note(results)
                    + snap.during),
        "checks": [{**r.as_json(), "age_seconds": round(now - r.started_at, 3), "transcript": r.transcript}
                   for r in results],
    }


def _head(snap: StatusSnapshot) -> dict[str, Any]:
    """The document's fields before `targets`."""
    return {"vantage": snap.vantage, "generated_at": snap.generated_at, "vantage_healthy": snap.vantage_healthy}


def _tail(snap: StatusSnapshot) -> dict[str, Any]:
    """The document's fields after `targets`."""
    return {"change_windows_open": snap.change_windows_open, "change_windows_recent": snap.change_windows_recent,
            "on_demand": snap.on_demand}


def build(snap: StatusSnapshot) -> dict[str, Any]:
    """The status document (/api/status's fields) from a snapshot."""
    return {**_head(snap), "targets": [_target(snap, *entry) for entry in snap.targets], **_tail(snap)}


def encode(snap: StatusSnapshot) -> bytes:
    """`json.dumps(build(snap)).encode()`, byte for byte, one target at a time (each a short call into the C
    encoder, between which a thread gives up the GIL)."""
    parts = [json.dumps(_target(snap, *entry)) for entry in snap.targets]
    head, tail = json.dumps(_head(snap))[:-1], json.dumps(_tail(snap))[1:]  # without their closing/opening brace
    return "".join((head, ', "targets": [', ", ".join(parts), "], ", tail)).encode()


def status(source: StatusSource) -> dict[str, Any]:
    """The latest result and verdict per target and check, as served at /api/status."""
    return build(snapshot(source))


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
        if not isinstance(check, ImapSettings | RoundTripSettings) or not result.quota:
            continue
        name, (usage, limit) = max(result.quota.items(), key=lambda item: item[1][0] / item[1][1])
        if usage / limit >= check.quota_warning:
            unit = " KiB" if name == "STORAGE" else ""
            notes.append(f" The {check.mailbox} mailbox is {100 * usage / limit:.0f}% full ({name} {usage}{unit} of "
                         f"{limit}{unit}): new mail may be refused.")
    return "".join(notes)
