"""`mailmon history`: the probe journal for support staff, as a table, JSON lines or CSV."""

from __future__ import annotations

import csv
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from monitor.config import Config
from monitor.durations import parse_duration
from monitor.history import HistoryError, query

__all__ = ["parse_time", "show_history"]

_CSV_FIELDS = ("id", "started_at", "vantage", "target", "check", "via", "ok", "stage", "reason", "duration_seconds",
               "smtp_code", "smtp_reply", "queue_id", "message_id", "tls_version", "verdict", "detail")


def parse_time(text: str, now: float | None = None) -> float:
    """`1h` (that long ago), an ISO 8601 time (UTC unless it says otherwise), or Unix seconds."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use 1h (ago), 2026-11-28T10:00 (UTC) or Unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # support staff compare with server logs, which are mostly UTC
    return moment.timestamp()


def show_history(config: Config, since: str | None, until: str | None, target: str | None, check: str | None,
                 failed: bool, limit: int, fmt: str, out: TextIO = sys.stdout) -> int:
    if config.history is None:
        print("mailmon: no history is configured (add `history: {path: FILE}` to the config)", file=sys.stderr)
        return 2
    try:
        rows = query(config.history.path, since=parse_time(since) if since else None,
                     until=parse_time(until) if until else None, target=target, check=check, failed_only=failed,
                     limit=limit)
    except (ValueError, HistoryError) as exc:
        print(f"mailmon: {exc}", file=sys.stderr)
        return 2
    if fmt == "json":
        for row in rows:
            print(json.dumps(row), file=out)
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        _table(rows, out)
    return 0


def _table(rows: list[dict[str, Any]], out: TextIO) -> None:
    head = ("TIME (UTC)", "VANTAGE", "TARGET", "CHECK", "RESULT", "SECONDS", "QUEUE ID", "SERVER SAID / DETAIL")
    lines = [head]
    for row in rows:
        check = f"{row['check']}:{row['via']}" if row.get("via") else row["check"]
        result = "ok" if row["ok"] else f"{row['stage']}/{row['reason']}"
        said = row.get("smtp_reply") if row["ok"] else (row.get("detail") or row.get("smtp_reply"))
        lines.append((time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["started_at"])), row["vantage"],
                      row["target"], check, result, f"{row['duration_seconds']:.3f}", row.get("queue_id") or "-",
                      (said or "")[:100]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head) - 1)]
    for line in lines:
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(line[:-1])) + "  " + str(line[-1]),
              file=out)
    if len(rows) == 0:
        print("(no rows match)", file=out)
