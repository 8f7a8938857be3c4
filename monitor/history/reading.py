"""Reading the history: `query`, `query_json` and `latest`, each on a fresh read-only connection.

WAL mode lets a reader see the last commit without disturbing, or waiting for, the writer thread. These calls do
file I/O: from asyncio code, run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from typing import Any

from monitor.history.db import READ_BUSY_TIMEOUT_MS, sqlite_problem
from monitor.history.schema import SELECT, SELECT_JSON, SELECT_LATEST, HistoryError, check_version, from_db

__all__ = ["JsonRows", "latest", "query", "query_json"]


@contextlib.contextmanager
def _reader(path: str) -> Iterator[sqlite3.Connection]:
    """A fresh read-only connection to a history file (WAL: does not disturb, nor wait for, the writer)."""
    if not os.path.exists(path):
        raise HistoryError(f"history database {path}: no such file")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=READ_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise sqlite_problem(path, exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise sqlite_problem(path, exc) from exc
        if version == 0:
            raise HistoryError(f"history database {path}: not a mailmon history (no schema)")
        check_version(path, version)
        yield conn
    finally:
        conn.close()


def _fetch(path: str, sql: str, args: list[Any] | tuple[()] = ()) -> list[sqlite3.Row]:
    with _reader(path) as conn:
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise sqlite_problem(path, exc) from exc


def _rows(path: str, sql: str, args: list[Any] | tuple[()] = ()) -> list[dict[str, Any]]:
    return [from_db(row) for row in _fetch(path, sql, args)]


def _filtered(since: float | None, until: float | None, target: str | None, check: str | None,
              failed_only: bool, limit: int, offset: int, before_id: int | None) -> tuple[str, list[Any]]:
    """The WHERE ... ORDER BY ... LIMIT tail of a query, and its arguments."""
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
    tail = " WHERE " + " AND ".join(where) if where else ""
    return tail + " ORDER BY time DESC, id DESC LIMIT ? OFFSET ?", [*args, int(limit), int(offset)]


def query(path: str, since: float | None = None, until: float | None = None, target: str | None = None,
          check: str | None = None, failed_only: bool = False, limit: int = 1000, offset: int = 0,
          before_id: int | None = None) -> list[dict[str, Any]]:
    """Rows of the history file at `path`, newest first (by start time, then id), as dicts.

    Filters: `since <= started_at < until`, `target`, `check`, `failed_only` (ok is false). Pages: pass the
    `id` of the last row of a page as `before_id` to get the rows after it in this order (a keyset cursor:
    stable while rows are added; empty once retention has deleted that row, as everything older is gone
    too); or use `offset` (simple, but rows added meanwhile shift the pages).
    """
    tail, args = _filtered(since, until, target, check, failed_only, limit, offset, before_id)
    return _rows(path, SELECT + tail, args)


@dataclasses.dataclass(frozen=True)
class JsonRows:
    """Rows as one JSON array (UTF-8), and what a page needs to know about them without decoding it."""

    body: bytes
    count: int
    last_id: int | None  # the id of the last row (the next page's `before_id`)
    earliest: float | None  # the smallest and largest start time among the rows
    latest: float | None


def query_json(path: str, since: float | None = None, until: float | None = None, target: str | None = None,
               check: str | None = None, failed_only: bool = False, limit: int = 1000, offset: int = 0,
               before_id: int | None = None) -> JsonRows:
    """What `query` returns, as a JSON array of the same rows (parsed, equal to `query`'s dicts).

    For the HTTP side: SQLite builds each row's JSON text while the GIL is free (monitor/history/schema.py
    SELECT_JSON); only the start time, which must keep every digit of its float, is written by Python.
    """
    tail, args = _filtered(since, until, target, check, failed_only, limit, offset, before_id)
    rows = _fetch(path, SELECT_JSON + tail, args)
    times = [float(row[1]) for row in rows]
    # json_object's text starts with "{": the start time goes in front, as `json.dumps` writes a float.
    body = b"[" + b",".join(b'{"started_at":' + repr(started).encode() + b"," + row[2][1:]
                            for started, row in zip(times, rows, strict=True)) + b"]"
    return JsonRows(body=body, count=len(rows), last_id=int(rows[-1][0]) if rows else None,
                    earliest=min(times, default=None), latest=max(times, default=None))


def latest(path: str) -> list[dict[str, Any]]:
    """The newest row (by start time) of every (target, check, via) in the history file at `path`."""
    return _rows(path, SELECT_LATEST + ' ORDER BY r.target, r."check", r.via')
