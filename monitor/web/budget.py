"""A time budget for the HTTP side's bulk work (history pages, the status page), so a flood of such requests
cannot take the interpreter from the probes.

The work runs in threads, but encoding a 1,000-row page is Python code that holds the GIL; back to back, such jobs
starve the event loop that times the probes (bench/http_overload.py measured scheduler lag p99 at ~20x its idle
value under 200 clients asking /api/history). A duty cycle bounds the share: after a job that took `t` seconds the
next one may start only `t * (1 - share) / share` later, so bulk work gets at most `share` of wall time however many
clients ask. Excess clients wait their turn (bounded by the HTTP connection cap and the handler deadline) instead
of slowing the probes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["DEFAULT_SHARE", "DutyCycle"]

_T = TypeVar("_T")

# A quarter of wall time: a history page of ~10 ms is followed by ~30 ms for the loop and the probes.
DEFAULT_SHARE = 0.25


class DutyCycle:
    """Runs jobs one at a time, each starting no sooner than its predecessor's duration allows."""

    def __init__(self, share: float = DEFAULT_SHARE, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self.share = share
        self._clock = clock
        self._sleep = sleep
        self._turn = asyncio.Lock()
        self._ready_at = float("-inf")

    async def run(self, job: Callable[[], Awaitable[_T]]) -> _T:
        """Wait for the turn and the rest after the previous job, then run `job`."""
        async with self._turn:
            delay = self._ready_at - self._clock()
            if delay > 0:
                await self._sleep(delay)
            started = self._clock()
            try:
                return await job()
            finally:
                ended = self._clock()
                self._ready_at = ended + (ended - started) * (1.0 - self.share) / self.share
