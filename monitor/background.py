"""A running monitor's loops beside the scheduler: the vantage's selfcheck and the change calendars' series."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from monitor import selfcheck
from monitor.changes import ChangeCalendars
from monitor.config import CheckSettings, Config, SelfcheckRun, Target, TlsSettings
from monitor.metrics import Metrics
from monitor.result import ProbeContext, Result
from monitor.runner import Runner

__all__ = ["SELFCHECK_TARGET", "Selfcheck", "follow_calendars"]

# The pseudo-target name under which the vantage's selfcheck appears in logs and history.
SELFCHECK_TARGET = "_vantage"
_SELFCHECK_DEBOUNCE = 1.0
# Change calendars: files are looked at this often; window edges are met on time whatever this is.
_CHANGES_RECHECK = 30.0
_CHANGES_MIN_WAIT = 0.05


class Selfcheck:
    """The vantage's selfcheck: every `selfcheck.interval`, and soon after `wake()` (a result that may be this
    vantage's fault: a name that stopped resolving, local resources). Each Result goes to `record`."""

    def __init__(self, config: Callable[[], Config], record: Callable[[Result], None]) -> None:
        self._config = config  # the configuration in force (it changes on reload)
        self._record = record
        self._now = asyncio.Event()

    def wake(self) -> None:
        self._now.set()

    async def loop(self) -> None:
        while True:
            await self.run()
            try:
                await asyncio.wait_for(self._now.wait(), self._config().selfcheck.interval)
                await asyncio.sleep(_SELFCHECK_DEBOUNCE)
            except TimeoutError:
                pass
            self._now.clear()

    async def run(self) -> Result:
        """Check this vantage's own health once and record it (every target's verdict follows)."""
        config = self._config()
        settings = config.selfcheck

        async def selfcheck_probe(ctx: ProbeContext, target: Target, check: CheckSettings) -> None:
            await selfcheck.probe(ctx, config, settings)

        check = SelfcheckRun(port=0, tls_mode="none", interval=settings.interval, timeout=settings.timeout)
        target = Target(name=SELFCHECK_TARGET, host="", tls=TlsSettings(), auth=None, checks=(check,))
        result = await Runner(config.vantage, probes={"selfcheck": selfcheck_probe}).execute(target, check)
        self._record(result)
        return result


async def follow_calendars(calendars: ChangeCalendars, metrics: Metrics) -> None:
    """Keep the change-window series true: at every window edge, and every 30 s to notice edited files."""
    while True:
        problems = await asyncio.to_thread(calendars.refresh)
        if problems:
            # The last good copy stays in force, as a failed reload keeps the last good configuration.
            metrics.record_reload(False, time.time())
        now = time.time()
        active = calendars.active(now)
        next_starts = calendars.next_starts(now)
        metrics.record_changes(calendars.changes(), {(w.calendar, w.change) for w in active}, next_starts)
        edges = [w.end for w in active] + list(next_starts.values())
        wait = min([_CHANGES_RECHECK, *(edge - now for edge in edges)])
        await asyncio.sleep(max(_CHANGES_MIN_WAIT, wait))
