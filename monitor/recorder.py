"""Where every Result goes: the one place that records a run, in one order, for one monitor.

A scheduled run's Result updates, in this order:

1. the verdict board (the target's verdict from its checks' latest results; the history and the log carry it),
2. the metrics: the check's series, what a round trip's sweep found (`Result.late`, `Result.swept`), its
   Authentication-Results and hops (`LoopCollector`), an MX target's per-host outcomes (`Result.mx_hosts`) and
   the target's verdict series,
3. the log (one line per failed run),
4. the history (the SQLite journal's writer thread takes it from there).

A Result of a check that is no longer configured is dropped before step 1: a reload that removed the target (or
the check) while its run was in flight must not bring back a series, a verdict or a history row of it.

`/probe` runs (monitor/ondemand.py) go into their own series (never the scheduler's), the log, and the history
marked `on_demand`; the vantage's selfcheck into its own series, the log when it failed, the history, and every
target's verdict. Those are this module's other two entry points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from monitor.authres import LoopCollector
from monitor.config import Config
from monitor.history import History
from monitor.logs import log_result
from monitor.metrics import Metrics
from monitor.mx import MxCollector
from monitor.ondemand import OnDemand, ProbeRequest
from monitor.result import Result
from monitor.verdict import VerdictBoard

__all__ = ["ON_DEMAND", "Recorder"]

log = logging.getLogger(__name__)

# Verdict recorded in the history for a /probe run: it is not a scheduled run, and its own verdict is in the
# first transcript line (docs/history.md).
ON_DEMAND = "on_demand"


class Recorder:
    """Records the Results of one monitor (see the module docstring for the order). `history` is set once opened."""

    def __init__(self, metrics: Metrics, board: VerdictBoard, loops: LoopCollector, mx_hosts: MxCollector,
                 on_demand: OnDemand, wake_selfcheck: Callable[[], None] = lambda: None) -> None:
        self.metrics = metrics
        self.board = board
        self.loops = loops
        self.mx_hosts = mx_hosts
        self.on_demand = on_demand
        self.history: History | None = None
        self._wake_selfcheck = wake_selfcheck
        # (target, check key) of every configured check: the only results recorded.
        self._configured: frozenset[tuple[str, str]] = frozenset()

    def follow(self, config: Config) -> None:
        """Record only the checks of `config` from now on (load and every reload)."""
        self._configured = frozenset((t.name, c.key) for t in config.targets for c in t.checks)
        self.board.reset({t.name: {c.key for c in t.checks} for t in config.targets},
                         {(t.name, c.key): c.timeout for t in config.targets for c in t.checks})
        self.mx_hosts.only = frozenset(t.name for t in config.targets if t.mx is not None)
        self.loops.forget(t.name for t in config.targets)

    def record(self, result: Result) -> None:
        """A scheduled run's Result: verdict, metrics, log, history; dropped when its check left the config."""
        if (result.target, result.key) not in self._configured:
            log.info("result of a check no longer configured dropped",
                     extra={"fields": {"target": result.target, "check": result.key}})
            return
        verdict = self.board.record(result)
        self.metrics.record(result)
        self.loops.record(result)
        self.mx_hosts.record(result.target, result.mx_hosts)
        self.metrics.set_verdict(result.target, verdict)
        log_result(result)
        if self.history is not None:
            self.history.submit(result, verdict)
        if result.stage == "dns" or result.reason == "local_resources":
            # A name that stopped resolving may be this vantage's resolver: ask the selfcheck now, so the
            # verdict says vantage_fault within seconds rather than blaming the server until its next run.
            self._wake_selfcheck()

    def record_on_demand(self, request: ProbeRequest, result: Result) -> bytes:
        """A `/probe` run: its own series (late and swept counts included), the log, the history marked on demand.
        Returns the answer's body (its series)."""
        verdict, body = self.on_demand.record(request, result, self.board.vantage_healthy)
        log_result(result)
        if self.history is not None:
            how = f"module {request.module}" if request.module else "configured target"
            result.transcript.insert(0, f"on demand: GET /probe ({how}), verdict {verdict}")
            self.history.submit(result, ON_DEMAND)
        return body

    def record_selfcheck(self, result: Result) -> None:
        """The vantage's selfcheck: its series, the log when it failed, the history, and every target's verdict."""
        self.metrics.record_selfcheck(result)
        if not result.ok:
            log_result(result)
        if self.history is not None:
            self.history.submit(result, None if result.ok else "vantage_fault")
        for name, verdict in self.board.set_vantage_health(result.ok).items():
            self.metrics.set_verdict(name, verdict)
