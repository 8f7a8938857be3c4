"""Wires one running monitor: config, metrics registry, runner, scheduler and HTTP endpoints; start/stop/reload."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from monitor import config as config_module
from monitor import resources, selfcheck
from monitor.authres import LoopCollector, auth_note
from monitor.changes import ChangeCalendars
from monitor.config import (
    CheckSettings,
    Config,
    ConfigError,
    ImapSettings,
    RoundTripSettings,
    SelfcheckRun,
    Target,
    TlsSettings,
)
from monitor.diagnose import freshness
from monitor.discovery import Discovery
from monitor.explain import Answer, explain
from monitor.history import History
from monitor.logs import log_result
from monitor.metrics import Metrics
from monitor.mx import MxCollector
from monitor.ondemand import OnDemand, ProbeRefused, ProbeRequest, deadline, parse_request
from monitor.probes import Probe, probes_for
from monitor.result import ProbeContext, Result
from monitor.runner import Runner
from monitor.scheduler import Scheduler
from monitor.signin import IDENTITIES
from monitor.verdict import VerdictBoard, describe
from monitor.web.budget import DutyCycle
from monitor.web.page import render as render_page
from monitor.web.server import HttpServer, Request, Response
from monitor.web.webconfig import WebConfig

__all__ = ["App"]

log = logging.getLogger(__name__)

# The pseudo-target name under which the vantage's selfcheck appears in logs and history.
SELFCHECK_TARGET = "_vantage"
_SELFCHECK_DEBOUNCE = 1.0
_MIN_SPREAD = 5.0
_SPREAD_PER_CHECK = 0.01
# Change calendars: files are looked at this often; window edges are met on time whatever this is.
_CHANGES_RECHECK = 30.0
_CHANGES_MIN_WAIT = 0.05
# targets_from files are looked at this often (size and mtime; a changed file is re-read).
_DISCOVERY_RECHECK = 5.0
# Threads for the HTTP side's blocking work (history queries, gzip). Its own pool, not the loop's default one:
# that one also runs the probes' getaddrinfo, which many concurrent /api/history requests would queue behind.
_WEB_THREADS = 2
# How long a thread may hold the GIL while another waits for it. The loop times the probes; the HTTP side's threads
# (history pages, the status page) run Python code that holds the GIL. At CPython's default 5 ms the loop, which
# gives up the GIL at every socket call, waits up to 5 ms each time it wants it back: bench/http_overload.py measured
# lag p99 under 200 /api/history clients at 14x idle with 5 ms, 8x with 1 ms (slow /metrics readers: 8x -> 3.7x).
_SWITCH_INTERVAL = 0.001
# GET /probe: seconds kept between the run's deadline and Prometheus's scrape timeout (--probe.timeout-offset).
DEFAULT_PROBE_OFFSET = 0.5
# Verdict recorded in the history for a /probe run: it is not a scheduled run, and its own verdict is in the
# first transcript line (docs/history.md).
ON_DEMAND = "on_demand"

_T = TypeVar("_T")


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
        self.mx_hosts.only = frozenset(t.name for t in config.targets if t.mx is not None)
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
        self.runner = Runner(config.vantage, sinks=[self._on_result], probes=self._probes(config))
        self.scheduler: Scheduler | None = None
        self._selfcheck_task: asyncio.Task[None] | None = None
        self._selfcheck_now = asyncio.Event()
        self.calendars = ChangeCalendars(config.changes)
        self._changes_task: asyncio.Task[None] | None = None
        self.web = web or WebConfig()
        self.http = HttpServer({
            ("GET", "/metrics"): self._metrics,
            ("GET", "/-/healthy"): self._healthy,
            ("GET", "/-/ready"): self._ready,
            ("POST", "/-/reload"): self._reload,
            ("GET", "/api/status"): self._api_status,
            ("GET", "/api/history"): self._api_history,
            ("GET", "/api/explain"): self._api_explain,
            ("GET", "/probe"): self._probe,
            ("GET", "/"): self._index,
        }, authorize=self.web.authorized if self.web.users else None, max_connections=max_connections,
            on_rejected=self.metrics.record_http_rejected)
        self.max_connections = max_connections
        self._web_pool = ThreadPoolExecutor(_WEB_THREADS, thread_name_prefix="mailmon-web")
        self._bulk = DutyCycle()  # history pages and the status page: a bounded share of the interpreter
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        sys.setswitchinterval(_SWITCH_INTERVAL)
        settings = self.config.history
        if settings is not None:
            self.history = await asyncio.to_thread(History.open, settings.path, settings.retention,
                                                   settings.max_bytes)
        if self.config.targets_from:
            self.config = self._discovered(self.config, force=True)
            self._add_identities(self.config)
            self.runner.probes = self._probes(self.config)
        self._bound_http()
        host, port = config_module.parse_listen(self.listen)
        await self.http.start(host, port, tls=self.web.tls)
        checks = sum(len(t.checks) for t in self.config.targets)
        # A few checks start within seconds; thousands spread over their interval (10 ms apart on average).
        spread = max(_MIN_SPREAD, checks * _SPREAD_PER_CHECK)
        self.scheduler = Scheduler(self.runner.run, self.config.concurrency, on_skip=self.metrics.record_skip,
                                   on_lag=self.metrics.record_lag, spread=spread)
        self._follow(self.config)
        # Series first, schedule after: due times count from when the schedule starts, so runs do not come due
        # while thousands of targets' series are still being created (~1 s at 10,000 targets).
        for target in self.config.targets:
            self.metrics.add_target(target)
        for target in self.config.targets:
            self.scheduler.add(target)
        self._selfcheck_task = asyncio.create_task(self._selfcheck_loop(), name="selfcheck")
        if self.config.changes:
            self._changes_task = asyncio.create_task(self._changes_loop(), name="change calendars")
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

    def _bound_http(self) -> None:
        """Cap HTTP connections below RLIMIT_NOFILE, keeping the probes' reserve; warn when the cap had to shrink."""
        limit = resources.nofile_limit()
        cap, lowered = resources.http_connection_cap(self.max_connections, self.config.concurrency, limit)
        if lowered:
            log.warning("descriptor limit too low for the HTTP connection cap: lowered to keep the probes' reserve",
                        extra={"fields": {"nofile": limit, "max_connections": self.max_connections, "cap": cap,
                                          "probe_reserve": resources.probe_reserve(self.config.concurrency)}})
        self.http.max_connections = cap
        self.metrics.record_http_cap(cap)

    async def stop(self) -> None:
        for task in (self._selfcheck_task, self._changes_task, self._discovery_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.http.stop()
        self._web_pool.shutdown(wait=True, cancel_futures=True)
        if self.history is not None:
            await asyncio.to_thread(self.history.close)

    async def reload(self) -> bool:
        """Re-read the config file; on any problem keep running the old one. Returns success."""
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(config_module.load, self.config_path)
                if new.vantage != self.config.vantage:
                    raise ConfigError([f"{self.config_path}: vantage cannot change while running "
                                       f"({self.config.vantage!r} -> {new.vantage!r}): restart instead"])
                if new.failure_series != self.config.failure_series:
                    raise ConfigError([f"{self.config_path}: metrics.failure_series cannot change while running "
                                       f"({self.config.failure_series!r} -> {new.failure_series!r}): restart "
                                       "instead"])
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

    def _on_result(self, result: Result) -> None:
        """Every check result: verdict first (history and logs carry it), then metrics and the log."""
        verdict = self.board.record(result)
        self.metrics.record(result)
        self.loops.record(result)
        self.metrics.set_verdict(result.target, verdict)
        log_result(result)
        if self.history is not None:
            self.history.submit(result, verdict)
        if result.stage == "dns" or result.reason == "local_resources":
            # A name that stopped resolving may be this vantage's resolver: ask the selfcheck now, so the
            # verdict says vantage_fault within seconds rather than blaming the server until its next run.
            self._selfcheck_now.set()

    def _follow(self, config: Config) -> None:
        """Point the verdict board at the configured targets and their checks' timeouts."""
        self.board.reset({t.name: {c.key for c in t.checks} for t in config.targets},
                         {(t.name, c.key): c.timeout for t in config.targets for c in t.checks})

    async def _selfcheck_loop(self) -> None:
        while True:
            await self.run_selfcheck()
            try:
                await asyncio.wait_for(self._selfcheck_now.wait(), self.config.selfcheck.interval)
                await asyncio.sleep(_SELFCHECK_DEBOUNCE)
            except TimeoutError:
                pass
            self._selfcheck_now.clear()

    async def run_selfcheck(self) -> Result:
        """Check this vantage's own health once and let every target's verdict follow it."""
        settings = self.config.selfcheck
        config = self.config

        async def selfcheck_probe(ctx: ProbeContext, target: Target, check: CheckSettings) -> None:
            await selfcheck.probe(ctx, config, settings)

        check = SelfcheckRun(port=0, tls_mode="none", interval=settings.interval, timeout=settings.timeout)
        target = Target(name=SELFCHECK_TARGET, host="", tls=TlsSettings(), auth=None, checks=(check,))
        result = await Runner(config.vantage, probes={"selfcheck": selfcheck_probe}).execute(target, check)
        self.metrics.record_selfcheck(result)
        if not result.ok:
            log_result(result)
        if self.history is not None:
            self.history.submit(result, None if result.ok else "vantage_fault")
        for name, verdict in self.board.set_vantage_health(result.ok).items():
            self.metrics.set_verdict(name, verdict)
        return result

    async def _changes_loop(self) -> None:
        """Keep the change-window series true: at every window edge, and every 30 s to notice edited files."""
        while True:
            problems = await asyncio.to_thread(self.calendars.refresh)
            if problems:
                # The last good copy stays in force, as a failed reload keeps the last good configuration.
                self.metrics.record_reload(False, time.time())
            now = time.time()
            active = self.calendars.active(now)
            next_starts = self.calendars.next_starts(now)
            self.metrics.record_changes(self.calendars.changes(), {(w.calendar, w.change) for w in active},
                                        next_starts)
            edges = [w.end for w in active] + list(next_starts.values())
            wait = min([_CHANGES_RECHECK, *(edge - now for edge in edges)])
            await asyncio.sleep(max(_CHANGES_MIN_WAIT, wait))

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
        return replace(config, targets=config.targets + tuple(found))

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

    def _probes(self, config: Config) -> dict[str, Probe]:
        return probes_for(config, on_late=self.metrics.record_late, on_swept=self.metrics.record_swept)

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
        self.runner.probes = self._probes(new)
        self._follow(new)
        if new.changes != self.config.changes:
            self.calendars = ChangeCalendars(new.changes)
            if self._changes_task is not None:
                self._changes_task.cancel()
            self._changes_task = asyncio.create_task(self._changes_loop(), name="change calendars")
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
        self.mx_hosts.only = frozenset(t.name for t in new.targets if t.mx is not None)
        self.loops.forget(t.name for t in new.targets)
        self.config = new

    async def _metrics(self, request: Request) -> Response:
        # The series are rendered as they change (monitor/exposition.py). The loop only takes references to the
        # rendered chunks (a few ms at 5,000 targets); joining them (tens of MB) and gzip run in a worker thread:
        # bytes.join and zlib let go of the GIL while they copy and compress, so the probes keep running
        # (issue 14: joining on the loop stalled it for 0.2-0.6 s per scrape at 5,000 targets).
        headers = {"Vary": "Accept-Encoding"}
        compress = accepts_gzip(request.headers.get("accept-encoding", ""))
        if compress:
            # Prometheus asks for gzip: ~10-25x fewer bytes on the wire.
            headers["Content-Encoding"] = "gzip"
        body = await self._off_loop(self.metrics.scrape(compress, tail=self.on_demand.exposition()))
        return Response(body=body, content_type=CONTENT_TYPE_LATEST, headers=headers)

    async def _off_loop(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run HTTP-side blocking work in the web pool: at most _WEB_THREADS at once, the rest wait their turn."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._web_pool, lambda: func(*args, **kwargs))

    async def _probe(self, request: Request) -> Response:
        """`GET /probe`: run one check now and answer with its series (monitor/ondemand.py, docs/scaling.md)."""
        try:
            wanted = parse_request(request.query, self.config)
            timeout = deadline(wanted.check.timeout, request.headers.get("x-prometheus-scrape-timeout-seconds"),
                               self.probe_offset, self.http.handler_timeout - 1.0)
        except ProbeRefused as refused:
            self.on_demand.count(refused.outcome)
            return Response.text(refused.reason + "\n", refused.status)
        if self.scheduler is None:
            return Response.text("starting\n", 503)
        slots = self.scheduler.slots
        if slots.locked():
            # Every slot of the shared bound is taken (or scheduled runs wait for one): answer now rather than
            # queue, so Prometheus sees a clear failure (up 0, status 503) well within its timeout.
            self.on_demand.count("busy")
            return Response(503, f"busy: all {self.config.concurrency} probe slots are in use\n".encode(),
                            headers={"Retry-After": "1"})
        check = replace(wanted.check, timeout=timeout)
        run = ProbeRequest(target=wanted.target, check=check, module=wanted.module)
        runner = self.runner
        if check.name == "roundtrip":
            # Late arrivals and swept messages this run finds count in its own series, not the scheduler's.
            series = self.on_demand.series(run)
            runner = Runner(self.config.vantage, probes=probes_for(self.config, on_late=series.record_late,
                                                                   on_swept=series.record_swept))
        async with slots:
            result = await runner.execute(run.target, check)
        verdict, body = self.on_demand.record(run, result, self.board.vantage_healthy)
        log_result(result)
        if self.history is not None:
            how = f"module {run.module}" if run.module else "configured target"
            result.transcript.insert(0, f"on demand: GET /probe ({how}), verdict {verdict}")
            self.history.submit(result, ON_DEMAND)
        return Response(body=body, content_type=CONTENT_TYPE_LATEST)

    async def _healthy(self, request: Request) -> Response:
        return Response.text("OK\n")

    async def _ready(self, request: Request) -> Response:
        return Response.text("OK\n") if self.scheduler is not None else Response.text("starting\n", 503)

    async def _reload(self, request: Request) -> Response:
        if await self.reload():
            return Response.text("reloaded\n")
        return Response.text("reload failed; the previous configuration stays in force (see the log)\n", 500)

    def status(self) -> dict[str, Any]:
        """The latest result and verdict per target and check, as served at /api/status."""
        now = time.time()
        targets = []
        open_windows = self.calendars.active(now)
        during = (f" During change window {', '.join(f'{w.change} ({w.calendar})' for w in open_windows)}."
                  if open_windows else "")
        for target in self.config.targets:
            results = self.board.results(target.name)
            verdict = self.board.verdict(target.name)
            targets.append({
                "target": target.name,
                "verdict": verdict,
                "summary": (describe(verdict, results, self.config.vantage) + _quota_note(target, results)
                            + auth_note(results) + during),
                "checks": [{**r.as_json(), "age_seconds": round(now - r.started_at, 3), "transcript": r.transcript}
                           for r in results],
            })
        recent = [w for w in self.calendars.windows(now - _RECENT_CHANGES, now) if w.end <= now]
        return {"vantage": self.config.vantage, "generated_at": now,
                "vantage_healthy": self.board.vantage_healthy, "targets": targets,
                "change_windows_open": [w.as_json() for w in open_windows],
                "change_windows_recent": [w.as_json() for w in recent],
                "on_demand": self.on_demand.status()}

    def explain(self, reported: str, target: str | None) -> Answer | str:
        """"A user reports X" answered from this monitor's current results; a str is a bad request's reason."""
        names = [t.name for t in self.config.targets]
        if target is None and len(names) == 1:
            target = names[0]
        if target not in names:
            return f"target must be one of: {', '.join(names)}"
        if not reported.strip():
            return "error must say what the user's client reported (a code such as 0x800CCC13, or its message)"
        return explain(reported[:_MAX_REPORT], str(target), [self.status()], freshness(self.config))

    async def _api_explain(self, request: Request) -> Response:
        """`/api/explain?error=TEXT&target=NAME`: what the client's error means and where the fault is."""
        answer = self.explain(_param(request.query, "error") or "", _param(request.query, "target"))
        if isinstance(answer, str):
            return _json({"error": answer}, 400)
        return _json(answer.as_json())

    async def _api_status(self, request: Request) -> Response:
        return _json(self.status())

    async def _api_history(self, request: Request) -> Response:
        """Probe history: `since`, `until` (Unix time), `target`, `check`, `failed=1`, `limit`, `before_id`."""
        if self.history is None:
            return _json({"error": "no history is configured (config key `history`)"}, 404)
        try:
            params = history_params(request.query)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        history = self.history
        calendars = self.calendars

        def page() -> Response:  # query and encode in the web pool: a 1,000-row page is ~10 ms of CPU to encode
            rows = history.query(**params)
            more = len(rows) == params["limit"]
            windows = []
            if rows:
                times = [float(row["started_at"]) for row in rows]
                # The windows of the page's time span, beside the rows: rows keep the fields `mailmon history
                # --json` prints.
                windows = calendars.windows(min(times), max(times) + 1.0)
            return _json({"rows": rows, "next_before_id": rows[-1]["id"] if rows and more else None,
                          "change_windows": [w.as_json() for w in windows]})

        # One page at a time, and no more than the duty cycle's share of time: encoding holds the GIL the probes need.
        return await self._bulk.run(lambda: self._off_loop(page))

    async def _index(self, request: Request) -> Response:
        status = self.status()
        failures: dict[str, list[dict[str, Any]]] = {}
        runs: dict[str, list[dict[str, Any]]] = {}
        if self.history is not None:
            since = time.time() - 86400
            history = self.history

            def day() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
                # Every recorded run too, so the timeline colours what happened and leaves hours without runs as
                # no data.
                return (history.query(since=since, failed_only=True, limit=5000),
                        history.query(since=since, limit=_PAGE_RUNS))

            failed, recorded = await self._bulk.run(lambda: self._off_loop(day))
            for row in failed:
                failures.setdefault(row["target"], []).append(row)
            for row in recorded:
                runs.setdefault(row["target"], []).append(row)
        windows = [w.as_json() for w in self.calendars.windows(time.time() - 86400, time.time())]
        reported = _param(request.query, "error")
        answer: dict[str, Any] | None = None
        if reported is not None:
            target = _param(request.query, "target")
            result = self.explain(reported, target)
            answer = {"error": result} if isinstance(result, str) else result.as_json()
            answer.update(reported=reported[:_MAX_REPORT], target=target)
        page = render_page(status, failures, runs=runs if self.history is not None else None,
                           monitor_started=getattr(self, "started_at", None), windows=windows, answer=answer)
        return Response(body=page.encode(), content_type="text/html; charset=utf-8")


_MAX_PAGE = 1000
# What a user reported is looked up, echoed and matched: bound it.
_MAX_REPORT = 500
# Change windows that ended this long ago still matter to "a user reports X": faults follow changes.
_RECENT_CHANGES = 3 * 86400.0


def _param(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _quota_note(target: Target, results: list[Result]) -> str:
    """" The INBOX mailbox is 95% full (MESSAGE 95 of 100)." for each checked mailbox above its quota_warning."""
    notes = []
    for result in results:
        check = next((c for c in target.checks if c.key == result.key), None)
        if not isinstance(check, ImapSettings | RoundTripSettings) or not result.quota:
            continue
        name, (usage, limit) = max(result.quota.items(), key=lambda item: item[1][0] / item[1][1])
        if usage / limit >= check.quota_warning:
            unit = " KiB" if name == "STORAGE" else ""
            notes.append(f" The {check.mailbox} mailbox is {100 * usage / limit:.0f}% full ({name} {usage}{unit} of "
                         f"{limit}{unit}): new mail may be refused.")
    return "".join(notes)


# Runs the status page's timeline reads (newest first): a day of 60 s checks is 1,440 runs per check.
_PAGE_RUNS = 50000


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip` or `*`, with a q-value above 0)."""
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def history_params(query: dict[str, list[str]]) -> dict[str, Any]:
    """Validated /api/history query parameters; ValueError names the bad one."""

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    params: dict[str, Any] = {"target": one("target"), "check": one("check"),
                              "failed_only": one("failed") in ("1", "true", "yes")}
    for name in ("since", "until"):
        value = one(name)
        try:
            params[name] = float(value) if value is not None else None
        except ValueError:
            raise ValueError(f"{name} must be a Unix time in seconds") from None
    for name, default in (("limit", 100), ("before_id", None)):
        value = one(name)
        if value is not None and not value.isdigit():
            raise ValueError(f"{name} must be a non-negative integer")
        params[name] = int(value) if value is not None else default
    params["limit"] = max(1, min(_MAX_PAGE, params["limit"]))
    return params


def _json(document: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(document).encode(), content_type="application/json")
