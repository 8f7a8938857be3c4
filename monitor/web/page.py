"""The status page at `/`: per target the verdict in plain words, the state of each check, and a 24 h timeline.

Server-rendered HTML with inline CSS and a few lines of JS (auto-refresh), no external assets: it must work on a
machine with no internet access. Failures on the timeline link to their transcript further down the page.
"""

from __future__ import annotations

import html
import time
from typing import Any

__all__ = ["render"]

COLOURS = {
    "ok": "#2e7d32", "degraded": "#f9a825", "unknown": "#757575", "vantage_fault": "#6a1b9a",
    "smtp_down": "#c62828", "receive_down": "#c62828", "unreachable": "#b71c1c", "delivery_stalled": "#e65100",
    "auth_failed": "#ad1457", "tls_problem": "#ad1457",
    # The monitor's own sign-in (OAuth2 identity provider): the monitor's problem, purple like vantage_fault.
    "signin_failed": "#4527a0",
}
_DAY = 86400.0
_WIDTH = 960

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#fafafa;color:#212121}
header{background:#263238;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px}
main{padding:16px 24px;max-width:1100px}
.target{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0 0 20px;padding:14px 18px}
.verdict{display:inline-block;color:#fff;border-radius:4px;padding:2px 10px;font-weight:600}
.summary{font-size:17px;margin:8px 0 12px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:4px 8px;border-bottom:1px solid #eee}
.ok{color:#2e7d32;font-weight:600}.fail{color:#c62828;font-weight:600}
svg text{font-size:11px;fill:#555}pre{background:#f5f5f5;padding:8px;overflow:auto;font-size:12px}
details{margin:4px 0}summary{cursor:pointer}
.ask{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0 0 20px;padding:14px 18px}
.ask input[name=error]{width:420px}.answer{margin:10px 0 0;padding:10px 12px;border-radius:4px;color:#fff}
.changes{background:#e3f2fd;border:1px solid #90caf9;border-radius:6px;padding:8px 14px;margin:0 0 20px}
"""
_ANSWER_COLOURS = {"client_side": "#1565c0", "server_side": "#c62828", "cannot_tell": "#616161"}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _check_name(row: dict[str, Any]) -> str:
    return f"{row['check']} via {row['via']}" if row.get("via") else str(row["check"])


_SLOTS = 96  # 15-minute slots over 24 h
# What a slot of the timeline shows. Only what the journal recorded is coloured: a slot without a run is "no data"
# (the monitor was not running, had not started, or had no history), never "ok".
SLOT_COLOURS = {"ok": "#66bb6a", "failed": "#c62828", "mixed": "#ef6c00", "no-data": "#e0e0e0"}
_SLOT_WORDS = {"ok": "every run passed", "failed": "every run failed", "mixed": "some runs failed",
               "no-data": "no data: the monitor was not running or recorded nothing"}


def _slot_states(name: str, runs: list[dict[str, Any]], now: float) -> list[str]:
    """The state of each 15-minute slot of the last 24 h for one check, from the runs the journal holds."""
    passed, failed = [0] * _SLOTS, [0] * _SLOTS
    for run in runs:
        if _check_name(run) != name:
            continue
        age = now - float(run["started_at"])
        if not 0 <= age < _DAY:
            continue
        slot = _SLOTS - 1 - int(age / (_DAY / _SLOTS))
        if run["ok"]:
            passed[slot] += 1
        else:
            failed[slot] += 1
    return ["no-data" if not p and not f else "ok" if not f else "failed" if not p else "mixed"
            for p, f in zip(passed, failed, strict=True)]


def _timeline(checks: list[str], failures: list[dict[str, Any]], now: float, runs: list[dict[str, Any]],
              monitor_started: float | None) -> str:
    """One row per check over the last 24 h: the recorded state per 15 minutes, every failure a red tick linking
    to its transcript, and a dashed line where this monitor (re)started."""
    row_height, label = 18, 150
    height = row_height * max(1, len(checks)) + 16
    span = _WIDTH - label
    parts = [f'<svg width="{_WIDTH}" height="{height}" role="img" aria-label="states in the last 24 hours">']
    for hour in range(0, 25, 3):
        x = label + span * hour / 24
        parts.append(f'<line x1="{x:.0f}" y1="0" x2="{x:.0f}" y2="{height - 14}" stroke="#eee"/>'
                     f'<text x="{min(x, _WIDTH - 14):.0f}" y="{height - 2}" text-anchor="middle">'
                     f'{"now" if hour == 24 else f"-{24 - hour}h"}</text>')
    slot_width = span / _SLOTS
    for index, name in enumerate(checks):
        y = index * row_height
        parts.append(f'<text x="0" y="{y + 13}">{_esc(name)}</text>')
        for slot, state in enumerate(_slot_states(name, runs, now)):
            start = now - _DAY + slot * _DAY / _SLOTS
            parts.append(f'<rect x="{label + slot * slot_width:.1f}" y="{y + 3}" width="{slot_width:.1f}" '
                         f'height="12" fill="{SLOT_COLOURS[state]}" data-state="{state}"><title>{_esc(name)} from '
                         f'{_when(start)}: {_SLOT_WORDS[state]}</title></rect>')
    for failure in failures:
        name = _check_name(failure)
        if name not in checks:
            continue
        # Clamped so a failure seconds ago still shows as a whole tick at the right edge.
        x = min(_WIDTH - 4, label + span * (1 - (now - float(failure["started_at"])) / _DAY))
        y = checks.index(name) * row_height
        title = f"{name}: {failure.get('stage')}/{failure.get('reason')} at {_when(failure['started_at'])}"
        parts.append(f'<a href="#failure-{_esc(failure["id"])}"><rect x="{x:.1f}" y="{y + 1}" width="3" height="16" '
                     f'fill="#b71c1c"><title>{_esc(title)}</title></rect></a>')
    if monitor_started is not None and 0 <= now - monitor_started < _DAY:
        x = label + span * (1 - (now - monitor_started) / _DAY)
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 14}" stroke="#1565c0" stroke-width="2" '
                     f'stroke-dasharray="3,2" data-mark="monitor-start"><title>monitor started at '
                     f'{_when(monitor_started)}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def _change_strip(windows: list[dict[str, Any]], now: float) -> str:
    """The change windows of the last 24 h on the timeline's scale: what was going on when checks failed."""
    if not windows:
        return ""
    label = 150
    parts = [f'<svg width="{_WIDTH}" height="18" role="img" aria-label="change windows in the last 24 hours">'
             '<text x="0" y="13">change windows</text>']
    for window in windows:
        left = max(0.0, 1 - (now - float(window["start"])) / _DAY)
        right = min(1.0, 1 - (now - float(window["end"])) / _DAY)
        if right <= left:
            continue
        x = label + (_WIDTH - label) * left
        width = max(2.0, (_WIDTH - label) * (right - left))
        title = f"{window['change']} ({window['calendar']}): {_when(window['start'])} – {_when(window['end'])}"
        parts.append(f'<rect class="change-window" x="{x:.1f}" y="3" width="{width:.1f}" height="12" fill="#64b5f6">'
                     f"<title>{_esc(title)}</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


def _ask(status: dict[str, Any], answer: dict[str, Any] | None) -> str:
    """The "a user reports ..." form, and its answer when the page was asked one (computed by the server)."""
    reported = (answer or {}).get("reported", "")
    chosen = (answer or {}).get("target")
    options = "".join(f'<option{" selected" if t["target"] == chosen else ""}>{_esc(t["target"])}</option>'
                      for t in status["targets"])
    result = ""
    if answer is not None and "error" in answer:
        result = f'<p class="answer" style="background:#616161">{_esc(answer["error"])}</p>'
    elif answer is not None:
        colour = _ANSWER_COLOURS.get(answer["conclusion"], "#555")
        result = (f'<p class="answer" id="answer" data-conclusion="{_esc(answer["conclusion"])}" '
                  f'style="background:{colour}">{_esc(answer["text"])}</p>')
    return ('<section class="ask"><form method="get" action="/">'
            f'<label>A user reports: <input name="error" value="{_esc(reported)}" '
            'placeholder="0x800CCC13, or the message the client showed"></label> '
            f'<label>on <select name="target">{options}</select></label> <button type="submit">Explain</button>'
            f"</form>{result}</section>")


def _legend() -> str:
    items = "".join(f'<span style="display:inline-block;width:10px;height:10px;background:{colour};margin:0 4px 0 '
                    f'10px"></span>{_esc(state)}' for state, colour in SLOT_COLOURS.items())
    return (f'<p class="legend"><small>Per 15 minutes:{items}<span style="display:inline-block;width:10px;'
            'border-top:2px dashed #1565c0;margin:0 4px 3px 10px"></span>monitor started</small></p>')


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(timestamp)))


def render(status: dict[str, Any], failures: dict[str, list[dict[str, Any]]], now: float | None = None, *,
           runs: dict[str, list[dict[str, Any]]] | None = None, monitor_started: float | None = None,
           windows: list[dict[str, Any]] | None = None, answer: dict[str, Any] | None = None) -> str:
    """The page for a /api/status document and, per target, its failures of the last 24 h (newest first).

    `runs` holds, per target, every run of the last 24 h the journal recorded (passed and failed): the timeline
    colours only those; without it, only the failures are known and the rest of the day reads "no data".
    `monitor_started` marks when this monitor process started (earlier stops show as gaps without data).
    `windows` are the change windows of those 24 h; `answer` the answer to "a user reports ..." when one was asked.
    """
    now = time.time() if now is None else now
    windows = windows or []
    sections = []
    for target in status["targets"]:
        verdict = target["verdict"]
        rows = []
        for row in target["checks"]:
            state = ('<span class="ok">ok</span>' if row["ok"] else
                     f'<span class="fail">{_esc(row["stage"])}/{_esc(row["reason"])}</span>')
            said = row.get("smtp_reply") if row["ok"] else row.get("detail")
            rows.append(f"<tr><td>{_esc(_check_name(row))}</td><td>{state}</td>"
                        f"<td>{float(row['duration_seconds']):.3f} s</td><td>{float(row['age_seconds']):.0f} s ago</td>"
                        f"<td>{_esc(said or '')}</td></tr>")
        names = sorted({_check_name(row) for row in target["checks"]} |
                       {_check_name(f) for f in failures.get(target["target"], [])})
        recorded = (runs if runs is not None else failures).get(target["target"], [])
        timeline = _timeline(names, failures.get(target["target"], []), now, recorded, monitor_started)
        details = []
        for failure in failures.get(target["target"], [])[:200]:
            transcript = "\n".join(failure.get("transcript") or [])
            details.append(f'<details id="failure-{_esc(failure["id"])}"><summary>{_when(failure["started_at"])} '
                           f'{_esc(_check_name(failure))}: {_esc(failure.get("stage"))}/{_esc(failure.get("reason"))}'
                           f' — {_esc(failure.get("detail") or "")}</summary><pre>{_esc(transcript)}</pre></details>')
        sections.append(
            f'<section class="target" data-target="{_esc(target["target"])}" data-verdict="{_esc(verdict)}">'
            f'<h2>{_esc(target["target"])} <span class="verdict" style="background:{COLOURS.get(verdict, "#555")}">'
            f'{_esc(verdict.replace("_", " "))}</span></h2>'
            f'<p class="summary">{_esc(target["summary"])}</p>'
            f"<table><tr><th>check</th><th>state</th><th>took</th><th>last run</th><th>server said</th></tr>"
            f'{"".join(rows)}</table>'
            f"<h3>Last 24 hours</h3>{timeline}{_change_strip(windows, now)}{_legend()}"
            f'<h3>Failures ({len(failures.get(target["target"], []))})</h3>'
            f'{"".join(details) or "<p>None in the last 24 hours.</p>"}</section>')
    vantage = _esc(status["vantage"])
    health = "" if status.get("vantage_healthy", True) else (
        '<p class="fail">This monitor\'s own selfcheck fails: its results say nothing about the servers now.</p>')
    open_now = status.get("change_windows_open") or []
    if open_now:
        listed = ", ".join(f"{w['change']} ({w['calendar']}) until {_when(w['end'])}" for w in open_now)
        health += f'<p class="changes">Change window open now: {_esc(listed)}.</p>'
    health += _ask(status, answer)
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>mailmon — {vantage}</title><style>{_STYLE}</style></head><body>"
            f"<header><h1>mailmon — is it the server or the client? Seen from {vantage}</h1></header><main>{health}"
            f'{"".join(sections)}<p><small>Updated {_when(now)} · <a href="/api/status">/api/status</a> · '
            '<a href="/api/history">/api/history</a> · <a href="/metrics">/metrics</a></small></p></main>'
            # Refresh every 30 s unless the reader has a transcript open.
            "<script>setInterval(function(){if(!document.querySelector('details[open]'))location.reload()},30000)"
            "</script></body></html>")
