"""Wires one running monitor: config, metrics registry, runner, scheduler and HTTP endpoints; start/stop/reload."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time

from prometheus_client import CollectorRegistry

from monitor import config as config_module
from monitor import resources
from monitor.authres import LoopCollector
from monitor.background import Selfcheck, follow_calendars
from monitor.changes import ChangeCalendars
from monitor.config import Config, ConfigError, Target
from monitor.config.selfcheck import with_targets
from monitor.discovery import Discovery
from monitor.history import History
from monitor.metrics import Metrics
from monitor.mx import MxCollector
from monitor.ondemand import OnDemand
from monitor.probes import probes_for
from monitor.recorder import Recorder
from monitor.runner import Runner
from monitor.scheduler import Scheduler
from monitor.signin import IDENTITIES
from monitor.verdict import VerdictBoard
from monitor.web.routes import Routes
from monitor.web.server import HttpServer
from monitor.web.webconfig import WebConfig

__all__ = ["App"]

log = logging.getLogger(__name__)

_MIN_SPREAD = 5.0
_SPREAD_PER_CHECK = 0.01
# targets_from files are looked at this often (size and mtime; a changed file is re-read).
_DISCOVERY_RECHECK = 5.0
# How long a thread may hold the GIL while another waits for it. The loop times the probes; the HTTP side's threads
# (history pages, the status page) run Python code that holds the GIL. At CPython's default 5 ms the loop, which
# gives up the GIL at every socket call, waits up to 5 ms each time it wants it back: bench/http_overload.py measured
# lag p99 under 200 /api/history clients at 14x idle with 5 ms, 8x with 1 ms (slow /metrics readers: 8x -> 3.7x).
_SWITCH_INTERVAL = 0.001
# GET /probe: seconds kept between the run's deadline and Prometheus's scrape timeout (--probe.timeout-offset).
DEFAULT_PROBE_OFFSET = 0.5


class App:
    """A monitor instance. `start()` begins probing and serving; `stop()` ends both and waits."""

    def __init__(self, config: Config, listen: str | None = None, registry: CollectorRegistry | None = None,
                 config_path: str | None = None, web: WebConfig | None = None,
                 max_connections: int = resources.DEFAULT_MAX_CONNECTIONS,
                 probe_offset: float = DEFAULT_PROBE_OFFSET) -> None:
        # `config` as loaded; `self.config` adds the targets discovered from `targets_from` files.
        self.static_config = config
        self.discovery = Discovery()
        self._discovery_task: asyncio.Task[None] | None = None
        self._discovery_problems = 0  # problems found in targets_from files so far
        self.config = config
        self.config_path = config_path or config.source
        self.listen = listen or config.listen
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, config.vantage, config.failure_series)
        # Per-MX-host series of MX targets (host: {mx: DOMAIN}); a collector of its own, beside Metrics.
        self.mx_hosts = MxCollector(config.vantage)
        self.registry.register(self.mx_hosts)
        # Round trips' Authentication-Results, hop count and hop delays (monitor/authres.py).
        self.loops = LoopCollector(config.vantage)
        self.registry.register(self.loops)
        self.board = VerdictBoard()
        self.on_demand = OnDemand(config.vantage, config.failure_series)
        self.probe_offset = probe_offset
        IDENTITIES.observer = self.metrics.record_token  # token requests of every identity, by outcome
        self._add_identities(config)
        self.history: History | None = None
        self._selfcheck_task: asyncio.Task[None] | None = None
        self.selfcheck = Selfcheck(lambda: self.config, lambda result: self.recorder.record_selfcheck(result))
        # Every Result goes through the recorder: verdict, metrics, log, history, in that order (monitor/recorder.py).
        self.recorder = Recorder(self.metrics, self.board, self.loops, self.mx_hosts, self.on_demand,
                                 wake_selfcheck=self.selfcheck.wake)
        self.recorder.follow(config)
        self.runner = Runner(config.vantage, self.recorder, probes=probes_for(config))
        self.scheduler: Scheduler | None = None
        self.calendars = ChangeCalendars(config.changes)
        self._changes_task: asyncio.Task[None] | None = None
        self.web = web or WebConfig()
        self.routes = Routes(self)  # the endpoints' handlers (monitor/web/routes.py)
        self.http = HttpServer(self.routes.table(), authorize=self.web.authorized if self.web.users else None,
                               max_connections=max_connections, on_rejected=self.metrics.record_http_rejected)
        self.max_connections = max_connections
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        sys.setswitchinterval(_SWITCH_INTERVAL)
        settings = self.config.history
        if settings is not None:
            self.history = await asyncio.to_thread(History.open, settings.path, settings.retention,
                                                   settings.max_bytes)
            self.recorder.history = self.history
        if self.config.targets_from:
            self.config = self._discovered(self.config, force=True)
            self._add_identities(self.config)
            self.runner.probes = probes_for(self.config)
            self.recorder.follow(self.config)
        self.http.max_connections = _http_cap(self.max_connections, self.config.concurrency)
        self.metrics.record_http_cap(self.http.max_connections)
        host, port = config_module.parse_listen(self.listen)
        await self.http.start(host, port, tls=self.web.tls)
        checks = sum(len(t.checks) for t in self.config.targets)
        # A few checks start within seconds; thousands spread over their interval (10 ms apart on average).
        spread = max(_MIN_SPREAD, checks * _SPREAD_PER_CHECK)
        self.scheduler = Scheduler(self.runner.run, self.config.concurrency, on_skip=self.metrics.record_skip,
                                   on_lag=self.metrics.record_lag, spread=spread)
        # Series first, schedule after: due times count from when the schedule starts, so runs do not come due
        # while thousands of targets' series are still being created (~1 s at 10,000 targets).
        for target in self.config.targets:
            self.metrics.add_target(target)
        for target in self.config.targets:
            self.scheduler.add(target)
        self._selfcheck_task = asyncio.create_task(self.selfcheck.loop(), name="selfcheck")
        if self.config.changes:
            self._follow_calendars()
        self._discovery_task = asyncio.create_task(self._discovery_loop(), name="targets_from")
        self.metrics.record_reload(True, time.time())
        if self._discovery_problems:
            self.metrics.record_reload(False, time.time())  # a targets_from file is bad
        self.started_at = time.time()  # the status page marks it: data before it is from an earlier process
        # Everything built so far (config, metric series) lives as long as the process: keep it out of the
        # collector's full passes, which otherwise stall the loop for ~0.5 s at 5,000 targets (bench/scale.py).
        gc.freeze()
        log.info("mailmon started", extra={"fields": {"vantage": self.config.vantage, "listen": self.listen,
                                                      "targets": len(self.config.targets)}})

    async def stop(self) -> None:
        for task in (self._selfcheck_task, self._changes_task, self._discovery_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.http.stop()
        self.routes.close()
        if self.history is not None:
            await asyncio.to_thread(self.history.close)

    async def reload(self) -> bool:
        """Re-read the config file; on any problem keep running the old one. Returns success."""
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(config_module.load, self.config_path)
                _reloadable(self.config, new, self.config_path)
            except ConfigError as exc:
                self.metrics.record_reload(False, time.time())
                log.error("reload failed, keeping the running configuration", extra={"fields": {"errors": str(exc)}})
                return False
            self.static_config = new
            problems_before = self._discovery_problems
            await self._apply(self._discovered(new, force=True))
            self.metrics.record_reload(True, time.time())
            if self._discovery_problems > problems_before:
                self.metrics.record_reload(False, time.time())  # a targets_from file is bad: say so here too
            log.info("configuration reloaded", extra={"fields": {"targets": len(new.targets)}})
            return True

    def _discovered(self, config: Config, force: bool = False) -> Config:
        """`config` with the targets of its `targets_from` files added (problems are logged; a bad file keeps
        its last good targets)."""
        if not config.targets_from:
            return config
        found, problems = self.discovery.refresh(config, force)
        for problem in problems:
            log.warning("targets_from: %s", problem)
        if problems:
            self._discovery_problems += len(problems)
            self.metrics.record_reload(False, time.time())
        return with_targets(config, found)

    async def _discovery_loop(self) -> None:
        """Re-read changed targets_from files and apply what they add, change or drop."""
        while True:
            await asyncio.sleep(_DISCOVERY_RECHECK)
            if not self.static_config.targets_from:
                continue
            async with self._reload_lock:
                fresh = await asyncio.to_thread(self._discovered, self.static_config)
                if fresh.targets != self.config.targets:
                    await self._apply(fresh)
                    log.info("targets_from changed", extra={"fields": {"targets": len(fresh.targets)}})

    def _follow_calendars(self) -> None:
        self._changes_task = asyncio.create_task(follow_calendars(self.calendars, self.metrics),
                                                 name="change calendars")

    def _add_identities(self, config: Config) -> None:
        """Token series for every OAuth2 identity; identities no longer configured are forgotten (an unchanged one
        keeps its cached token across a reload)."""
        auths = [t.auth for t in config.targets if t.auth is not None]
        IDENTITIES.retain(auths)
        for auth in auths:
            if auth.oauth2 is not None:
                self.metrics.add_identity(auth.username, auth.oauth2.grant)

    async def _apply(self, new: Config) -> None:
        assert self.scheduler is not None
        self._add_identities(new)
        # A new probe table: the round trip's key and its `submit_via` targets come from the configuration.
        self.runner.probes = probes_for(new)
        # From here on, results of checks the new configuration dropped are dropped (runs in flight included).
        self.recorder.follow(new)
        if new.changes != self.config.changes:
            self.calendars = ChangeCalendars(new.changes)
            if self._changes_task is not None:
                self._changes_task.cancel()
            self._follow_calendars()
        old: dict[str, Target] = {t.name: t for t in self.config.targets}
        fresh: dict[str, Target] = {t.name: t for t in new.targets}
        for name, target in old.items():
            if fresh.get(name) != target:  # removed or changed: a changed target restarts its checks
                await self.scheduler.remove(name)
                self.metrics.remove_target(target)
        for name, target in fresh.items():
            if old.get(name) != target:
                self.metrics.add_target(target)
                self.scheduler.add(target)
        self.config = new


def _reloadable(old: Config, new: Config, path: str) -> None:
    """ConfigError when `new` changes what only a restart may change."""
    if new.vantage != old.vantage:
        raise ConfigError([f"{path}: vantage cannot change while running ({old.vantage!r} -> {new.vantage!r}): "
                           "restart instead"])
    if new.failure_series != old.failure_series:
        raise ConfigError([f"{path}: metrics.failure_series cannot change while running "
                           f"({old.failure_series!r} -> {new.failure_series!r}): restart instead"])


def _http_cap(max_connections: int, concurrency: int) -> int:
    """The HTTP connection cap below RLIMIT_NOFILE, keeping the probes' reserve; warns when it had to shrink."""
    limit = resources.nofile_limit()
    cap, lowered = resources.http_connection_cap(max_connections, concurrency, limit)
    if lowered:
        log.warning("descriptor limit too low for the HTTP connection cap: lowered to keep the probes' reserve",
                    extra={"fields": {"nofile": limit, "max_connections": max_connections, "cap": cap,
                                      "probe_reserve": resources.probe_reserve(concurrency)}})
    return cap
