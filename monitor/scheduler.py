"""Fixed-rate scheduling of every (target, check), with start jitter, a global concurrency bound and overrun skips.

Every (target, check) has a due time in one heap, and one loop timer is armed for the earliest. Due times
advance from the first one, not from when the last run ended, so runs do not drift. A run that is still going
when the next one is due makes that next one a skip (counted), never a second concurrent run against the same
server.

Why one timer and not a sleeping task per check: 15,000 checks kept 15,000 tasks asleep, and every wake-up left
a new future, timer handle, context and coroutine frame behind that lived one interval. Those ~150,000
long-lived objects made each full garbage collection stall the loop ~250 ms at 5,000 targets (bench/scale.py).
The heap holds plain tuples the collector does not track.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from monitor.config import CheckSettings, Target

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

RunFn = Callable[[Target, CheckSettings], Awaitable[object]]


@dataclass(eq=False)
class _Entry:
    """One scheduled (target, check): what to run and its run in flight, if any."""

    target: Target
    check: CheckSettings
    serial: int  # names this entry in heap items: a check removed and added again gets a new one
    running: asyncio.Task[None] | None = field(default=None)


class Scheduler:
    """Owns the schedule; `add`/`remove` change the running set without touching the others."""

    def __init__(self, run: RunFn, concurrency: int, *,
                 on_skip: Callable[[str, CheckSettings], None] = lambda t, c: None,
                 on_lag: Callable[[float], None] = lambda s: None, spread: float | None = None) -> None:
        self._run = run
        self._slots = asyncio.Semaphore(concurrency)
        self._on_skip = on_skip
        self._on_lag = on_lag
        # First runs are spread at random over `spread` seconds (capped at each check's interval);
        # None spreads over the whole interval, 0 starts everything at once.
        self._spread = spread
        self._entries: dict[tuple[str, str], _Entry] = {}
        # (due, tie-breaker, key, entry serial): a removed or re-added check leaves stale items, skipped on pop.
        self._heap: list[tuple[float, int, tuple[str, str], int]] = []
        self._order = itertools.count()
        self._serials = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # kept here: uvloop's timer handles have no when()
        self._runs: set[asyncio.Task[None]] = set()

    @property
    def slots(self) -> asyncio.Semaphore:
        """The concurrency bound; on-demand runs (GET /probe) take their slot from it too."""
        return self._slots

    @property
    def keys(self) -> set[tuple[str, str]]:
        return set(self._entries)

    def add(self, target: Target) -> None:
        loop = asyncio.get_running_loop()
        for check in target.checks:
            key = (target.name, check.key)
            if key in self._entries:
                continue
            entry = self._entries[key] = _Entry(target, check, next(self._serials))
            # Jitter spreads thousands of checks over the interval instead of firing them all at once.
            window = check.interval if self._spread is None else min(self._spread, check.interval)
            self._push(loop.time() + random.uniform(0, window), key, entry)
        self._arm(loop)

    async def remove(self, name: str) -> None:
        """Stop scheduling the target's checks (a run in flight finishes on its own; the recorder drops its Result
        when the check is no longer configured, monitor/recorder.py)."""
        for key in [key for key in self._entries if key[0] == name]:
            del self._entries[key]

    async def stop(self) -> None:
        """Stop scheduling, cancel every run in flight, and wait for them to end."""
        self._entries.clear()
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self._runs)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _push(self, due: float, key: tuple[str, str], entry: _Entry) -> None:
        heapq.heappush(self._heap, (due, next(self._order), key, entry.serial))

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have the timer fire at the earliest due time (re-armed only when that moved earlier or it fired)."""
        if not self._heap:
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(due, self._fire, loop), due

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        try:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                due, _, key, serial = heapq.heappop(self._heap)
                entry = self._entries.get(key)
                if entry is None or entry.serial != serial:
                    continue  # removed (or removed and added again: the new entry has its own item)
                self._start(entry, due)
                following = due + entry.check.interval
                if following < now:
                    # The loop itself fell behind (a stalled event loop): skip the missed slots, keep the phase.
                    following += (int((now - following) // entry.check.interval) + 1) * entry.check.interval
                self._push(following, key, entry)
        except Exception:
            log.exception("scheduler timer failed")  # never let one bad entry end all scheduling
        finally:
            self._arm(loop)

    def _start(self, entry: _Entry, due: float) -> None:
        if entry.running is not None and not entry.running.done():
            log.info("skipped %s/%s: the previous run is still going", entry.target.name, entry.check.key)
            _guarded(self._on_skip, entry.target.name, entry.check)
            return
        running = entry.running = asyncio.create_task(self._one(entry.target, entry.check, due))
        self._runs.add(running)
        running.add_done_callback(self._runs.discard)

    async def _one(self, target: Target, check: CheckSettings, due: float) -> None:
        async with self._slots:
            _guarded(self._on_lag, max(0.0, asyncio.get_running_loop().time() - due))
            try:
                await self._run(target, check)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("run of %s/%s failed", target.name, check.key)


def _guarded(callback: Callable[..., None], *args: object) -> None:
    """Call a reporting hook; its failure is logged, never allowed to end a schedule loop."""
    try:
        callback(*args)
    except Exception:
        log.exception("scheduler hook %r failed", callback)
