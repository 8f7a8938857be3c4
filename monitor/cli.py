"""Command line: `mailmon run | check | diagnose | history | validate | auth login`.

Exit codes: 0 fine; 2 configuration error (every command). `auth login`: 0 the refresh token is stored, 2 it is not
(configuration, declined or expired sign-in), 130 interrupted (Ctrl-C) before it was.
`check` follows Nagios: 2 CRITICAL (a check failed), 3 UNKNOWN (nothing to check, or the monitor itself failed).
`diagnose`: 1 the fault is on this side, 2 on the server side, 3 cannot tell, 4 the login is refused here and at the
monitor (credentials, not an outage; see monitor/diagnose.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from monitor import __version__, eventloop
from monitor import config as config_module
from monitor.config import Config, ConfigError
from monitor.errors import MailmonError
from monitor.logs import setup_logging
from monitor.result import Result

if TYPE_CHECKING:
    from monitor.web.webconfig import WebConfig

__all__ = ["main"]

EXIT_OK = 0
EXIT_CRITICAL = 2
EXIT_CONFIG = 2
EXIT_UNKNOWN = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailmon", description="Synthetic SMTP/IMAP/POP3 monitor.")
    parser.add_argument("--version", action="version", version=f"mailmon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, metavar="FILE", help="configuration file (YAML)")
        p.add_argument("--log.level", dest="log_level", default="info",
                       choices=["debug", "info", "warning", "error"], help="log level (default info)")
        p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"],
                       help="log line format on stderr (default logfmt)")

    def loop_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--event-loop", dest="event_loop", default="auto", choices=eventloop.CHOICES,
                       help="auto (default): uvloop when installed (pip install mailmon[uvloop]), else asyncio's")

    run = sub.add_parser("run", help="probe on a schedule and serve /metrics")
    common(run)
    run.add_argument("--listen", metavar="HOST:PORT", help="HTTP address, overrides `listen` in the config")
    loop_option(run)
    run.add_argument("--web.max-connections", dest="max_connections", type=_positive, default=None, metavar="N",
                     help="at most this many HTTP connections at once, the rest closed at once (default 32; lowered "
                          "to keep descriptors for the probes under RLIMIT_NOFILE)")
    run.add_argument("--web.config.file", dest="web_config", metavar="FILE",
                     help="TLS and basic auth for the HTTP endpoints (Prometheus exporter-toolkit format)")
    run.add_argument("--probe.timeout-offset", dest="probe_offset", type=_seconds, default=None, metavar="SECONDS",
                     help="GET /probe ends its check this long before Prometheus's scrape timeout (default 0.5)")

    check = sub.add_parser("check", help="run every check once and report (Nagios exit codes)")
    common(check)
    check.add_argument("--target", metavar="NAME", help="only this target")
    check.add_argument("--check", metavar="NAME", help="only this check: smtp, imap, pop3, roundtrip "
                                                        "(or roundtrip:imap, roundtrip:pop3)")
    check.add_argument("--json", action="store_true", help="one JSON object per result per line")
    loop_option(check)

    diagnose = sub.add_parser("diagnose", help="is it me or the server? run every check here and ask the monitor")
    common(diagnose)
    diagnose.add_argument("--monitor", metavar="URL", action="append",
                          help="the monitor to ask (default: http://<listen> from the config); repeat it to ask the "
                               "monitors of several vantages")
    diagnose.add_argument("--target", metavar="NAME", help="only this target")
    diagnose.add_argument("--client-error", metavar="TEXT", dest="client_error",
                          help="what a user's mail client reported (a code such as 0x800CCC13, or its message): "
                               "compare it with the monitors' results at the same protocol and step, run nothing here")

    history = sub.add_parser("history", help="show the probe history journal")
    common(history)
    history.add_argument("--since", metavar="TIME", help="from: 1h (ago), 2026-11-28T10:00 (UTC) or Unix seconds")
    history.add_argument("--until", metavar="TIME", help="until (same forms as --since)")
    history.add_argument("--target", metavar="NAME", help="only this target")
    history.add_argument("--check", metavar="NAME",
                         help="only this check (smtp, imap, pop3, roundtrip, smtp:<profile>)")
    history.add_argument("--failed", action="store_true", help="only failed runs")
    history.add_argument("--limit", type=int, default=1000, help="at most this many rows, newest first (1000)")
    form = history.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_const", dest="format", const="json", help="one JSON object per line")
    form.add_argument("--csv", action="store_const", dest="format", const="csv", help="CSV with a header row")

    validate = sub.add_parser("validate", help="check the configuration file and exit")
    common(validate)

    auth = sub.add_parser("auth", help="OAuth2 sign-in for targets with auth.oauth2")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    login = auth_sub.add_parser("login", help="device-code sign-in (RFC 8628): store the first refresh token of a "
                                              "target with oauth2 grant refresh_token")
    common(login)
    login.add_argument("--target", metavar="NAME", required=True, help="the target to sign in for")
    loop_option(login)
    return parser


def _report(what: str, error: ConfigError) -> None:
    """Every problem of a file, one per line, under one heading; no traceback."""
    count = len(error.problems)
    print(f"mailmon: {what} is not valid ({count} problem{'s' if count != 1 else ''}):", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def _load(path: str) -> Config | None:
    try:
        return config_module.load(path)
    except ConfigError as exc:
        _report("configuration", exc)
        return None


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 3600:
        raise argparse.ArgumentTypeError(f"must be from 0 to 3600 seconds: {text!r}")
    return value


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse reports anything else and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    config = _load(args.config)
    if config is None:
        if args.command == "check":
            # A plugin that cannot run its check says UNKNOWN (3), per the monitoring-plugins guidelines: a typo
            # in the config must not page as a CRITICAL server outage. `validate` and `run` keep exit 2.
            print(f"MAILMON UNKNOWN - configuration error in {args.config} (details on stderr)")
            return EXIT_UNKNOWN
        return EXIT_CONFIG
    if args.command in ("validate", "check"):
        from monitor.advice import config_warnings

        for warning in config_warnings(config):
            print(f"{args.config}: warning: {warning}", file=sys.stderr)
    if args.command == "validate":
        checks = sum(len(t.checks) for t in config.targets)
        print(f"{args.config}: OK ({len(config.targets)} targets, {checks} checks, vantage {config.vantage})")
        return EXIT_OK
    if args.command == "run":
        if args.listen is not None:
            try:
                config_module.parse_listen(args.listen)
            except ValueError as exc:
                print(f"mailmon: --listen: {exc}", file=sys.stderr)
                return EXIT_CONFIG
        web = None
        if args.web_config is not None:
            from monitor.web.webconfig import load_web_config

            try:
                web = load_web_config(args.web_config)
            except ConfigError as exc:
                _report("web config", exc)
                return EXIT_CONFIG
        return _on_loop(_run(config, args.listen, args.config, web, args.max_connections, args.probe_offset),
                        args.event_loop)
    if args.command == "history":
        from monitor.history_cli import show_history

        return show_history(config, args.since, args.until, args.target, args.check, args.failed, max(1, args.limit),
                            args.format or "table")
    if args.command == "auth":
        try:
            return _on_loop(_auth_login(config, args.target), args.event_loop)
        except KeyboardInterrupt:
            # The administrator gave up waiting: say so plainly, no traceback; nothing was written.
            print("\nmailmon: sign-in interrupted: nothing was stored", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.command == "diagnose":
        from monitor.diagnose import diagnose, diagnose_client_error

        if args.client_error is not None:
            return diagnose_client_error(config, args.monitor, args.target, args.client_error, sys.stdout)
        return asyncio.run(diagnose(config, args.monitor[-1] if args.monitor else None, args.target, sys.stdout))
    return _on_loop(_check(config, args.target, args.check, args.json), args.event_loop)


def _on_loop(main: Coroutine[Any, Any, int], choice: str) -> int:
    """Run a command's coroutine on the chosen event loop (monitor/eventloop.py)."""
    try:
        return eventloop.run(main, choice)
    except eventloop.EventLoopError as exc:
        print(f"mailmon: {exc}", file=sys.stderr)
        return EXIT_CONFIG


async def _auth_login(config: Config, name: str) -> int:
    """`mailmon auth login`: the device-code sign-in for one target's refresh-token identity."""
    from monitor.signin.device import DeviceLoginError, login

    target = next((t for t in config.targets if t.name == name), None)
    if target is None:
        print(f"mailmon: no target {name!r} in the configuration", file=sys.stderr)
        return EXIT_CONFIG
    if target.auth is None or target.auth.oauth2 is None or target.auth.oauth2.grant != "refresh_token":
        print(f"mailmon: target {name!r} does not sign in with auth.oauth2 grant refresh_token, which is what "
              "`mailmon auth login` is for", file=sys.stderr)
        return EXIT_CONFIG
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # httpx logs every poll at info ("POST .../token 400 Bad Request" while the user has not signed in yet):
        # noise that reads like an error next to the prompt. --log.level debug shows it.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        stored = await login(target.auth.oauth2, target.auth.username, sys.stdout)
    except DeviceLoginError as exc:
        print(f"mailmon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"Signed in. The refresh token is stored in {stored} (mode 0600); a running monitor reads it at its "
          "next token request.")
    return EXIT_OK


async def _run(config: Config, listen: str | None, path: str, web: WebConfig | None,
               max_connections: int | None = None, probe_offset: float | None = None) -> int:
    from monitor import resources
    from monitor.app import DEFAULT_PROBE_OFFSET, App

    app = App(config, listen=listen, config_path=path, web=web,
              max_connections=max_connections or resources.DEFAULT_MAX_CONNECTIONS,
              probe_offset=DEFAULT_PROBE_OFFSET if probe_offset is None else probe_offset)
    try:
        await app.start()
    except MailmonError as exc:  # the history file cannot be used
        print(f"mailmon: {exc}", file=sys.stderr)
        await app.stop()
        return EXIT_CONFIG
    except OSError as exc:
        print(f"mailmon: cannot listen on {listen or config.listen}: {exc.strerror}", file=sys.stderr)
        await app.stop()
        return EXIT_CONFIG
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[bool]] = set()  # held so a running reload is not garbage-collected

    def reload() -> None:
        task = asyncio.ensure_future(app.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    await stopping.wait()
    await app.stop()
    return EXIT_OK


async def _check(config: Config, only_target: str | None, only_check: str | None, as_json: bool) -> int:
    from monitor.probes import probes_for
    from monitor.runner import Runner

    targets = [t for t in config.targets if only_target is None or t.name == only_target]
    jobs = [(t, c) for t in targets for c in t.checks if only_check is None or only_check in (c.name, c.key)]
    if not jobs:
        print(f"UNKNOWN - no check matches (target {only_target or 'any'}, check {only_check or 'any'})")
        return EXIT_UNKNOWN
    runner = Runner(config.vantage, probes=probes_for(config))
    semaphore = asyncio.Semaphore(config.concurrency)

    async def one(target: config_module.Target, check: config_module.CheckSettings) -> Result:
        async with semaphore:
            return await runner.run(target, check)

    results = await asyncio.gather(*(one(t, c) for t, c in jobs))
    if as_json:
        for result in results:
            print(json.dumps(result.as_json()))
    else:
        _print_table(results)
    failed = [r for r in results if not r.ok]
    if any(r.reason == "internal" for r in failed):
        return EXIT_UNKNOWN
    return EXIT_CRITICAL if failed else EXIT_OK


def _print_table(results: list[Result]) -> None:
    failed = [r for r in results if not r.ok]
    state = "CRITICAL" if failed else "OK"
    summary = ", ".join(f"{r.target}/{_name(r)} {r.stage}/{r.reason}" for r in failed)
    summary = summary or f"{len(results)} checks passed"
    print(f"MAILMON {state} - {summary} | {_perfdata(results)}")
    rows = [("TARGET", "CHECK", "RESULT", "SECONDS", "SLOWEST STEP", "DETAIL")]
    for r in results:
        slowest = max(r.phases.items(), key=lambda item: item[1]) if r.phases else ("-", 0.0)
        rows.append((r.target, _name(r), "ok" if r.ok else f"{r.stage}/{r.reason}", f"{r.duration_seconds:.3f}",
                     f"{slowest[0]} {slowest[1]:.3f}", (r.smtp_reply or "") if r.ok else r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5][:120])


def _perfdata(results: list[Result]) -> str:
    """Nagios performance data, one `'label'=value[UOM];[warn];[crit];[min];[max]` per check, space separated.

    The value is the check's duration in seconds; a failed check's is `U` (the guidelines' "could not be
    determined"), so a graph shows a gap rather than the time it took to fail. Labels are always quoted and a
    quote inside one is doubled, as the guidelines require for labels with spaces, `=` or `'`.
    """
    def one(r: Result) -> str:
        label = f"{r.target}/{_name(r)}".replace("'", "''")
        value = f"{r.duration_seconds:.3f}s" if r.ok else "U"
        return f"'{label}'={value};;;0"

    return " ".join(one(r) for r in results)


def _name(result: Result) -> str:
    return result.key
