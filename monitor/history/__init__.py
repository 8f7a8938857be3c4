"""The probe history journal: every check result, one row each, in an embedded SQLite file (docs/history.md).

Writing never blocks probing: `History.submit` only appends to a bounded in-memory queue (dropping the oldest
pending result when it is full) and a dedicated writer thread, which alone owns the writing connection, commits
what is queued in one transaction at least every `flush_interval` (0.2 s). WAL mode makes each commit atomic,
so a crash or `kill -9` loses only results not yet committed and never leaves a damaged file.

The same thread keeps the file bounded: rows older than the retention age are deleted, and when the main file
plus its WAL grow past a high-water mark of `max_bytes` the oldest rows are deleted, the WAL is truncated and
freed pages are returned to the filesystem (`auto_vacuum=INCREMENTAL`), in small steps interleaved with writes.

Reading (`query`, `latest`) opens a fresh read-only connection each time, so it works while the writer writes.
These calls do file I/O: from asyncio code, run them with `asyncio.to_thread`.

The package, by job: `schema` (tables, row layout, a Result as a row), `db` (SQLite errors by result code, the
transaction helper, opening for writing), `reading` (query, latest), `writing` (the queue and the writer
thread), `retention` (age and size steps, checkpoints), `journal` (`History`). Redaction is
monitor/redaction.py, re-exported here.
"""

from __future__ import annotations

from monitor.history.journal import History
from monitor.history.reading import latest, query
from monitor.history.schema import COLUMNS, MIN_MAX_BYTES, SCHEMA_VERSION, HistoryError, row_from_result
from monitor.redaction import redact, redact_lines

__all__ = [
    "COLUMNS",
    "MIN_MAX_BYTES",
    "SCHEMA_VERSION",
    "History",
    "HistoryError",
    "latest",
    "query",
    "redact",
    "redact_lines",
    "row_from_result",
]
