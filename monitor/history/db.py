"""SQLite plumbing of the history: errors told apart by `sqlite_errorname`, the one transaction helper, and
opening the file for writing (validation, pragmas, schema).

SQLite's messages are for people and change between versions; its result codes do not, so a problem is named
from the code (`sqlite3.Error.sqlite_errorname`, extended codes included: `SQLITE_CANTOPEN_ISDIR` is a
`SQLITE_CANTOPEN`), and the message is only quoted.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from monitor.history.schema import SCHEMA_VERSION, HistoryError, check_version, schema_statements

__all__ = ["BUSY_TIMEOUT_MS", "READ_BUSY_TIMEOUT_MS", "open_writer", "sqlite_problem", "transaction"]

BUSY_TIMEOUT_MS = 1000
READ_BUSY_TIMEOUT_MS = 5000

# Primary result code -> what it means for a history file.
_PROBLEMS = {
    "SQLITE_NOTADB": "not a SQLite database (or its header is damaged)",
    "SQLITE_CORRUPT": "the SQLite file is corrupt",
    "SQLITE_READONLY": "the file or its directory is read-only",
    "SQLITE_CANTOPEN": "cannot open the file (missing directory, or no permission)",
}


def error_name(exc: sqlite3.Error) -> str:
    """The primary result code name of a SQLite error (`SQLITE_BUSY` for `SQLITE_BUSY_SNAPSHOT`); '' for an
    error the sqlite3 module raised by itself (a closed connection, a bad parameter)."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    return "_".join(name.split("_")[:2])


def sqlite_problem(path: str, exc: sqlite3.Error) -> HistoryError:
    """A SQLite error as a HistoryError naming the file and the problem."""
    what = _PROBLEMS.get(error_name(exc), "SQLite error")
    return HistoryError(f"history database {path}: {what}: {exc}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """`BEGIN IMMEDIATE` (the write lock at once, so no deadlock upgrading a read) ... `COMMIT`; on any error,
    or a commit that fails, the transaction is rolled back and the error goes on. For connections opened with
    `isolation_level=None` (the sqlite3 module starts no transaction of its own)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def open_writer(path: str, check_integrity: bool, wal_limit: int, page_size: int) -> sqlite3.Connection:
    """Open (creating if need be) the history file for writing: validate it, WAL mode, schema."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise sqlite_problem(path, exc) from exc
    try:
        _prepare(conn, path, check_integrity, wal_limit, page_size)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: str, check_integrity: bool, wal_limit: int,
             page_size: int) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise sqlite_problem(path, exc) from exc
    check_version(path, version)
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
        with transaction(conn):
            for statement in schema_statements():
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
            # A file created elsewhere without incremental auto-vacuum: convert it once (rewrites the file).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
    except sqlite3.Error as exc:
        raise sqlite_problem(path, exc) from exc
