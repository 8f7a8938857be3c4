"""The HTTP endpoints of a running monitor: /metrics, /, /api/status, /api/history, /api/explain, /-/healthy,
/-/ready, /-/reload and /probe. `App` (monitor/app.py) wires them into its `HttpServer`; they read the monitor's
state at request time and never change it, but for /-/reload (App.reload) and /probe (a run, recorded by the
monitor's recorder into its own series).

Blocking work (history queries, joining and gzipping a scrape, encoding big documents) runs in the web pool, a
small thread pool of its own; bulk work (history pages, the status page, the status document) also waits its turn
in a duty cycle (monitor/web/budget.py), so HTTP clients cannot take the interpreter from the probes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST

from monitor.changes import ChangeCalendars
from monitor.history import History
from monitor.ondemand import ProbeRefused, ProbeRequest, deadline, parse_request
from monitor.web.budget import DutyCycle
from monitor.web.page import render as render_page
from monitor.web.server import Handler, Request, Response
from monitor.web.status import MAX_REPORT, StatusSource, build, encode, explain_report, snapshot

if TYPE_CHECKING:
    from monitor.app import App

__all__ = ["Routes", "accepts_gzip", "history_params"]

_T = TypeVar("_T")

# Threads for the HTTP side's blocking work (history queries, gzip). Its own pool, not the loop's default one:
# that one also runs the probes' getaddrinfo, which many concurrent /api/history requests would queue behind.
_WEB_THREADS = 2
_MAX_PAGE = 1000
# Runs the status page's timeline reads (newest first): a day of 60 s checks is 1,440 runs per check.
_PAGE_RUNS = 50000


class Routes:
    """The handlers of one monitor's endpoints, and the web pool and duty cycle their blocking work runs in."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._web_pool = ThreadPoolExecutor(_WEB_THREADS, thread_name_prefix="mailmon-web")
        self._bulk = DutyCycle()  # history pages and the status page: a bounded share of the interpreter

    def table(self) -> dict[tuple[str, str], Handler]:
        """(method, path) -> handler, for `HttpServer`."""
        return {
            ("GET", "/metrics"): self.metrics,
            ("GET", "/-/healthy"): self.healthy,
            ("GET", "/-/ready"): self.ready,
            ("POST", "/-/reload"): self.reload,
            ("GET", "/api/status"): self.api_status,
            ("GET", "/api/history"): self.api_history,
            ("GET", "/api/explain"): self.api_explain,
            ("GET", "/probe"): self.probe,
            ("GET", "/"): self.index,
        }

    def close(self) -> None:
        """End the web pool (after the HTTP server stopped)."""
        self._web_pool.shutdown(wait=True, cancel_futures=True)

    def source(self) -> StatusSource:
        app = self.app
        return StatusSource(app.config, app.board, app.calendars, app.on_demand)

    async def _off_loop(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run HTTP-side blocking work in the web pool: at most _WEB_THREADS at once, the rest wait their turn."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._web_pool, lambda: func(*args, **kwargs))

    async def metrics(self, request: Request) -> Response:
        # The series are rendered as they change (monitor/exposition.py). The loop only takes references to the
        # rendered chunks (a few ms at 5,000 targets); joining them (tens of MB) and gzip run in a worker thread:
        # bytes.join and zlib let go of the GIL while they copy and compress, so the probes keep running
        # (issue 14: joining on the loop stalled it for 0.2-0.6 s per scrape at 5,000 targets).
        headers = {"Vary": "Accept-Encoding"}
        compress = accepts_gzip(request.headers.get("accept-encoding", ""))
        if compress:
            # Prometheus asks for gzip: ~10-25x fewer bytes on the wire.
            headers["Content-Encoding"] = "gzip"
        tail = self.app.on_demand.exposition()
        # Nothing changed since the last scrape (a burst of scrapers): its body, without a worker thread's round trip.
        body = self.app.metrics.last_body(compress, tail)
        if body is None:
            body = await self._off_loop(self.app.metrics.scrape(compress, tail=tail))
        return Response(body=body, content_type=CONTENT_TYPE_LATEST, headers=headers)

    async def probe(self, request: Request) -> Response:
        """`GET /probe`: run one check now and answer with its series (monitor/ondemand.py, docs/scaling.md)."""
        app = self.app
        try:
            wanted = parse_request(request.query, app.config)
            timeout = deadline(wanted.check.timeout, request.headers.get("x-prometheus-scrape-timeout-seconds"),
                               app.probe_offset, app.http.handler_timeout - 1.0)
        except ProbeRefused as refused:
            app.on_demand.count(refused.outcome)
            return Response.text(refused.reason + "\n", refused.status)
        if app.scheduler is None:
            return Response.text("starting\n", 503)
        slots = app.scheduler.slots
        if slots.locked():
            # Every slot of the shared bound is taken (or scheduled runs wait for one): answer now rather than
            # queue, so Prometheus sees a clear failure (up 0, status 503) well within its timeout.
            app.on_demand.count("busy")
            return Response(503, f"busy: all {app.config.concurrency} probe slots are in use\n".encode(),
                            headers={"Retry-After": "1"})
        check = replace(wanted.check, timeout=timeout)
        run = ProbeRequest(target=wanted.target, check=check, module=wanted.module)
        async with slots:
            # execute, not run: the result goes into the /probe series (late and swept counts of a round trip
            # too, as they travel on the Result), never the scheduler's.
            result = await app.runner.execute(run.target, check)
        body = app.recorder.record_on_demand(run, result)
        return Response(body=body, content_type=CONTENT_TYPE_LATEST)

    async def healthy(self, request: Request) -> Response:
        return Response.text("OK\n")

    async def ready(self, request: Request) -> Response:
        return Response.text("OK\n") if self.app.scheduler is not None else Response.text("starting\n", 503)

    async def reload(self, request: Request) -> Response:
        if await self.app.reload():
            return Response.text("reloaded\n")
        return Response.text("reload failed; the previous configuration stays in force (see the log)\n", 500)

    async def api_explain(self, request: Request) -> Response:
        """`/api/explain?error=TEXT&target=NAME`: what the client's error means and where the fault is."""
        answer = explain_report(self.source(), _param(request.query, "error") or "", _param(request.query, "target"))
        if isinstance(answer, str):
            return _json({"error": answer}, 400)
        return _json(answer.as_json())

    async def api_status(self, request: Request) -> Response:
        # References on the loop (a few ms); the document (~27 MB at 5,000 targets, ~0.5 s of CPU) is built and
        # encoded in the web pool, one target at a time, within the bulk duty cycle (monitor/web/status.py).
        taken = snapshot(self.source())
        body = await self._bulk.run(lambda: self._off_loop(encode, taken))
        return Response(body=body, content_type="application/json")

    async def api_history(self, request: Request) -> Response:
        """Probe history: `since`, `until` (Unix time), `target`, `check`, `failed=1`, `limit`, `before_id`."""
        history = self.app.history
        if history is None:
            return _json({"error": "no history is configured (config key `history`)"}, 404)
        try:
            params = history_params(request.query)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        calendars = self.app.calendars
        # In the web pool, one page at a time, and no more than the duty cycle's share of time: what of a page is
        # Python (its start times, the change windows) holds the GIL the probes need.
        return await self._bulk.run(lambda: self._off_loop(_history_page, history, calendars, params))

    async def index(self, request: Request) -> Response:
        source = self.source()
        taken = snapshot(source)
        history = self.app.history
        failures: dict[str, list[dict[str, Any]]] = {}
        runs: dict[str, list[dict[str, Any]]] = {}
        if history is not None:
            since = time.time() - 86400

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
        windows = [w.as_json() for w in source.calendars.windows(time.time() - 86400, time.time())]
        reported = _param(request.query, "error")
        answer: dict[str, Any] | None = None
        if reported is not None:
            target = _param(request.query, "target")
            result = explain_report(source, reported, target)
            answer = {"error": result} if isinstance(result, str) else result.as_json()
            answer.update(reported=reported[:MAX_REPORT], target=target)
        started = getattr(self.app, "started_at", None)

        def page() -> bytes:  # the status document and the page from it: in the web pool, as /api/status
            return render_page(build(taken), failures, runs=runs if history is not None else None,
                               monitor_started=started, windows=windows, answer=answer).encode()

        return Response(body=await self._bulk.run(lambda: self._off_loop(page)),
                        content_type="text/html; charset=utf-8")


def _history_page(history: History, calendars: ChangeCalendars, params: dict[str, Any]) -> Response:
    """One /api/history page: the rows, the next page's `before_id`, and the change windows of its time span."""
    # The rows as JSON built by SQLite (monitor/history/reading.py query_json): a 1,000-row page holds the GIL
    # for a few ms instead of ~30 ms of decoding and re-encoding, time the event loop would wait for it.
    page = history.query_json(**params)
    windows = []
    if page.earliest is not None and page.latest is not None:
        # Beside the rows, not in them: rows keep the fields `mailmon history --json` prints.
        windows = calendars.windows(page.earliest, page.latest + 1.0)
    more = page.count == params["limit"]
    tail = {"next_before_id": page.last_id if more else None, "change_windows": [w.as_json() for w in windows]}
    return Response(body=b'{"rows": ' + page.body + b", " + json.dumps(tail).encode()[1:],
                    content_type="application/json")


def _param(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


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


def _json(document: Any, code: int = 200) -> Response:
    # Small documents only (errors, explain's answer): history pages and the status document have their own paths.
    return Response(status=code, body=json.dumps(document).encode(), content_type="application/json")
