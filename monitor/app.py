"""Wires one running monitor: config, metrics registry, runner, scheduler and HTTP endpoints; start/stop/reload."""

from __future__ import annotations

import asyncio
import html
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor import config as config_module
from monitor.config import Config, ConfigError, Target
from monitor.logs import log_result
from monitor.metrics import Metrics
from monitor.probes import Probe, probes_for
from monitor.runner import Runner
from monitor.scheduler import Scheduler
from monitor.web.server import HttpServer, Request, Response

__all__ = ["App"]

log = logging.getLogger(__name__)

_MIN_SPREAD = 5.0
_SPREAD_PER_CHECK = 0.01


class App:
    """A monitor instance. `start()` begins probing and serving; `stop()` ends both and waits."""

    def __init__(self, config: Config, listen: str | None = None, registry: CollectorRegistry | None = None,
                 config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path or config.source
        self.listen = listen or config.listen
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, config.vantage)
        self.runner = Runner(config.vantage, sinks=[self.metrics.record, log_result], probes=self._probes(config))
        self.scheduler: Scheduler | None = None
        self.http = HttpServer({
            ("GET", "/metrics"): self._metrics,
            ("GET", "/-/healthy"): self._healthy,
            ("GET", "/-/ready"): self._ready,
            ("POST", "/-/reload"): self._reload,
            ("GET", "/"): self._index,
        })
        self.stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        host, port = config_module.parse_listen(self.listen)
        await self.http.start(host, port)
        checks = sum(len(t.checks) for t in self.config.targets)
        # A few checks start within seconds; thousands spread over their interval (10 ms apart on average).
        spread = max(_MIN_SPREAD, checks * _SPREAD_PER_CHECK)
        self.scheduler = Scheduler(self.runner.run, self.config.concurrency, on_skip=self.metrics.record_skip,
                                   on_lag=self.metrics.record_lag, spread=spread)
        for target in self.config.targets:
            self.metrics.add_target(target)
            self.scheduler.add(target)
        self.metrics.record_reload(True, time.time())
        log.info("mailmon started", extra={"fields": {"vantage": self.config.vantage, "listen": self.listen,
                                                      "targets": len(self.config.targets)}})

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.http.stop()
        self.stopped.set()

    async def reload(self) -> bool:
        """Re-read the config file; on any problem keep running the old one. Returns success."""
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(config_module.load, self.config_path)
                if new.vantage != self.config.vantage:
                    raise ConfigError([f"{self.config_path}: vantage cannot change while running "
                                       f"({self.config.vantage!r} -> {new.vantage!r}): restart instead"])
            except ConfigError as exc:
                self.metrics.record_reload(False, time.time())
                log.error("reload failed, keeping the running configuration", extra={"fields": {"errors": str(exc)}})
                return False
            await self._apply(new)
            self.metrics.record_reload(True, time.time())
            log.info("configuration reloaded", extra={"fields": {"targets": len(new.targets)}})
            return True

    def _probes(self, config: Config) -> dict[str, Probe]:
        return probes_for(config, on_late=self.metrics.record_late, on_swept=self.metrics.record_swept)

    async def _apply(self, new: Config) -> None:
        assert self.scheduler is not None
        self.runner.probes = self._probes(new)
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

    async def _metrics(self, request: Request) -> Response:
        # Rendering a big registry is CPU work; a thread keeps probes on the loop running meanwhile.
        body = await asyncio.to_thread(generate_latest, self.registry)
        return Response(body=body, content_type=CONTENT_TYPE_LATEST)

    async def _healthy(self, request: Request) -> Response:
        return Response.text("OK\n")

    async def _ready(self, request: Request) -> Response:
        return Response.text("OK\n") if self.scheduler is not None else Response.text("starting\n", 503)

    async def _reload(self, request: Request) -> Response:
        if await self.reload():
            return Response.text("reloaded\n")
        return Response.text("reload failed; the previous configuration stays in force (see the log)\n", 500)

    async def _index(self, request: Request) -> Response:
        rows = "".join(f"<li>{html.escape(t.name)} ({html.escape(t.host)}): {', '.join(c.name for c in t.checks)}</li>"
                       for t in self.config.targets)
        page = (f"<!doctype html><html><head><title>mailmon</title></head><body><h1>mailmon — vantage "
                f"{html.escape(self.config.vantage)}</h1><ul>{rows}</ul><p><a href=\"/metrics\">metrics</a></p>"
                "</body></html>")
        return Response(body=page.encode(), content_type="text/html; charset=utf-8")
