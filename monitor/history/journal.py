"""`History`: the journal's public face. It validates the settings, starts the writer thread (monitor/history/
writing.py) and offers the calls of docs/history.md; reading goes to monitor/history/reading.py."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from monitor.history.db import READ_BUSY_TIMEOUT_MS, sqlite_problem, transaction
from monitor.history.reading import JsonRows, latest, query, query_json
from monitor.history.retention import STEP_FRACTION, Retention, file_sizes
from monitor.history.schema import MIN_MAX_BYTES
from monitor.history.writing import Backlog, Batching, Writer, insert_rows
from monitor.result import Result

__all__ = ["History"]

log = logging.getLogger("monitor.history")

_AGE_RETENTION_INTERVAL = 30.0


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
        self.batch_bytes = max(8 * 1024, min(4 * 1024 * 1024, int(max_bytes * STEP_FRACTION)))
        self.retention_interval = retention_interval
        self._backlog = Backlog(queue_size)
        retention = Retention(path, max_bytes=self.max_bytes, retention_seconds=self.retention_seconds,
                              interval=retention_interval)
        self._writer = Writer(self._backlog, retention, Batching(batch_rows, self.batch_bytes, flush_interval),
                              on_commit=on_commit, check_integrity=check_integrity)
        self._thread = threading.Thread(target=self._writer.run, name=f"history-writer {os.path.basename(path)}",
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
        history._writer.ready.wait()
        if history._writer.startup_error is not None:
            history._thread.join()
            raise history._writer.startup_error
        return history

    # -- counters

    @property
    def dropped(self) -> int:
        """Results lost: queue overflow, unwritable at the close deadline, a result SQLite refuses."""
        return self._backlog.dropped

    @property
    def written(self) -> int:
        """Rows committed."""
        return self._backlog.written

    @property
    def write_errors(self) -> int:
        """Failed commit attempts (each retried)."""
        return self._backlog.write_errors

    @property
    def pending(self) -> int:
        """Results queued and not yet taken by the writer."""
        return len(self._backlog.items)

    # -- the asyncio side: cheap and never blocking on SQLite

    def submit(self, result: Result, verdict: str | None = None) -> None:
        """Queue a result for writing; returns at once. A full queue drops its oldest result (`dropped`)."""
        if self._backlog.put(result, verdict) >= self.batch_rows:
            self._backlog.wake.set()

    # -- blocking calls: waiting for the writer thread

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed (or dropped); False on timeout. Blocks."""
        backlog = self._backlog
        with backlog.cond:
            target = backlog.seq
            if backlog.closed and not self._thread.is_alive():
                return True
            backlog.wake.set()
            return backlog.cond.wait_for(lambda: backlog.handled >= target or not self._thread.is_alive(), timeout)

    def retain(self, timeout: float | None = None) -> bool:
        """Run age and size retention now (in the writer thread) and wait for it; False on timeout. Blocks."""
        backlog = self._backlog
        with backlog.cond:
            backlog.retain_requested += 1
            target = backlog.retain_requested
        backlog.wake.set()
        with backlog.cond:
            return backlog.cond.wait_for(lambda: backlog.retain_done >= target or not self._thread.is_alive(),
                                         timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the writer thread and wait for it (at most about `timeout` seconds)."""
        backlog = self._backlog
        with backlog.lock:
            if backlog.closed:
                return
            backlog.closed = True
        backlog.stop_deadline = time.monotonic() + timeout
        backlog.stop.set()
        backlog.wake.set()
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

    def query_json(self, since: float | None = None, until: float | None = None, target: str | None = None,
                   check: str | None = None, failed_only: bool = False, limit: int = 1000, offset: int = 0,
                   before_id: int | None = None) -> JsonRows:
        """See the module-level `query_json`."""
        return query_json(self.path, since, until, target, check, failed_only, limit, offset, before_id)

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
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=READ_BUSY_TIMEOUT_MS / 1000)
        try:
            with transaction(conn):
                return insert_rows(conn, batch)
        except sqlite3.Error as exc:
            raise sqlite_problem(self.path, exc) from exc
        finally:
            conn.close()

    def file_bytes(self) -> int:
        """Size of the main file plus its WAL now."""
        return sum(file_sizes(self.path))
