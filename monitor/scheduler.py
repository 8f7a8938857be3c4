"""Fixed-rate scheduling of every (target, check), with start jitter, a global concurrency bound and overrun skips.

Each (target, check) gets one loop task. Its wake-ups are computed from its first due time, not from
when the last run ended, so runs do not drift. A run that is still going when the next one is due makes
that next one a skip (counted), never a second concurrent run against the same server.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from monitor.config import CheckSettings, Target

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

RunFn = Callable[[Target, CheckSettings], Awaitable[object]]


class Scheduler:
    """Owns the loop tasks; `add`/`remove` change the running set without touching the others."""

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
        self._loops: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._runs: set[asyncio.Task[None]] = set()

    @property
    def keys(self) -> set[tuple[str, str]]:
        return set(self._loops)

    def add(self, target: Target) -> None:
        for check in target.checks:
            key = (target.name, check.key)
            if key not in self._loops:
                self._loops[key] = asyncio.create_task(self._loop(target, check), name=f"schedule {key[0]}/{key[1]}")

    async def remove(self, name: str) -> None:
        """Stop the target's loops (a run in flight finishes on its own and is still recorded)."""
        tasks = [self._loops.pop(key) for key in list(self._loops) if key[0] == name]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel every loop and every run in flight, and wait for them to end."""
        tasks = list(self._loops.values()) + list(self._runs)
        self._loops.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, target: Target, check: CheckSettings) -> None:
        loop = asyncio.get_running_loop()
        # Jitter spreads thousands of checks over the interval instead of firing them all at once.
        window = check.interval if self._spread is None else min(self._spread, check.interval)
        due = loop.time() + random.uniform(0, window)
        running: asyncio.Task[None] | None = None
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            if running is not None and not running.done():
                log.info("skipped %s/%s: the previous run is still going", target.name, check.key)
                _guarded(self._on_skip, target.name, check)
            else:
                running = asyncio.create_task(self._one(target, check, due))
                self._runs.add(running)
                running.add_done_callback(self._runs.discard)
            due += check.interval
            now = loop.time()
            if due < now:
                # The loop itself fell behind (a stalled event loop): skip the missed slots, keep the phase.
                missed = int((now - due) // check.interval) + 1
                due += missed * check.interval

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
