"""`mailmon diagnose`: "is it me or the server?" Run every check from here, ask the monitor, conclude in plain words.

Exit codes: 0 everything works from here; 1 the fault is on this side (this machine or its network path: the
monitor passes the same check); 2 the fault is on the server side (the monitor fails the same check too);
3 cannot tell (the monitor is unreachable, has no recent result for a failing check, is itself faulty, or the
evidence is mixed); 4 the server is up but refuses the login (the credentials or the sign-in, here and at the
monitor alike): the account's owner has work to do, not the server's team.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from monitor.config import Config
from monitor.explain import CANNOT_TELL, explain
from monitor.probes import probes_for
from monitor.result import Result
from monitor.runner import Runner

__all__ = ["diagnose", "diagnose_client_error"]

FINE, CLIENT_SIDE, SERVER_SIDE, UNKNOWN, CREDENTIALS = 0, 1, 2, 3, 4
# Failures that say the server answered and refused who we are (RFC 4954 535 5.7.8, IMAP NO [AUTHENTICATIONFAILED],
# POP3 -ERR [AUTH]; a login mechanism switched off by policy), or that the sign-in at the identity provider failed.
# Seen here and at the monitor alike they are an account problem, never an outage: a temporary authentication
# failure (454 4.7.0, [UNAVAILABLE]) or a timeout at `auth` is the server's and stays "server side".
_CREDENTIAL_REASONS = frozenset({"auth_rejected", "auth_disabled"})
_PROTOCOL = {"smtp": "SMTP", "imap": "IMAP", "pop3": "POP3", "roundtrip": "The round trip"}
# A monitor result older than this many of its check's intervals is too old to vouch for the server.
_FRESH_INTERVALS = 3.0


@dataclass
class Finding:
    code: int
    text: str


def _what(result: Result) -> str:
    base, _, profile = result.check.partition(":")
    name = _PROTOCOL.get(base, result.check)
    if profile:
        name += f" (profile {profile})"
    if result.via:
        name += f" via {result.via.upper()}"
    return name


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The monitor's /api/status, or None when it cannot be had."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/status", timeout=timeout) as response:
            data = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return data if isinstance(data, dict) else None


def _key(check: str, via: str | None) -> str:
    return f"{check}:{via}" if via else check


def judge(result: Result, remote: dict[str, Any] | None, interval: float) -> Finding:
    """What one local result, set against the monitor's latest result for the same check, says."""
    local = (f"{_what(result)} from this machine fails at {result.stage} "
             f"({result.reason}, {result.duration_seconds:.1f} s)")
    if remote is None:
        return Finding(UNKNOWN, f"{local}. The monitor has no result for this check: cannot tell where the fault is.")
    vantage = remote.get("vantage", "?")
    row = remote["row"]
    age = float(row.get("age_seconds", 0.0))
    if remote.get("vantage_healthy") is False:
        return Finding(UNKNOWN, f"{local}. The monitor at {vantage} has a fault of its own: cannot tell.")
    if age > _FRESH_INTERVALS * interval:
        return Finding(UNKNOWN, f"{local}. The monitor's last result is {_ago(age)}, too old to tell.")
    if row.get("ok"):
        return Finding(CLIENT_SIDE, f"{local}. The monitor at {vantage} passed the same check {_ago(age)}. "
                                    "The server is healthy: the fault is on this machine or its network path.")
    if _refuses_who(result.stage, result.reason) and _refuses_who(row.get("stage"), row.get("reason")):
        return Finding(CREDENTIALS, f"{local}. The monitor at {vantage} fails the same way ({row.get('stage')}/"
                                    f"{row.get('reason')}, {_ago(age)}): the server answers but refuses the login. "
                                    "Not an outage: check the account's password, token or sign-in settings.")
    return Finding(SERVER_SIDE, f"{local}. The monitor at {vantage} fails it too ({row.get('stage')}/"
                                f"{row.get('reason')}, {_ago(age)}): the fault is on the server side.")


def _refuses_who(stage: object, reason: object) -> bool:
    return stage == "token" or (stage == "auth" and reason in _CREDENTIAL_REASONS)


def conclude(findings: list[Finding]) -> int:
    codes = {f.code for f in findings}
    if not codes:
        return FINE
    return codes.pop() if len(codes) == 1 else UNKNOWN


async def diagnose(config: Config, monitor_url: str | None, only_target: str | None, out: TextIO) -> int:
    targets = [t for t in config.targets if only_target is None or t.name == only_target]
    if not targets:
        print(f"No target named {only_target!r} in the configuration.", file=out)
        return UNKNOWN
    runner = Runner(config.vantage, probes=probes_for(config))
    jobs = [(t, c) for t in targets for c in t.checks]
    results = await asyncio.gather(*(runner.run(t, c) for t, c in jobs))
    url = monitor_url or f"http://{config.listen}"
    status = await asyncio.to_thread(fetch_status, url)
    rows = _rows(status)
    print(f"Checks from this machine ({len(results)}):", file=out)
    for result in results:
        state = "ok" if result.ok else f"FAILED at {result.stage} ({result.reason})"
        print(f"\n== {result.target}: {_what(result)}: {state}, {result.duration_seconds:.3f} s", file=out)
        for line in result.transcript:
            print(f"   {line}", file=out)
    print("", file=out)
    if status is None:
        print(f"The monitor at {url} could not be reached (GET /api/status).", file=out)
    findings = []
    for (target, check), result in zip(jobs, results, strict=True):
        if result.ok:
            continue
        row = rows.get((target.name, _key(result.check, result.via)))
        remote = None if row is None or status is None else {
            "row": row, "vantage": status.get("vantage"), "vantage_healthy": status.get("vantage_healthy")}
        findings.append(judge(result, remote, check.interval))
    if not findings:
        print("Conclusion: every check works from this machine.", file=out)
        return FINE
    for finding in findings:
        print(finding.text, file=out)
    code = conclude(findings)
    print({CLIENT_SIDE: "Conclusion: the fault is on this side (this machine or its network path).",
           SERVER_SIDE: "Conclusion: the fault is on the server side.",
           UNKNOWN: "Conclusion: cannot tell from here.",
           CREDENTIALS: "Conclusion: the server refuses the login (credentials or sign-in), not an outage."}[code],
          file=out)
    return code


def _rows(status: dict[str, Any] | None) -> dict[tuple[str, str], dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for target in (status or {}).get("targets", []):
        for row in target.get("checks", []):
            rows[(target.get("target"), _key(row.get("check"), row.get("via")))] = row
    return rows



def freshness(config: Config) -> Callable[[str, str], float]:
    """How old a monitor's result for (target, check) may be and still vouch for the server."""
    intervals = {(t.name, c.label): c.interval for t in config.targets for c in t.checks}

    def max_age(target: str, check: str) -> float:
        return _FRESH_INTERVALS * intervals.get((target, check), config.interval)

    return max_age


def diagnose_client_error(config: Config, monitor_urls: list[str] | None, only_target: str | None, reported: str,
                          out: TextIO) -> int:
    """"A user reports X": ask every monitor about the target and compare at the step the client failed at."""
    names = [t.name for t in config.targets]
    target = only_target if only_target is not None else (names[0] if len(names) == 1 else None)
    if target is None or target not in names:
        print(f"Name the user's server with --target (one of: {', '.join(names)}).", file=out)
        return CANNOT_TELL
    urls = monitor_urls or [f"http://{config.listen}"]
    statuses = [fetch_status(url) for url in urls]
    for url, status in zip(urls, statuses, strict=True):
        if status is None:
            print(f"The monitor at {url} could not be reached (GET /api/status).", file=out)
    answer = explain(reported, target, statuses, freshness(config))
    print(answer.text, file=out)
    return answer.code
