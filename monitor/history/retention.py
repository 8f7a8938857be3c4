"""Keeping the history file bounded, in the writer thread: rows past the retention age, and the oldest rows when
the file nears `max_bytes`, deleted in small steps interleaved with writes; checkpoints that truncate the WAL;
freed pages given back to the filesystem (`auto_vacuum=INCREMENTAL`). docs/history.md has the arithmetic.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections import deque

__all__ = ["SMALL_PAGE_LIMIT", "STEP_FRACTION", "WAL_FRACTION", "Retention", "file_sizes"]

log = logging.getLogger("monitor.history")

# Size retention. The writer predicts the worst size the next commit and checkpoint can reach:
# main + 2 x (WAL + g), g being the largest WAL growth of a recent commit (a checkpoint may extend the main
# file by as many pages as the WAL holds before truncating the WAL). Past HIGH x max_bytes it deletes the
# oldest rows until the live data is under the low mark, then gives the pages back.
_HIGH_WATER = 0.85
_HYSTERESIS = 0.10
_MIN_LOW_WATER = 0.10
STEP_FRACTION = 1 / 32  # a batch's payload, and an incremental-vacuum step
WAL_FRACTION = 1 / 16  # the WAL is checkpointed before it would grow past this
_DELETE_FRACTION = 1 / 8  # of live data deleted per step at most
_GROWTH_MEMORY = 64  # commits over which the largest WAL growth is remembered
# Small limits get small pages: a commit touches a few dozen pages whatever its size (three indexes, interior
# pages, the pointer map), which with 4 KiB pages would be a large part of a 1 MB budget.
SMALL_PAGE_LIMIT = 32 * 1024 * 1024


def file_sizes(path: str) -> tuple[int, int]:
    """Sizes of the main file and of its WAL now (0 for a missing one)."""
    sizes = []
    for name in (path, path + "-wal"):
        try:
            sizes.append(os.stat(name).st_size)
        except FileNotFoundError:
            sizes.append(0)
    return sizes[0], sizes[1]


class Retention:
    """Age and size retention of one file, one bounded step at a time (writer thread only).

    `growth` holds the WAL growth of recent commits (the writer appends after each commit); `serving` is the
    `History.retain()` request the age pass now running serves.
    """

    def __init__(self, path: str, *, max_bytes: int, retention_seconds: float, interval: float) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.retention_seconds = retention_seconds
        self.interval = interval
        self.wal_limit = int(max_bytes * WAL_FRACTION)
        self.growth: deque[int] = deque(maxlen=_GROWTH_MEMORY)
        self.serving = 0
        self._next_age = time.monotonic()  # age retention at start, then periodically
        self._age_active = False
        self._shrinking = False
        self._bytes_per_row = 4096.0

    def step(self, conn: sqlite3.Connection, requested: int, avg_row_bytes: float) -> bool:
        """One bounded step of age and size retention; True while more steps are due now.

        `requested` is the latest `retain()` request: one newer than `serving` starts an age pass at once.
        A SQLite error ends the age pass until the next interval and goes on to the caller.
        """
        if requested > self.serving and not self._age_active:
            self.serving, self._age_active = requested, True
        if not self._age_active and time.monotonic() >= self._next_age:
            self._age_active = True
        try:
            if self._age_active:
                self._age_active = self._age_step(conn, avg_row_bytes)
                if not self._age_active:
                    self._next_age = time.monotonic() + self.interval
            return self._size_step(conn) or self._age_active
        except sqlite3.Error:
            self._age_active = False
            self._next_age = time.monotonic() + self.interval
            raise

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            log.debug("history checkpoint of %s blocked by a reader", self.path)

    def _age_step(self, conn: sqlite3.Connection, avg_row_bytes: float) -> bool:
        """Delete one chunk of rows older than the retention age; True while more may remain."""
        cutoff = time.time() - self.retention_seconds
        chunk = max(1, int(self.max_bytes * STEP_FRACTION / max(200.0, avg_row_bytes)))
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
        growth = max(self.growth, default=48 * page_size)
        main, wal = file_sizes(self.path)
        if wal and wal + growth > self.wal_limit:
            self._checkpoint(conn)
            main, wal = file_sizes(self.path)
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
                  high - 2 * (self.wal_limit + growth) - self.max_bytes * _HYSTERESIS)
        if used > low:
            chunk = math.ceil(min(used - low, self.max_bytes * _DELETE_FRACTION) / max(1.0, self._bytes_per_row))
            deleted = conn.execute("DELETE FROM results WHERE id IN "
                                   "(SELECT id FROM results ORDER BY time, id LIMIT ?)", (chunk,)).rowcount
            self._checkpoint(conn)
            if deleted:
                return True
        if free_pages:
            pages = max(1, int(self.max_bytes * STEP_FRACTION) // page_size)
            conn.execute(f"PRAGMA incremental_vacuum({pages})").fetchall()
            self._checkpoint(conn)
            if int(conn.execute("PRAGMA freelist_count").fetchone()[0]):
                return True
        conn.execute("DELETE FROM latest WHERE id NOT IN (SELECT id FROM results)")
        self._checkpoint(conn)
        self._shrinking = False
        return False
