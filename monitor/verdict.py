"""The local verdict: one word per target saying where the fault is, from the latest result of each check.

Rules are tried in order, first match wins (docs/verdicts.md has the table and the reasoning):

| # | verdict | when |
|---|---------|------|
| 1 | vantage_fault | this vantage's own selfcheck fails, or its resolver does not answer for a check, or a check |
|   |               | ran out of local resources (`local_resources`): its other failures say nothing about the server |
| 2 | unknown | no check of the target has finished yet |
| 3 | unreachable | every check fails at the network or service level, on both the send and receive side |
| 4 | smtp_down | every send-side check fails at the network/service level, and the receive side (if any) passes |
| 5 | receive_down | every receive-side check fails at the network/service level, and the send side (if any) passes |
| 6 | tls_problem | some check fails in TLS (untrusted, misnamed or expired certificate, handshake) |
| 7a | signin_failed | some check cannot get a token from the identity provider (stage `token`) |
| 7 | auth_failed | some check's credentials are rejected, or its login fails in any other way (timeout included) |
| 8 | delivery_stalled | a submission was accepted but the message was not delivered by the deadline |
| 9 | degraded | any other failure (partial, junk folder, cleanup), or some check is slow |
| 10 | ok | everything passes in good time |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from monitor import steps
from monitor.families import family_name
from monitor.result import Result

__all__ = ["VERDICTS", "Outcome", "VerdictBoard", "classify_result", "decide", "describe", "side_of"]

VERDICTS = (
    "ok", "smtp_down", "receive_down", "unreachable", "delivery_stalled", "auth_failed", "tls_problem",
    "degraded", "vantage_fault", "unknown",
    # The identity provider (OAuth2 token endpoint) fails: the monitor cannot sign in; says nothing about mail.
    "signin_failed",
)

# A check slower than this share of its timeout makes the target `degraded`.
SLOW_SHARE = 0.5


@dataclass(frozen=True)
class Outcome:
    """What one result means for the verdict: which side of the mail flow, and what kind of failure."""

    side: str          # send | receive | delivery
    kind: str | None   # None when ok; else vantage | network | service | tls | auth | delivery | junk | other
    #                    | signin (stage token: the identity provider, before any mail server was asked)
    slow: bool = False


def side_of(result: Result) -> str:
    """send (SMTP), receive (IMAP/POP3 reading) or delivery (the wait between them), as the check kind declares
    (monitor/steps.py); a client profile `smtp:<name>` is of kind `smtp`."""
    return steps.kind(result.check.partition(":")[0]).side_of(None if result.ok else result.stage)


def classify_result(result: Result, timeout: float | None = None) -> Outcome:
    """The verdict-relevant reading of one result."""
    side = side_of(result)
    slow = timeout is not None and result.duration_seconds > timeout * SLOW_SHARE
    if result.ok:
        return Outcome(side, None, slow)
    stage, reason = result.stage, result.reason
    if reason == "local_resources":
        # This host ran out of descriptors, buffers, memory or ports: the monitor's fault at any stage.
        kind = "vantage"
    elif stage == "token":
        # Checked first: a token endpoint that times out or refuses is the identity provider's fault, never a
        # network or service failure of the mail server (which was not even asked).
        kind = "signin"
    elif reason in ("mx_fallback", "mx_cname"):
        # Mail still flows (through a backup MX, or through an alias senders may refuse): degraded, never down.
        kind = "other"
    elif stage == "dns" and reason == "timeout":
        # The resolver did not answer: that is this vantage's infrastructure, whatever the selfcheck says yet.
        kind = "vantage"
    elif reason in ("cert_invalid", "cert_expired", "tls_handshake") or stage == "tls":
        kind = "tls"
    elif reason in ("mailbox_busy", "login_delay"):
        # Another client holds the mailbox, or the server's LOGIN-DELAY refused a login too soon: the server works
        # and the credentials are good (checked before `auth`, where POP3 reports these).
        kind = "other"
    elif reason in ("auth_rejected", "auth_disabled") or stage == "auth":
        # Any failure while logging in, a timeout included, is about the login: servers delay failed logins
        # (3-5 s is common, Dovecot's penalty reaches 15 s), so a wrong password can end as `auth/timeout`.
        # The server answered up to AUTH, so this is never an outage of its service.
        kind = "auth"
    elif reason == "not_delivered":
        kind = "delivery"
    elif reason == "junk":
        kind = "junk"
    elif stage in ("dns", "connect") or (stage == "fetch" and reason in ("refused", "unreachable", "timeout")):
        kind = "network"
    elif stage in ("greeting", "ehlo") or reason in ("timeout", "reset", "reply_4xx", "reply_5xx"):
        # The service is there but does not do its job: no greeting, drops us, or refuses the session.
        kind = "service"
    else:
        kind = "other"
    return Outcome(side, kind, slow)


def _down(outcomes: list[Outcome]) -> bool:
    return bool(outcomes) and all(o.kind in ("network", "service") for o in outcomes)


def _up(outcomes: list[Outcome]) -> bool:
    return all(o.kind is None for o in outcomes)


def decide(outcomes: Iterable[Outcome], vantage_healthy: bool = True) -> str:
    """Apply the rule table to the outcomes of a target's checks at one vantage."""
    items = list(outcomes)
    if not vantage_healthy or any(o.kind == "vantage" for o in items):
        return "vantage_fault"
    if not items:
        return "unknown"
    send = [o for o in items if o.side == "send"]
    receive = [o for o in items if o.side == "receive"]
    if send and receive and _down(send) and _down(receive):
        return "unreachable"
    if _down(send) and _up(receive):
        return "smtp_down"
    if _down(receive) and _up(send):
        return "receive_down"
    kinds = {o.kind for o in items}
    if "tls" in kinds:
        return "tls_problem"
    if "signin" in kinds:
        return "signin_failed"
    if "auth" in kinds:
        return "auth_failed"
    if "delivery" in kinds:
        return "delivery_stalled"
    if kinds != {None} or any(o.slow for o in items):
        return "degraded"
    return "ok"


class VerdictBoard:
    """Keeps the latest result of every check per target and the verdict that follows from them."""

    def __init__(self, timeouts: dict[tuple[str, str], float] | None = None) -> None:
        self._results: dict[str, dict[str, Result]] = {}
        self._expected: dict[str, set[str]] = {}
        self._verdicts: dict[str, str] = {}
        self._timeouts = timeouts or {}
        self.vantage_healthy = True

    def reset(self, targets: dict[str, set[str]], timeouts: dict[tuple[str, str], float]) -> None:
        """Follow a (re)loaded configuration: `targets` maps each target to its check keys."""
        self._timeouts = timeouts
        self._expected = {name: set(keys) for name, keys in targets.items()}
        self._results = {name: {key: r for key, r in self._results.get(name, {}).items() if key in keys}
                         for name, keys in targets.items()}
        self._verdicts = {name: self._decide(name) for name in targets}

    def record(self, result: Result) -> str:
        """Store one result and return its target's verdict after it."""
        self._results.setdefault(result.target, {})[result.key] = result
        verdict = self._decide(result.target)
        self._verdicts[result.target] = verdict
        return verdict

    def set_vantage_health(self, healthy: bool) -> dict[str, str]:
        """Record the selfcheck outcome; returns the verdicts that changed (all targets' only when health did)."""
        if healthy == self.vantage_healthy:
            return {}
        self.vantage_healthy = healthy
        before = self._verdicts
        self._verdicts = {name: self._decide(name) for name in self._results}
        return {name: verdict for name, verdict in self._verdicts.items() if before.get(name) != verdict}

    def verdict(self, target: str) -> str:
        return self._verdicts.get(target, "unknown")

    def results(self, target: str) -> list[Result]:
        return list(self._results.get(target, {}).values())

    def _decide(self, target: str) -> str:
        results = self._results.get(target, {})
        outcomes = [classify_result(r, self._timeouts.get((target, key))) for key, r in results.items()]
        verdict = decide(outcomes, self.vantage_healthy)
        if verdict == "ok" and not self._expected.get(target, set()) <= set(results):
            # Healthy so far, but not every check has reported yet: not shown to work, so not "ok" yet.
            return "unknown"
        return verdict


_PROTOCOL_NAMES = {"smtp": "SMTP", "imap": "IMAP", "pop3": "POP3", "roundtrip": "the round trip"}


def _name(result: Result) -> str:
    base = result.check.split(":", 1)[0]
    text = _PROTOCOL_NAMES.get(base, result.check)
    if ":" in result.check:
        text += f" (client profile {result.check.split(':', 1)[1]})"
    if result.via:
        text += f" via {result.via.upper()}"
    if result.ip_family:
        text += f" over {family_name(result.ip_family)}"
    return text


def _failure(result: Result) -> str:
    text = f"{_name(result)} fails at {result.stage} ({result.reason})"
    if result.stage == "auth" and result.reason == "timeout":
        text += (f": login did not complete in {result.duration_seconds:.1f} s — the server may be delaying "
                 "failed logins")
    elif result.reason == "auth_disabled":
        # Not a wrong password: the provider switched password logins off (Microsoft 5.7.139, Google 5.7.9).
        text += ": the server refuses password logins by policy — switch this target to oauth2"
    return text


def describe(verdict: str, results: list[Result], vantage: str) -> str:
    """The verdict in plain words for a person, naming what fails and what still works."""
    failing = [r for r in results if not r.ok]
    passing = sorted({_name(r) for r in results if r.ok})
    works = f"; {', '.join(passing)} work" if passing else ""
    failures = "; ".join(_failure(r) for r in failing)
    texts = {
        "ok": f"Everything works from {vantage}: {', '.join(passing) or 'no checks yet'}.",
        "unknown": f"No result yet from {vantage}.",
        "vantage_fault": f"The monitor at {vantage} has a problem of its own (resolver, routes, reference "
                         "endpoint or local resources): its results say nothing about the server right now.",
        "unreachable": f"The server does not answer from {vantage} on any protocol: {failures}.",
        "smtp_down": f"SMTP is down as seen from {vantage}: {failures}{works}.",
        "receive_down": f"Reading mail is down as seen from {vantage}: {failures}{works}.",
        "tls_problem": f"A TLS problem as seen from {vantage}: {failures}{works}.",
        "auth_failed": f"The probe's login is rejected as seen from {vantage}: {failures}{works}.",
        "signin_failed": f"The monitor cannot get a sign-in token from the identity provider (not a mail server "
                         f"fault) as seen from {vantage}: {failures}{works}.",
        "delivery_stalled": f"Mail is accepted but not delivered as seen from {vantage}: {failures}{works}.",
        "degraded": (f"Partly working as seen from {vantage}: {failures}{works}." if failing else
                     f"Working but slow as seen from {vantage}{works}."),
    }
    return texts.get(verdict, verdict)
