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
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.errors import MailmonError
from monitor.result import Result

__all__ = [
    "SCHEMA_VERSION",
    "History",
    "HistoryError",
    "latest",
    "query",
    "redact",
    "redact_lines",
    "row_from_result",
]

log = logging.getLogger(__name__)

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
_INSERT = f"INSERT INTO results ({_QUOTED}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_UPSERT_LATEST = """
INSERT INTO latest (target, "check", via, id, time) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (target, "check", via) DO UPDATE SET id = excluded.id, time = excluded.time
WHERE excluded.time > latest.time OR (excluded.time = latest.time AND excluded.id > latest.id)
"""
_SELECT = f"SELECT id, {_QUOTED} FROM results"
_SELECT_LATEST = ("SELECT r.id AS id, " + ", ".join(f'r."{c}" AS "{c}"' for c in COLUMNS)
                  + " FROM latest JOIN results AS r ON r.id = latest.id")

_BUSY_TIMEOUT_MS = 1000
_READ_BUSY_TIMEOUT_MS = 5000
# Size retention (docs/history.md has the arithmetic). The writer predicts the worst size the next commit and
# checkpoint can reach: main + 2 x (WAL + g), g being the largest WAL growth of a recent commit (a checkpoint
# may extend the main file by as many pages as the WAL holds before truncating the WAL). Past HIGH x max_bytes
# it deletes the oldest rows until the live data is under the low mark, then gives the pages back.
_HIGH_WATER = 0.85
_HYSTERESIS = 0.10
_MIN_LOW_WATER = 0.10
_STEP_FRACTION = 1 / 32  # a batch's payload, and an incremental-vacuum step
_WAL_FRACTION = 1 / 16  # the WAL is checkpointed before it would grow past this
_DELETE_FRACTION = 1 / 8  # of live data deleted per step at most
_GROWTH_MEMORY = 64  # commits over which the largest WAL growth is remembered
# Small limits get small pages: a commit touches a few dozen pages whatever its size (three indexes, interior
# pages, the pointer map), which with 4 KiB pages would be a large part of a 1 MB budget.
_SMALL_PAGE_LIMIT = 32 * 1024 * 1024
_AGE_RETENTION_INTERVAL = 30.0
_ERROR_LOG_INTERVAL = 60.0
_REDACTED = "********"


class HistoryError(MailmonError):
    """The history file cannot be used: not SQLite, corrupt, not a mailmon history, unreadable, too new."""


# ---------------------------------------------------------------------------------------------------- redaction

_B64_TOKEN = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")
# C: [tag] AUTH|AUTHENTICATE <mech> <initial response>  ->  the initial response goes
_AUTH_LINE = re.compile(r"^(C: (?:\S+ )?(?:AUTH|AUTHENTICATE) \S+ ).*\S.*$", re.IGNORECASE)
# C: PASS <password>  (POP3)
_PASS_LINE = re.compile(r"^(C: (?:\S+ )?PASS ).*\S.*$", re.IGNORECASE)
# C: [tag] LOGIN <user> <password>  (IMAP; the user may be quoted or a literal)
_LOGIN_LINE = re.compile(r'^(C: (?:\S+ )?LOGIN (?:"(?:[^"\\]|\\.)*"|\{\d+\+?\}|\S+) ).*\S.*$', re.IGNORECASE)
# A server line inviting a SASL response or an IMAP literal: SMTP 334, IMAP/POP3 "+".
_CONTINUATION = re.compile(r"^S: (?:334(?:[ -]|$)|\+(?: |$))")


def redact_lines(lines: Iterable[str]) -> list[str]:
    """Transcript lines with any credential a client line could carry replaced by `********`.

    Rules (defence in depth: the probes redact before recording): everything after `AUTH <mech> ` or
    `AUTHENTICATE <mech> ` on a `C: ` line; the argument of `PASS`; everything after the user of `LOGIN`;
    and a `C: ` line that is one bare base64-looking token (4+ characters) right after a server `334` or
    `+` continuation line (SASL PLAIN/LOGIN exchanges, IMAP literals), `-- ` note lines in between ignored.
    """
    out: list[str] = []
    after_continuation = False
    for line in lines:
        if line.startswith("C: "):
            redacted = _redact_client_line(line)
            if redacted == line and after_continuation and _B64_TOKEN.fullmatch(line[3:].strip()):
                redacted = "C: " + _REDACTED
            out.append(redacted)
            after_continuation = False
        else:
            if line.startswith("S: "):
                after_continuation = _CONTINUATION.match(line) is not None
            out.append(line)
    return out


def _redact_client_line(line: str) -> str:
    for pattern in (_AUTH_LINE, _PASS_LINE, _LOGIN_LINE):
        match = pattern.match(line)
        if match is not None:
            return match.group(1) + _REDACTED
    return line


def redact(text: str) -> str:
    """`redact_lines` over a (possibly multi-line) text: the transcript rules applied line by line."""
    return "\n".join(redact_lines(text.split("\n")))


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


def _row_bytes(row: Mapping[str, Any]) -> int:
    """Roughly what a row occupies in the file (the text columns dominate)."""
    return 120 + sum(len(v) for v in row.values() if isinstance(v, str))


def _insert_rows(conn: sqlite3.Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows inside the caller's transaction, keep `latest` current; returns the last id inserted."""
    try:
        values = [tuple(row[c] for c in COLUMNS) for row in rows]
    except KeyError as exc:
        raise ValueError(f"a history row lacks the column {exc.args[0]!r}") from None
    conn.executemany(_INSERT, values)
    last_id = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
    # One writer at a time (BEGIN IMMEDIATE) and AUTOINCREMENT: the ids of this statement are consecutive.
    first_id = last_id - len(rows) + 1
    newest: dict[tuple[str, str, str], tuple[float, int]] = {}
    for offset, row in enumerate(rows):
        key = (row["target"], row["check"], row["via"] or "")
        candidate = (float(row["time"]), first_id + offset)
        if key not in newest or candidate > newest[key]:
            newest[key] = candidate
    conn.executemany(_UPSERT_LATEST, [(*key, row_id, t) for key, (t, row_id) in newest.items()])
    return last_id


def _from_db(row: sqlite3.Row) -> dict[str, Any]:
    """A stored row as the public dict: `mailmon check --json` names plus id, queue_id, message_id, verdict."""
    return {
        "id": row["id"],
        "target": row["target"],
        "check": row["check"],
        "via": row["via"],
        "vantage": row["vantage"],
        "ok": bool(row["ok"]),
        "stage": row["stage"],
        "reason": row["reason"],
        "phases": json.loads(row["phases"]),
        "duration_seconds": row["duration_seconds"],
        "smtp_code": row["smtp_code"],
        "smtp_reply": row["smtp_reply"],
        "tls_version": row["tls_version"],
        "tls_cert_not_after": row["tls_cert_not_after"],
        "detail": row["detail"],
        "started_at": row["time"],
        "queue_id": row["queue_id"],
        "message_id": row["message_id"],
        "verdict": row["verdict"],
        "transcript": json.loads(row["transcript"]),
    }


# ---------------------------------------------------------------------------------------------------- opening

def _sqlite_problem(path: str, exc: sqlite3.Error) -> HistoryError:
    text = str(exc)
    if "not a database" in text:
        what = "not a SQLite database (or its header is damaged)"
    elif "malformed" in text or "corrupt" in text:
        what = "the SQLite file is corrupt"
    elif "readonly" in text or "read-only" in text:
        what = "the file or its directory is read-only"
    elif "unable to open" in text:
        what = "cannot open the file (missing directory, or no permission)"
    else:
        what = "SQLite error"
    return HistoryError(f"history database {path}: {what}: {text}")


def _open_writer(path: str, check_integrity: bool, wal_limit: int, page_size: int) -> sqlite3.Connection:
    """Open (creating if need be) the history file for writing: validate it, WAL mode, schema."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise _sqlite_problem(path, exc) from exc
    try:
        _prepare(conn, path, check_integrity, wal_limit, page_size)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: str, check_integrity: bool, wal_limit: int,
             page_size: int) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise _sqlite_problem(path, exc) from exc
    if version > SCHEMA_VERSION:
        raise HistoryError(f"history database {path}: schema version {version} was written by a newer mailmon "
                           f"(this one reads up to {SCHEMA_VERSION})")
    foreign = tables - {"results", "latest", "sqlite_sequence"}
    if version == 0 and foreign:
        raise HistoryError(f"history database {path}: a SQLite database but not a mailmon history "
                           f"(it has the tables {', '.join(sorted(foreign))})")
    try:
        if check_integrity and tables:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise HistoryError(f"history database {path}: the SQLite file is corrupt: {'; '.join(problems)}")
        if not tables:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # these two only take effect before the first table
            conn.execute(f"PRAGMA page_size = {page_size}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(f"history database {path}: cannot switch to WAL mode (journal mode is {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Deleted rows need not be zeroed on disk (transcripts are redacted), and zeroing would make every
        # retention delete write each freed page to the WAL.
        conn.execute("PRAGMA secure_delete = FAST")
        conn.execute(f"PRAGMA journal_size_limit = {wal_limit}")
        # The writer checkpoints by itself (size retention); SQLite's automatic one is only a backstop.
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(100, 4 * wal_limit // page)}")
        conn.execute("BEGIN IMMEDIATE")
        for statement in _schema_statements():
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
        if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
            # A file created elsewhere without incremental auto-vacuum: convert it once (rewrites the file).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise _sqlite_problem(path, exc) from exc


def _schema_statements() -> Iterator[str]:
    """The schema as single statements (executescript would commit our transaction)."""
    body = "\n".join(line for line in _SCHEMA.splitlines() if not line.lstrip().startswith("--"))
    for statement in body.split(";"):
        if statement.strip():
            yield statement.strip()


@contextlib.contextmanager
def _reader(path: str) -> Iterator[sqlite3.Connection]:
    """A fresh read-only connection to a history file (WAL: does not disturb, nor wait for, the writer)."""
    if not os.path.exists(path):
        raise HistoryError(f"history database {path}: no such file")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_READ_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise _sqlite_problem(path, exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise _sqlite_problem(path, exc) from exc
        if version == 0:
            raise HistoryError(f"history database {path}: not a mailmon history (no schema)")
        if version > SCHEMA_VERSION:
            raise HistoryError(f"history database {path}: schema version {version} was written by a newer "
                               f"mailmon (this one reads up to {SCHEMA_VERSION})")
        yield conn
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------------- reading

def query(path: str, since: float | None = None, until: float | None = None, target: str | None = None,
          check: str | None = None, failed_only: bool = False, limit: int = 1000, offset: int = 0,
          before_id: int | None = None) -> list[dict[str, Any]]:
    """Rows of the history file at `path`, newest first (by start time, then id), as dicts.

    Filters: `since <= started_at < until`, `target`, `check`, `failed_only` (ok is false). Pages: pass the
    `id` of the last row of a page as `before_id` to get the rows after it in this order (a keyset cursor:
    stable while rows are added; empty once retention has deleted that row, as everything older is gone
    too); or use `offset` (simple, but rows added meanwhile shift the pages).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if offset < 0:
        raise ValueError("offset must not be negative")
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("time >= ?")
        args.append(float(since))
    if until is not None:
        where.append("time < ?")
        args.append(float(until))
    if target is not None:
        where.append("target = ?")
        args.append(target)
    if check is not None:
        where.append('"check" = ?')
        args.append(check)
    if failed_only:
        where.append("ok = 0")
    if before_id is not None:
        where.append("(time, id) < (SELECT time, id FROM results WHERE id = ?)")
        args.append(int(before_id))
    sql = _SELECT
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY time DESC, id DESC LIMIT ? OFFSET ?"
    args += [int(limit), int(offset)]
    with _reader(path) as conn:
        try:
            return [_from_db(row) for row in conn.execute(sql, args)]
        except sqlite3.Error as exc:
            raise _sqlite_problem(path, exc) from exc


def latest(path: str) -> list[dict[str, Any]]:
    """The newest row (by start time) of every (target, check, via) in the history file at `path`."""
    sql = (_SELECT_LATEST + ' ORDER BY r.target, r."check", r.via')
    with _reader(path) as conn:
        try:
            return [_from_db(row) for row in conn.execute(sql)]
        except sqlite3.Error as exc:
            raise _sqlite_problem(path, exc) from exc


# ---------------------------------------------------------------------------------------------------- writing

# A taken result: its submit sequence number and its row (None: it could not be made a row, already counted).
_Item = tuple[int, dict[str, Any] | None]


@dataclass
class _WriterState:
    """What the writer thread carries from one pass to the next."""

    batch: list[_Item] = field(default_factory=list)  # taken, not yet committed
    failures: int = 0  # consecutive failed commits (backoff)
    next_age: float = field(default_factory=time.monotonic)  # age retention at start, then periodically
    age_active: bool = False
    retain_serving: int = 0  # the retain() request being served


class History:
    """The history journal of one monitor: non-blocking `submit`, background writer thread, retention.

    Open with `History.open(path)`; `close()` (or the context manager) flushes and joins the writer.
    Counters (ints, read any time): `dropped` (results lost: queue overflow, unwritable at close, unusable
    result), `written` (rows committed), `write_errors` (failed commit attempts, retried).
    """

    def __init__(self, path: str, *, retention_seconds: float, max_bytes: int, queue_size: int,
                 flush_interval: float, batch_rows: int, retention_interval: float,
                 on_commit: Callable[[int, int], None] | None, check_integrity: bool) -> None:
        """Use `History.open`."""
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}")
        if queue_size < 1 or batch_rows < 1 or flush_interval <= 0 or retention_interval <= 0:
            raise ValueError("queue_size, batch_rows, flush_interval and retention_interval must be positive")
        self.path = path
        self.retention_seconds = float(retention_seconds)
        self.max_bytes = int(max_bytes)
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.batch_rows = batch_rows
        self.batch_bytes = max(8 * 1024, min(4 * 1024 * 1024, int(max_bytes * _STEP_FRACTION)))
        self.retention_interval = retention_interval
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._on_commit = on_commit
        self._check_integrity = check_integrity
        self._wal_limit = int(max_bytes * _WAL_FRACTION)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: deque[tuple[int, Result, str | None]] = deque()
        self._seq = 0  # of the last submitted result
        self._handled = 0  # every result up to this seq is committed or counted as dropped
        self._retain_requested = 0
        self._retain_done = 0
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stop_deadline = math.inf
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._avg_row_bytes = 2048.0
        self._shrinking = False
        self._bytes_per_row = 4096.0
        self._growth: deque[int] = deque(maxlen=_GROWTH_MEMORY)
        self._last_error_log = -math.inf
        self._thread = threading.Thread(target=self._run, name=f"history-writer {os.path.basename(path)}",
                                        daemon=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str], retention_seconds: float = 30 * 86400,
             max_bytes: int = 200 * 1024 * 1024, *, queue_size: int = 10_000, flush_interval: float = 0.2,
             batch_rows: int = 1000, retention_interval: float = _AGE_RETENTION_INTERVAL,
             on_commit: Callable[[int, int], None] | None = None, check_integrity: bool = True) -> History:
        """Open or create the history file and start its writer thread.

        Raises HistoryError (with the path and the problem) when the file is not SQLite, is corrupt
        (`PRAGMA quick_check` at open when `check_integrity`), is another application's database, or
        cannot be opened. `on_commit(last_id, rows)` is called in the writer thread after every commit.
        """
        history = cls(os.fspath(path), retention_seconds=retention_seconds, max_bytes=max_bytes,
                      queue_size=queue_size, flush_interval=flush_interval, batch_rows=batch_rows,
                      retention_interval=retention_interval, on_commit=on_commit, check_integrity=check_integrity)
        history._thread.start()
        history._ready.wait()
        if history._startup_error is not None:
            history._thread.join()
            raise history._startup_error
        return history

    # -- the asyncio side: cheap and never blocking on SQLite

    def submit(self, result: Result, verdict: str | None = None) -> None:
        """Queue a result for writing; returns at once. A full queue drops its oldest result (`dropped`)."""
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            if len(self._pending) >= self.queue_size:
                self._pending.popleft()
                self.dropped += 1
            self._seq += 1
            self._pending.append((self._seq, result, verdict))
            backlog = len(self._pending)
        if backlog >= self.batch_rows:
            self._wake.set()

    __call__ = submit  # a History is a Runner sink

    @property
    def pending(self) -> int:
        """Results queued and not yet taken by the writer."""
        return len(self._pending)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed (or dropped); False on timeout. Blocks."""
        with self._cond:
            target = self._seq
            if self._closed and not self._thread.is_alive():
                return True
            self._wake.set()
            return self._cond.wait_for(lambda: self._handled >= target or not self._thread.is_alive(), timeout)

    def retain(self, timeout: float | None = None) -> bool:
        """Run age and size retention now (in the writer thread) and wait for it; False on timeout. Blocks."""
        with self._cond:
            self._retain_requested += 1
            target = self._retain_requested
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._retain_done >= target or not self._thread.is_alive(), timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the writer thread and wait for it (at most about `timeout` seconds)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 5)
        if self._thread.is_alive():
            log.error("history writer for %s did not stop within %.0fs", self.path, timeout)

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading (fresh read-only connections; blocking file I/O)

    def query(self, since: float | None = None, until: float | None = None, target: str | None = None,
              check: str | None = None, failed_only: bool = False, limit: int = 1000, offset: int = 0,
              before_id: int | None = None) -> list[dict[str, Any]]:
        """See the module-level `query`."""
        return query(self.path, since, until, target, check, failed_only, limit, offset, before_id)

    def latest(self) -> list[dict[str, Any]]:
        """See the module-level `latest`."""
        return latest(self.path)

    def write_now(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert rows (from `row_from_result`) synchronously on a connection of the caller; returns the last id.

        For tests and imports: it waits for the write lock like any SQLite writer. Probing code uses `submit`.
        """
        batch = list(rows)
        if not batch:
            return 0
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=_READ_BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last_id = _insert_rows(conn, batch)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _sqlite_problem(self.path, exc) from exc
        finally:
            conn.close()
        return last_id

    def file_bytes(self) -> int:
        """Size of the main file plus its WAL now."""
        return sum(self._sizes())

    # -- the writer thread

    def _run(self) -> None:
        try:
            page_size = 1024 if self.max_bytes < _SMALL_PAGE_LIMIT else 4096
            conn = _open_writer(self.path, self._check_integrity, self._wal_limit, page_size)
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(conn)
        except BaseException:
            log.exception("history writer for %s stopped by an unexpected error", self.path)
            raise
        finally:
            conn.close()
            with self._cond:
                lost = len(self._pending)
                self._pending.clear()
                self.dropped += lost
                self._handled = self._seq
                self._cond.notify_all()

    def _loop(self, conn: sqlite3.Connection) -> None:
        state = _WriterState()
        while True:
            try:
                if self._pass(conn, state):
                    return
            except Exception:  # a bug must not silently end the journal: log it, pause, go on
                log.exception("history writer for %s failed; continuing", self.path)
                time.sleep(1.0)

    def _pass(self, conn: sqlite3.Connection, st: _WriterState) -> bool:
        """One pass of the writer: a batch, one retention step, maybe a wait. True when it is time to stop."""
        stopping = self._stop.is_set()
        self._wake.clear()
        if not st.batch:
            st.batch = self._take()
        if st.batch:
            st.batch = self._write(conn, st.batch)
            if st.batch:  # not written: retry later, backing off (and, once closing, until the deadline)
                st.failures += 1
                if stopping and time.monotonic() >= self._stop_deadline:
                    self._give_up(st.batch)
                    st.batch = []
                else:
                    time.sleep(0.05 if stopping else min(1.0, 0.05 * 2 ** min(st.failures, 5)))
                return False
            st.failures = 0
        if stopping:
            return not self._pending
        # Retention: one bounded step per pass, between batches, so writes never wait long behind it.
        busy = False
        try:
            with self._lock:
                requested = self._retain_requested
            if requested > st.retain_serving and not st.age_active:
                st.retain_serving, st.age_active = requested, True
            if not st.age_active and time.monotonic() >= st.next_age:
                st.age_active = True
            if st.age_active:
                st.age_active = self._age_step(conn)
                if not st.age_active:
                    st.next_age = time.monotonic() + self.retention_interval
            busy = self._size_step(conn) or st.age_active
        except sqlite3.Error as exc:
            self._log_error("history retention on %s failed: %s", exc)
            st.age_active = False
            st.next_age = time.monotonic() + self.retention_interval
        if not busy and st.retain_serving > self._retain_done:
            with self._cond:
                self._retain_done = st.retain_serving
                self._cond.notify_all()
        if not busy and len(self._pending) < self.batch_rows:
            self._wake.wait(self.flush_interval)
        return False

    def _take(self) -> list[_Item]:
        """Up to batch_rows / batch_bytes queued results, converted to rows (outside the lock).

        The queue is popped in one go (per-item locking would hand the lock and the GIL back and forth with a
        busy submitter); what does not fit the byte budget goes back to the front of the queue.
        """
        want = max(1, min(self.batch_rows, int(self.batch_bytes / max(200.0, self._avg_row_bytes)) + 1))
        with self._lock:
            items = [self._pending.popleft() for _ in range(min(want, len(self._pending)))]
        batch: list[_Item] = []
        size = 0
        for index, (seq, result, verdict) in enumerate(items):
            if size >= self.batch_bytes:
                self._put_back(items[index:])
                break
            try:
                row = row_from_result(result, verdict)
            except Exception:
                log.exception("history: cannot store a result of %s/%s", getattr(result, "target", "?"),
                              getattr(result, "check", "?"))
                with self._lock:
                    self.dropped += 1
                batch.append((seq, None))  # kept as a placeholder: flush() waits for its sequence number
                continue
            row_size = _row_bytes(row)
            size += row_size
            self._avg_row_bytes = 0.95 * self._avg_row_bytes + 0.05 * row_size
            batch.append((seq, row))
        return batch

    def _put_back(self, items: list[tuple[int, Result, str | None]]) -> None:
        with self._lock:
            self._pending.extendleft(reversed(items))
            while len(self._pending) > self.queue_size:  # submits filled the queue meanwhile: drop the oldest
                self._pending.popleft()
                self.dropped += 1

    def _write(self, conn: sqlite3.Connection,
               batch: list[_Item]) -> list[_Item]:
        """Commit the batch; returns what is still to be written (nothing on success, all of it to retry)."""
        try:
            self._commit(conn, batch)
            return []
        except sqlite3.OperationalError as exc:  # locked, busy, disk full, I/O: worth retrying later
            with self._lock:
                self.write_errors += 1
            self._log_error("history write to %s failed (will retry): %s", exc)
            return batch
        except (sqlite3.Error, ValueError, OverflowError) as exc:  # a row SQLite will never take
            if len(batch) == 1:
                log.error("history: dropping a result %s cannot store: %s", self.path, exc)
                self._give_up(batch, quiet=True)
                return []
        for index, item in enumerate(batch):  # find the bad rows: write one at a time
            rest = self._write(conn, [item])
            if rest:
                return rest + batch[index + 1:]
        return []

    def _commit(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        rows = [row for _, row in batch if row is not None]
        if rows:
            wal_before = self._sizes()[1]
            conn.execute("BEGIN IMMEDIATE")
            try:
                last_id = _insert_rows(conn, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            self._growth.append(max(0, self._sizes()[1] - wal_before))
        with self._cond:
            self.written += len(rows)
            self._handled = batch[-1][0]
            self._cond.notify_all()
        if rows and self._on_commit is not None:
            try:
                self._on_commit(last_id, len(rows))
            except Exception:
                log.exception("history on_commit callback failed")

    def _give_up(self, batch: list[_Item], quiet: bool = False) -> None:
        lost = sum(1 for _, row in batch if row is not None)  # placeholders were counted when taken
        if not quiet:
            log.error("history: could not write %d results to %s before the close deadline", lost, self.path)
        with self._cond:
            self.dropped += lost
            self._handled = batch[-1][0]
            self._cond.notify_all()

    def _log_error(self, message: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.warning(message, self.path, exc)

    # -- retention (writer thread only)

    def _sizes(self) -> tuple[int, int]:
        sizes = []
        for name in (self.path, self.path + "-wal"):
            try:
                sizes.append(os.stat(name).st_size)
            except FileNotFoundError:
                sizes.append(0)
        return sizes[0], sizes[1]

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            log.debug("history checkpoint of %s blocked by a reader", self.path)

    def _chunk_rows(self, step_bytes: float) -> int:
        return max(1, int(step_bytes / max(200.0, self._avg_row_bytes)))

    def _age_step(self, conn: sqlite3.Connection) -> bool:
        """Delete one chunk of rows older than the retention age; True while more may remain."""
        cutoff = time.time() - self.retention_seconds
        chunk = self._chunk_rows(self.max_bytes * _STEP_FRACTION)
        deleted = conn.execute("DELETE FROM results WHERE id IN (SELECT id FROM results WHERE time < ? "
                               "ORDER BY time LIMIT ?)", (cutoff, chunk)).rowcount
        if deleted:
            self._checkpoint(conn)
        if deleted < chunk:
            conn.execute("DELETE FROM latest WHERE id NOT IN (SELECT id FROM results)")
            return False
        return True

    def _size_step(self, conn: sqlite3.Connection) -> bool:
        """One bounded step of size retention; True while more steps are needed."""
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        growth = max(self._growth, default=48 * page_size)
        main, wal = self._sizes()
        if wal and wal + growth > self._wal_limit:
            self._checkpoint(conn)
            main, wal = self._sizes()
        page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        high = self.max_bytes * _HIGH_WATER
        if not self._shrinking:
            mostly_free = free_pages > max(16, page_count // 4)
            if main + 2 * (wal + growth) <= high and not mostly_free:
                return False
            # A shrink cycle starts: learn what a row costs in the file (pages, indexes) from the file itself.
            rows = int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
            self._bytes_per_row = (page_count - free_pages) * page_size / max(1, rows)
            self._shrinking = True
        self._checkpoint(conn)
        used = (page_count - free_pages) * page_size
        low = max(self.max_bytes * _MIN_LOW_WATER,
                  high - 2 * (self._wal_limit + growth) - self.max_bytes * _HYSTERESIS)
        if used > low:
            chunk = math.ceil(min(used - low, self.max_bytes * _DELETE_FRACTION) / max(1.0, self._bytes_per_row))
            deleted = conn.execute("DELETE FROM results WHERE id IN "
                                   "(SELECT id FROM results ORDER BY time, id LIMIT ?)", (chunk,)).rowcount
            self._checkpoint(conn)
            if deleted:
                return True
        if free_pages:
            pages = max(1, int(self.max_bytes * _STEP_FRACTION) // page_size)
            conn.execute(f"PRAGMA incremental_vacuum({pages})").fetchall()
            self._checkpoint(conn)
            if int(conn.execute("PRAGMA freelist_count").fetchone()[0]):
                return True
        conn.execute("DELETE FROM latest WHERE id NOT IN (SELECT id FROM results)")
        self._checkpoint(conn)
        self._shrinking = False
        return False
