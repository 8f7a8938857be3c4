"""The history's model: the schema (tables, indexes, version), the row layout, and a Result as a stored row.

A row is `COLUMNS` in storage order plus the `id` SQLite assigns; `latest` holds the newest row per
(target, check, via) so `latest()` does not scan. Schema creation is idempotent (`IF NOT EXISTS`); a file with
a newer `user_version` than `SCHEMA_VERSION` is refused. There are no migrations yet: version 1 is the first.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

from monitor.errors import MailmonError
from monitor.redaction import redact, redact_lines
from monitor.result import Result

__all__ = ["COLUMNS", "INSERT", "MIN_MAX_BYTES", "PUBLIC_FIELDS", "SCHEMA_VERSION", "SELECT", "SELECT_JSON",
           "SELECT_LATEST", "UPSERT_LATEST", "HistoryError", "check_version", "from_db", "row_bytes",
           "row_from_result", "schema_statements"]

SCHEMA_VERSION = 1
MIN_MAX_BYTES = 512 * 1024

# Row columns in storage order (`id` is assigned by SQLite). `time` is the run's start (Result.started_at).
COLUMNS: tuple[str, ...] = (
    "time", "vantage", "target", "check", "via", "ok", "stage", "reason", "duration_seconds", "phases",
    "smtp_code", "smtp_reply", "queue_id", "message_id", "tls_version", "tls_cert_not_after", "verdict",
    "detail", "transcript",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    time               REAL    NOT NULL,
    vantage            TEXT    NOT NULL,
    target             TEXT    NOT NULL,
    "check"            TEXT    NOT NULL,
    via                TEXT,
    ok                 INTEGER NOT NULL CHECK (ok IN (0, 1)),
    stage              TEXT,
    reason             TEXT,
    duration_seconds   REAL    NOT NULL,
    phases             TEXT    NOT NULL DEFAULT '{}',
    smtp_code          INTEGER,
    smtp_reply         TEXT,
    queue_id           TEXT,
    message_id         TEXT,
    tls_version        TEXT,
    tls_cert_not_after REAL,
    verdict            TEXT,
    detail             TEXT    NOT NULL DEFAULT '',
    transcript         TEXT    NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS results_time ON results (time);
CREATE INDEX IF NOT EXISTS results_target_check_time ON results (target, "check", time);
CREATE INDEX IF NOT EXISTS results_ok_time ON results (ok, time);
-- The newest row per (target, check, via), kept up to date by the writer so `latest()` does not scan.
-- `via` is '' here where the result's via is NULL (a primary key column cannot usefully hold NULL).
CREATE TABLE IF NOT EXISTS latest (
    target  TEXT    NOT NULL,
    "check" TEXT    NOT NULL,
    via     TEXT    NOT NULL,
    id      INTEGER NOT NULL,
    time    REAL    NOT NULL,
    PRIMARY KEY (target, "check", via)
) WITHOUT ROWID;
"""

_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
INSERT = f"INSERT INTO results ({_QUOTED}) VALUES ({', '.join('?' for _ in COLUMNS)})"
UPSERT_LATEST = """
INSERT INTO latest (target, "check", via, id, time) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (target, "check", via) DO UPDATE SET id = excluded.id, time = excluded.time
WHERE excluded.time > latest.time OR (excluded.time = latest.time AND excluded.id > latest.id)
"""
SELECT = f"SELECT id, {_QUOTED} FROM results"
SELECT_LATEST = ("SELECT r.id AS id, " + ", ".join(f'r."{c}" AS "{c}"' for c in COLUMNS)
                 + " FROM latest JOIN results AS r ON r.id = latest.id")


class HistoryError(MailmonError):
    """The history file cannot be used: not SQLite, corrupt, not a mailmon history, unreadable, too new."""


def schema_statements() -> Iterator[str]:
    """The schema as single statements (executescript would commit our transaction)."""
    body = "\n".join(line for line in _SCHEMA.splitlines() if not line.lstrip().startswith("--"))
    for statement in body.split(";"):
        if statement.strip():
            yield statement.strip()


def check_version(path: str, version: int) -> None:
    """Refuse a file whose schema a newer mailmon wrote."""
    if version > SCHEMA_VERSION:
        raise HistoryError(f"history database {path}: schema version {version} was written by a newer mailmon "
                           f"(this one reads up to {SCHEMA_VERSION})")


# ---------------------------------------------------------------------------------------------------- rows

def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    return value if isinstance(value, str) else str(value)


def row_from_result(result: Result, verdict: str | None = None) -> dict[str, Any]:
    """The stored row for one Result (keys: `COLUMNS`), credentials redacted, JSON columns encoded.

    `verdict` overrides the Result's own `verdict` attribute when given. Phases and duration are rounded
    to the microsecond exactly as `Result.as_json` does, so a stored row reads back equal to it.
    """
    tls = result.tls
    own_verdict = getattr(result, "verdict", None)
    return {
        "time": float(result.started_at),
        "vantage": result.vantage,
        "target": result.target,
        # A check bound to an address family is its own history series: `imap@ipv6` (see monitor/families.py).
        "check": f"{result.check}@{result.ip_family}" if result.ip_family else result.check,
        "via": result.via,
        "ok": 1 if result.ok else 0,
        "stage": result.stage,
        "reason": result.reason,
        "duration_seconds": round(float(result.duration_seconds), 6),
        "phases": json.dumps({name: round(float(s), 6) for name, s in result.phases.items()},
                             separators=(",", ":"), ensure_ascii=False),
        "smtp_code": result.smtp_code,
        "smtp_reply": None if result.smtp_reply is None else redact(result.smtp_reply),
        "queue_id": _opt_str(getattr(result, "queue_id", None)),
        "message_id": _opt_str(getattr(result, "message_id", None)),
        "tls_version": tls.version,
        "tls_cert_not_after": tls.cert_not_after,
        "verdict": verdict if verdict is not None else _opt_str(own_verdict),
        "detail": redact(result.detail or ""),
        "transcript": json.dumps(redact_lines(result.transcript), separators=(",", ":"), ensure_ascii=False),
    }


def row_bytes(row: Mapping[str, Any]) -> int:
    """Roughly what a row occupies in the file (the text columns dominate)."""
    return 120 + sum(len(v) for v in row.values() if isinstance(v, str))


# The public row (`from_db`, `mailmon history --json`, /api/history) in field order: its name, the column it comes
# from, and how the stored value becomes the public one ("bool": 0/1 as false/true; "json": a column holding JSON
# text, decoded). The one place that says what a public row is: `from_db` and `SELECT_JSON` are both built from it.
PUBLIC_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("id", "id", "plain"), ("target", "target", "plain"), ("check", "check", "plain"), ("via", "via", "plain"),
    ("vantage", "vantage", "plain"), ("ok", "ok", "bool"), ("stage", "stage", "plain"),
    ("reason", "reason", "plain"), ("phases", "phases", "json"), ("duration_seconds", "duration_seconds", "plain"),
    ("smtp_code", "smtp_code", "plain"), ("smtp_reply", "smtp_reply", "plain"),
    ("tls_version", "tls_version", "plain"), ("tls_cert_not_after", "tls_cert_not_after", "plain"),
    ("detail", "detail", "plain"), ("started_at", "time", "plain"), ("queue_id", "queue_id", "plain"),
    ("message_id", "message_id", "plain"), ("verdict", "verdict", "plain"), ("transcript", "transcript", "json"),
)
_JSON_FIELDS = tuple(name for name, _, kind in PUBLIC_FIELDS if kind == "json")
_BOOL_FIELDS = tuple(name for name, _, kind in PUBLIC_FIELDS if kind == "bool")


def from_db(row: sqlite3.Row) -> dict[str, Any]:
    """A stored row as the public dict: `mailmon check --json` names plus id, queue_id, message_id, verdict."""
    public = {name: row[column] for name, column, _ in PUBLIC_FIELDS}
    for name in _BOOL_FIELDS:
        public[name] = bool(public[name])
    for name in _JSON_FIELDS:
        public[name] = json.loads(public[name])
    return public


def _json_member(name: str, column: str, kind: str) -> str:
    value = f'"{column}"'
    if kind == "bool":
        value = f"json(CASE {value} WHEN 0 THEN 'false' ELSE 'true' END)"
    elif kind == "json":
        value = f"json({value})"  # embedded as JSON, not as a string holding JSON
    return f"'{name}', {value}"


# Each row's public form as JSON text (UTF-8 bytes), built by SQLite: `id`, `time`, then the object without
# `started_at`, which the reader puts in front. Why: SQLite's JSON writes a REAL with 15 significant digits, and a
# start time needs 16-17 to read back as the same float (its other REALs, durations rounded to the microsecond and
# certificate expiries in whole seconds, fit in 15). SQLite releases the GIL while it steps, so a page built this
# way holds the GIL for a few milliseconds instead of the ~30 ms `from_db` plus `json.dumps` take for 1,000 rows.
SELECT_JSON = ("SELECT id, time, CAST(json_object("
               + ", ".join(_json_member(*field) for field in PUBLIC_FIELDS if field[0] != "started_at")
               + ") AS BLOB) FROM results")
