"""Answer "a user reports error X" from the monitors' own view of the same protocol and step, in plain words.

The user's client failed at a step (client_errors.py). Each monitor (vantage) ran the same protocol against the
same target moments ago: if it got past that step, the server works there and the fault is with the client or its
network; if it fails at that step or before it from every vantage, the server side is at fault. The answer uses
diagnose's exit codes: 1 this side (the client), 2 server side, 3 cannot tell.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.client_errors import SESSION, ClientError, lookup
from monitor.errors import STAGES

__all__ = ["CANNOT_TELL", "CLIENT_SIDE", "SERVER_SIDE", "Answer", "explain"]

CLIENT_SIDE, SERVER_SIDE, CANNOT_TELL = 1, 2, 3
_PROTOCOL_NAME = {"smtp": "SMTP", "imap": "IMAP", "pop3": "POP3"}
_STEP_WORDS = {"dns": "name resolution", "connect": "connect", "tls": "TLS", "greeting": "the greeting",
               "ehlo": "EHLO", "auth": "login", "mail_from": "MAIL FROM", "rcpt": "RCPT TO", "data": "DATA",
               SESSION: "a whole session"}
# The order steps happen in: a check that failed at a later step got past the user's step.
_ORDER: dict[str, int] = {stage: index for index, stage in enumerate(STAGES)}
_RECENT = 3 * 86400.0
# Failures that say something about the monitor (its sign-in at the identity provider, its own resources), not
# about whether the server accepts this step.
_MONITOR_SIDE_STAGES = frozenset({"token"})
_MONITOR_SIDE_REASONS = frozenset({"local_resources"})


@dataclass
class Evidence:
    """One monitor's latest result for one protocol of the target."""

    vantage: str
    protocol: str
    check: str
    passed_step: bool | None  # None: no fresh result
    text: str


@dataclass
class Answer:
    """What the report means and what the monitors see, as exit code, plain words and JSON."""

    code: int
    text: str
    matches: list[ClientError] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "conclusion": {CLIENT_SIDE: "client_side", SERVER_SIDE: "server_side",
                                                  CANNOT_TELL: "cannot_tell"}[self.code],
                "text": self.text, "matches": [m.as_json() for m in self.matches],
                "evidence": [e.__dict__ for e in self.evidence]}


def _passed(row: dict[str, Any], step: str) -> bool:
    """Whether a check result got past `step` (a check that passed got past every step)."""
    if row.get("ok"):
        return True
    if step == SESSION:
        return False
    failed_at = _ORDER.get(str(row.get("stage")), -1)
    return failed_at > _ORDER.get(step, len(_ORDER))


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _evidence(status: dict[str, Any], target: str, protocol: str, step: str,
              max_age: Callable[[str, str], float]) -> list[Evidence]:
    vantage = str(status.get("vantage", "?"))
    found = []
    for entry in status.get("targets", []):
        if entry.get("target") != target:
            continue
        for row in entry.get("checks", []):
            check = str(row.get("check", ""))
            if check.partition(":")[0] != protocol:
                continue
            age = float(row.get("age_seconds", 0.0))
            where = f"{_PROTOCOL_NAME[protocol]} ({check}) from {vantage}"
            if status.get("vantage_healthy") is False or row.get("stage") in _MONITOR_SIDE_STAGES or \
                    row.get("reason") in _MONITOR_SIDE_REASONS:
                found.append(Evidence(vantage, protocol, check, None, f"{where}: the monitor has a fault of its own"))
            elif age > max_age(target, check):
                found.append(Evidence(vantage, protocol, check, None, f"{where}: last result {_ago(age)}, too old"))
            elif _passed(row, step):
                state = "passes" if row.get("ok") else f"gets past {_STEP_WORDS.get(step, step)} (fails later, at " \
                                                       f"{row.get('stage')}/{row.get('reason')})"
                found.append(Evidence(vantage, protocol, check, True, f"{where} {state}, {_ago(age)}"))
            else:
                found.append(Evidence(vantage, protocol, check, False,
                                      f"{where} fails at {row.get('stage')} ({row.get('reason')}), {_ago(age)}"))
    return found


def _windows(statuses: list[dict[str, Any]], now: float) -> str:
    """The change windows open now or closed in the last days, as one sentence (empty when none)."""
    opened: dict[str, float] = {}
    recent: dict[str, float] = {}
    for status in statuses:
        for window in status.get("change_windows_open", []):
            opened[f"{window['change']} ({window['calendar']})"] = float(window["end"])
        for window in status.get("change_windows_recent", []):
            recent[f"{window['change']} ({window['calendar']})"] = float(window["end"])
    parts = [f"Change window open now: {', '.join(sorted(opened))}."] if opened else []
    ended = sorted(name for name in recent if name not in opened)
    if ended:
        parts.append(f"Change windows in the last {_RECENT / 86400:.0f} days: {', '.join(ended)} — faults cluster "
                     "around changes.")
    return " ".join(parts)


def explain(reported: str, target: str, statuses: list[dict[str, Any] | None],
            max_age: Callable[[str, str], float], now: float | None = None) -> Answer:
    """The answer to "a user reports `reported` for `target`", from each monitor's /api/status document
    (None for a monitor that could not be asked)."""
    now = time.time() if now is None else now
    matches = lookup(reported)
    reachable = [s for s in statuses if s is not None]
    changes = _windows(reachable, now)
    if not matches:
        states = []
        for status in reachable:
            for protocol in _PROTOCOL_NAME:
                states += [e.text for e in _evidence(status, target, protocol, "auth", max_age)]
        known = f" What the monitors see now: {'; '.join(states)}." if states else ""
        return Answer(CANNOT_TELL, f"{reported!r} is not in mailmon's table of client errors: nothing is guessed."
                                   f"{known} {changes}".strip())
    if not reachable:
        return Answer(CANNOT_TELL, "No monitor could be asked (GET /api/status failed): cannot tell.", matches)
    entry = matches[0]
    also = f" (also known as {', '.join(m.id for m in matches[1:])})" if len(matches) > 1 else ""
    what = (f"{entry.client} reports {entry.id}{also}: {entry.meaning} The client failed at "
            f"{_STEP_WORDS.get(entry.step, entry.step)} of {'/'.join(_PROTOCOL_NAME[p] for p in entry.protocols)}.")
    evidence = [e for status in reachable for protocol in entry.protocols
                for e in _evidence(status, target, protocol, entry.step, max_age)]
    missing = [s for s in statuses if s is None]
    fresh = [e for e in evidence if e.passed_step is not None]
    lines = "; ".join(e.text for e in evidence) or "no monitor has a result for it"
    if not fresh:
        code, verdict = CANNOT_TELL, "No monitor has a fresh result for this step: cannot tell."
    elif any(e.passed_step for e in fresh):
        works = sorted({e.vantage for e in fresh if e.passed_step})
        fails = sorted({e.vantage for e in fresh if not e.passed_step})
        code = CLIENT_SIDE
        verdict = (f"The server accepts {_STEP_WORDS.get(entry.step, entry.step)} from {', '.join(works)}"
                   + (f" (but not from {', '.join(fails)}: that network or site)" if fails else "")
                   + f": this is the client or its network. Usual causes: {'; '.join(entry.causes)}.")
    elif missing:
        code, verdict = CANNOT_TELL, (f"Every monitor that answered fails at this step too, but {len(missing)} "
                                      "could not be asked: cannot tell whether every vantage sees it.")
    else:
        code = SERVER_SIDE
        verdict = (f"The monitors fail at this step too, from every vantage "
                   f"({', '.join(sorted({e.vantage for e in fresh}))}): the fault is on the server side.")
    text = f"{what} At {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}: {lines}. {verdict}"
    return Answer(code, f"{text} {changes}".strip(), matches, evidence)
