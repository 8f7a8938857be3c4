"""Writing the history: the queue between `History.submit` and the writer thread, and the thread itself.

The writer thread alone owns the writing connection. Each pass it takes a batch (at most `batch_rows` results or
`batch_bytes` of rows), converts it to rows (redaction and JSON here, off the event loop), commits it in one
transaction, then runs one bounded retention step, and waits up to `flush_interval` for more. A failed commit
is retried with backoff; a row SQLite will never take is found by writing one at a time and dropped alone.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monitor.history.db import open_writer, transaction
from monitor.history.retention import SMALL_PAGE_LIMIT, Retention, file_sizes
from monitor.history.schema import COLUMNS, INSERT, UPSERT_LATEST, row_bytes, row_from_result
from monitor.result import Result

__all__ = ["Backlog", "Batching", "Writer", "insert_rows"]

log = logging.getLogger("monitor.history")

_ERROR_LOG_INTERVAL = 60.0

# A submitted result: its sequence number, the Result and the verdict to store with it.
_Pending = tuple[int, Result, str | None]
# A taken result: its submit sequence number and its row (None: it could not be made a row, already counted).
_Item = tuple[int, dict[str, Any] | None]


def insert_rows(conn: sqlite3.Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows inside the caller's transaction, keep `latest` current; returns the last id inserted."""
    try:
        values = [tuple(row[c] for c in COLUMNS) for row in rows]
    except KeyError as exc:
        raise ValueError(f"a history row lacks the column {exc.args[0]!r}") from None
    conn.executemany(INSERT, values)
    last_id = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
    # One writer at a time (BEGIN IMMEDIATE) and AUTOINCREMENT: the ids of this statement are consecutive.
    first_id = last_id - len(rows) + 1
    newest: dict[tuple[str, str, str], tuple[float, int]] = {}
    for offset, row in enumerate(rows):
        key = (row["target"], row["check"], row["via"] or "")
        candidate = (float(row["time"]), first_id + offset)
        if key not in newest or candidate > newest[key]:
            newest[key] = candidate
    conn.executemany(UPSERT_LATEST, [(*key, row_id, t) for key, (t, row_id) in newest.items()])
    return last_id


class Backlog:
    """What `History` and its writer thread share: the bounded queue, sequence numbers, counters, one lock.

    `seq` is the last submitted result; every result up to `handled` is committed or counted in `dropped`.
    `retain_requested` / `retain_done` count `retain()` calls asked for and served. `cond` (on `lock`) is
    notified whenever `handled` or `retain_done` moves; `wake` cuts the writer's wait short; `stop` ends it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.items: deque[_Pending] = deque()
        self.seq = 0
        self.handled = 0
        self.retain_requested = 0
        self.retain_done = 0
        self.closed = False
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.stop_deadline = math.inf

    def put(self, result: Result, verdict: str | None) -> int:
        """Queue a result (a full queue drops its oldest; a closed one drops this); returns the queue's length."""
        with self.lock:
            if self.closed:
                self.dropped += 1
                return 0
            if len(self.items) >= self.size:
                self.items.popleft()
                self.dropped += 1
            self.seq += 1
            self.items.append((self.seq, result, verdict))
            return len(self.items)

    def take(self, want: int) -> list[_Pending]:
        """Up to `want` results from the front, popped in one go (per-item locking would hand the lock and the
        GIL back and forth with a busy submitter)."""
        with self.lock:
            return [self.items.popleft() for _ in range(min(want, len(self.items)))]

    def put_back(self, items: list[_Pending]) -> None:
        """Return taken results to the front; if submits filled the queue meanwhile, the oldest are dropped."""
        with self.lock:
            self.items.extendleft(reversed(items))
            while len(self.items) > self.size:
                self.items.popleft()
                self.dropped += 1

    def abandon(self) -> None:
        """The writer has stopped: whatever is still queued is lost."""
        with self.cond:
            self.dropped += len(self.items)
            self.items.clear()
            self.handled = self.seq
            self.cond.notify_all()

    def settle(self, up_to: int, written: int = 0, dropped: int = 0) -> None:
        """Everything up to sequence number `up_to` is now committed (`written`) or lost (`dropped`)."""
        with self.cond:
            self.written += written
            self.dropped += dropped
            self.handled = up_to
            self.cond.notify_all()


@dataclass(frozen=True)
class Batching:
    """A commit holds at most `rows` results or about `bytes` of rows; one is made at least every `interval`
    seconds while results wait."""

    rows: int
    bytes: int
    interval: float


class Writer:
    """The body of the writer thread of one History: batches, commits, retention, until `stop`."""

    def __init__(self, backlog: Backlog, retention: Retention, batching: Batching, *,
                 on_commit: Callable[[int, int], None] | None, check_integrity: bool) -> None:
        self.path = retention.path
        self.backlog = backlog
        self.retention = retention
        self.batching = batching
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        self._on_commit = on_commit
        self._check_integrity = check_integrity
        self._avg_row_bytes = 2048.0
        self._last_error_log = -math.inf
        self._batch: list[_Item] = []  # taken, not yet committed
        self._failures = 0  # consecutive failed commits (backoff)

    def run(self) -> None:
        """The thread: open the file (reporting a failure through `startup_error`), then loop until stopped."""
        try:
            page_size = 1024 if self.retention.max_bytes < SMALL_PAGE_LIMIT else 4096
            conn = open_writer(self.path, self._check_integrity, self.retention.wal_limit, page_size)
        except BaseException as exc:
            self.startup_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop(conn)
        except BaseException:
            log.exception("history writer for %s stopped by an unexpected error", self.path)
            raise
        finally:
            conn.close()
            self.backlog.abandon()

    def _loop(self, conn: sqlite3.Connection) -> None:
        while True:
            try:
                if self._pass(conn):
                    return
            except Exception:  # a bug must not silently end the journal: log it, pause, go on
                log.exception("history writer for %s failed; continuing", self.path)
                time.sleep(1.0)

    def _pass(self, conn: sqlite3.Connection) -> bool:
        """One pass of the writer: a batch, one retention step, maybe a wait. True when it is time to stop."""
        backlog = self.backlog
        stopping = backlog.stop.is_set()
        backlog.wake.clear()
        if not self._batch:
            self._batch = self._take()
        if self._batch:
            self._batch = self._write(conn, self._batch)
            if self._batch:  # not written: retry later, backing off (and, once closing, until the deadline)
                self._failures += 1
                if stopping and time.monotonic() >= backlog.stop_deadline:
                    self._give_up(self._batch)
                    self._batch = []
                else:
                    time.sleep(0.05 if stopping else min(1.0, 0.05 * 2 ** min(self._failures, 5)))
                return False
            self._failures = 0
        if stopping:
            return not backlog.items
        # Retention: one bounded step per pass, between batches, so writes never wait long behind it.
        busy = False
        try:
            with backlog.lock:
                requested = backlog.retain_requested
            busy = self.retention.step(conn, requested, self._avg_row_bytes)
        except sqlite3.Error as exc:
            self._log_error("history retention on %s failed: %s", exc)
        if not busy and self.retention.serving > backlog.retain_done:
            with backlog.cond:
                backlog.retain_done = self.retention.serving
                backlog.cond.notify_all()
        if not busy and len(backlog.items) < self.batching.rows:
            backlog.wake.wait(self.batching.interval)
        return False

    def _take(self) -> list[_Item]:
        """Up to batch_rows / batch_bytes queued results, converted to rows (outside the lock); what does not fit
        the byte budget goes back to the front of the queue."""
        want = max(1, min(self.batching.rows, int(self.batching.bytes / max(200.0, self._avg_row_bytes)) + 1))
        items = self.backlog.take(want)
        batch: list[_Item] = []
        size = 0
        for index, (seq, result, verdict) in enumerate(items):
            if size >= self.batching.bytes:
                self.backlog.put_back(items[index:])
                break
            try:
                row = row_from_result(result, verdict)
            except Exception:
                log.exception("history: cannot store a result of %s/%s", getattr(result, "target", "?"),
                              getattr(result, "check", "?"))
                with self.backlog.lock:
                    self.backlog.dropped += 1
                batch.append((seq, None))  # kept as a placeholder: flush() waits for its sequence number
                continue
            row_size = row_bytes(row)
            size += row_size
            self._avg_row_bytes = 0.95 * self._avg_row_bytes + 0.05 * row_size
            batch.append((seq, row))
        return batch

    def _write(self, conn: sqlite3.Connection, batch: list[_Item]) -> list[_Item]:
        """Commit the batch; returns what is still to be written (nothing on success, all of it to retry)."""
        try:
            self._commit(conn, batch)
            return []
        except sqlite3.OperationalError as exc:  # locked, busy, disk full, I/O: worth retrying later
            with self.backlog.lock:
                self.backlog.write_errors += 1
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
            wal_before = file_sizes(self.path)[1]
            with transaction(conn):
                last_id = insert_rows(conn, rows)
            self.retention.growth.append(max(0, file_sizes(self.path)[1] - wal_before))
        self.backlog.settle(batch[-1][0], written=len(rows))
        if rows and self._on_commit is not None:
            try:
                self._on_commit(last_id, len(rows))
            except Exception:
                log.exception("history on_commit callback failed")

    def _give_up(self, batch: list[_Item], quiet: bool = False) -> None:
        lost = sum(1 for _, row in batch if row is not None)  # placeholders were counted when taken
        if not quiet:
            log.error("history: could not write %d results to %s before the close deadline", lost, self.path)
        self.backlog.settle(batch[-1][0], dropped=lost)

    def _log_error(self, message: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.warning(message, self.path, exc)
