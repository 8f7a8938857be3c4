"""The verdict rule table: each rule, their precedence, and invariants over every combination of outcomes."""

from __future__ import annotations

import itertools

import pytest

from monitor.result import Result
from monitor.steps import Reason, Stage
from monitor.verdict import VERDICTS, Outcome, VerdictBoard, classify_result, decide, describe
from tests import builders

KINDS = (None, "vantage", "network", "service", "tls", "auth", "other")
DELIVERY_KINDS = (None, "delivery", "junk", "other")


def result(check: str, stage: Stage | None = None, reason: Reason | None = None, via: str | None = None,
           duration: float = 0.1, target: str = "t") -> Result:
    return builders.result(target, check, stage=stage, reason=reason, via=via, duration=duration, vantage="v",
                           started_at=0.0)


@pytest.mark.parametrize(("results", "expected"), [
    ([], "unknown"),
    ([result("smtp"), result("imap"), result("pop3")], "ok"),
    # The scenario the product exists for: SMTP refused, reading mail works.
    ([result("smtp", "connect", "refused"), result("imap"), result("pop3")], "smtp_down"),
    ([result("smtp", "greeting", "timeout"), result("imap")], "smtp_down"),
    ([result("smtp", "connect", "refused"), result("roundtrip", "connect", "refused", via="imap"), result("imap")],
     "smtp_down"),
    ([result("smtp", "connect", "refused")], "smtp_down"),  # an MX-only target
    ([result("smtp"), result("imap", "connect", "refused"), result("pop3", "connect", "refused")], "receive_down"),
    ([result("smtp"), result("imap", "greeting", "reset")], "receive_down"),
    ([result("smtp"), result("roundtrip", "fetch", "refused", via="imap"), result("imap", "connect", "refused")],
     "receive_down"),
    ([result("smtp", "connect", "refused"), result("imap", "connect", "timeout"), result("pop3", "dns", "unreachable")],
     "unreachable"),
    # The resolver does not answer: this vantage's fault, never an SMTP outage.
    ([result("smtp", "dns", "timeout"), result("imap"), result("pop3")], "vantage_fault"),
    # The name does not exist (the resolver answered): the server's zone, seen as unreachable SMTP.
    ([result("smtp", "dns", "unreachable"), result("imap"), result("pop3")], "smtp_down"),
    ([result("smtp", "tls", "cert_expired"), result("imap"), result("pop3")], "tls_problem"),
    ([result("smtp"), result("imap", "tls", "cert_invalid")], "tls_problem"),
    ([result("smtp", "auth", "auth_rejected"), result("imap")], "auth_failed"),
    ([result("smtp"), result("imap", "auth", "auth_rejected"), result("pop3", "auth", "auth_rejected")],
     "auth_failed"),
    ([result("smtp"), result("imap"), result("roundtrip", "delivery", "not_delivered", via="imap")],
     "delivery_stalled"),
    ([result("smtp"), result("imap"), result("roundtrip", "delivery", "junk", via="imap")], "degraded"),
    ([result("smtp"), result("imap"), result("roundtrip", "cleanup", "protocol", via="imap")], "degraded"),
    # Half the SMTP checks fail (say one client profile): not a full outage.
    ([result("smtp"), result("smtp", "rcpt", "reply_5xx"), result("imap")], "degraded"),
    # Every service answers but none does its job: as bad as not answering.
    ([result("smtp", "ehlo", "protocol"), result("imap", "greeting", "reply_5xx")], "unreachable"),
    # The mailbox cannot be opened while SMTP fails too: broken, but not simply "down".
    ([result("smtp", "ehlo", "protocol"), result("imap", "select", "protocol")], "degraded"),
])
def test_rule_table(results: list[Result], expected: str) -> None:
    """Each row of the rule table in docs/verdicts.md gives its verdict."""
    assert decide(classify_result(r) for r in results) == expected


def test_slow_check_is_degraded() -> None:
    """A check taking more than half its timeout makes an otherwise healthy target degraded."""
    assert decide([classify_result(result("smtp", duration=9.0), timeout=15.0)]) == "degraded"
    assert decide([classify_result(result("smtp", duration=7.0), timeout=15.0)]) == "ok"


def test_vantage_fault_outranks_everything() -> None:
    """A failing selfcheck turns any picture, even a total outage, into vantage_fault."""
    outage = [classify_result(result("smtp", "dns", "unreachable")),
              classify_result(result("imap", "dns", "unreachable"))]
    assert decide(outage, vantage_healthy=False) == "vantage_fault"
    assert decide([], vantage_healthy=False) == "vantage_fault"


def _outcomes(send: str | bool | None, receive: str | bool | None, delivery: str | bool | None,
              slow: bool) -> list[Outcome]:
    """False means the side has no result at all."""
    items = []
    for side, kind in (("send", send), ("receive", receive), ("delivery", delivery)):
        if kind is not False:
            items.append(Outcome(side, kind if isinstance(kind, str) else None, slow))
    return items


ALL = list(itertools.product((False, *KINDS), (False, *KINDS), (False, *DELIVERY_KINDS), (False, True), (False, True)))


@pytest.mark.parametrize(("send", "receive", "delivery", "slow", "healthy"), ALL)
def test_invariants_hold_for_every_combination(send: str | bool | None, receive: str | bool | None,
                                               delivery: str | bool | None, slow: bool, healthy: bool) -> None:
    """Over every combination of sides and failure kinds the verdict obeys the rules' promises."""
    outcomes = _outcomes(send, receive, delivery, slow)
    verdict = decide(outcomes, vantage_healthy=healthy)
    assert verdict in VERDICTS
    down = ("network", "service")
    if not healthy or "vantage" in {o.kind for o in outcomes}:
        assert verdict == "vantage_fault"
        return
    if not outcomes:
        assert verdict == "unknown"
        return
    failing = [o for o in outcomes if o.kind is not None]
    if not failing:
        assert verdict == ("degraded" if slow else "ok")
    if verdict == "ok":
        assert not failing and not slow
    if verdict == "smtp_down":
        # Never an SMTP outage while reading mail fails too or SMTP partly works.
        assert send in down and receive in (False, None)
    if verdict == "receive_down":
        assert receive in down and send in (False, None)
    if verdict == "unreachable":
        assert send in down and receive in down
    if send in down and receive in down:
        assert verdict == "unreachable"
    if verdict in ("tls_problem", "auth_failed", "delivery_stalled"):
        wanted = {"tls_problem": "tls", "auth_failed": "auth", "delivery_stalled": "delivery"}[verdict]
        assert wanted in {o.kind for o in outcomes}
    if failing and verdict not in ("smtp_down", "receive_down", "unreachable"):
        assert verdict in ("tls_problem", "auth_failed", "delivery_stalled", "degraded")


def test_board_follows_latest_result_per_check() -> None:
    """The board keeps only the newest result per check, so a recovered check clears the verdict."""
    board = VerdictBoard()
    board.reset({"t": {"smtp", "imap"}}, {})
    board.record(result("imap"))
    assert board.record(result("smtp", "connect", "refused")) == "smtp_down"
    assert board.record(result("smtp")) == "ok"


def test_board_vantage_health_applies_to_every_target() -> None:
    """A failing selfcheck flips every target to vantage_fault and back when it passes again."""
    board = VerdictBoard()
    board.reset({"a": {"smtp"}, "b": {"smtp"}}, {})
    board.record(result("smtp", target="a"))
    assert board.set_vantage_health(False) == {"a": "vantage_fault", "b": "vantage_fault"}
    assert board.set_vantage_health(True) == {"a": "ok", "b": "unknown"}


def test_board_forgets_checks_that_left_the_config() -> None:
    """After a reload without the failing check, its old result no longer counts."""
    board = VerdictBoard()
    board.reset({"t": {"smtp", "imap"}}, {})
    board.record(result("smtp"))
    board.record(result("imap", "connect", "refused"))
    assert board.verdict("t") == "receive_down"
    board.reset({"t": {"smtp"}}, {})
    assert board.verdict("t") == "ok"


def test_board_is_not_ok_before_every_check_reported() -> None:
    """Passing results of some checks, with others not run yet, are `unknown`, not `ok`; a failure shows at once."""
    board = VerdictBoard()
    board.reset({"t": {"smtp", "imap"}}, {})
    assert board.record(result("imap")) == "unknown"
    assert board.record(result("smtp")) == "ok"
    board.reset({"u": {"smtp", "imap"}}, {})
    assert board.record(result("imap", "connect", "refused", target="u")) == "receive_down"


@pytest.mark.parametrize("reason", ["timeout", "reset", "reply_4xx", "reply_5xx", "protocol"])
def test_login_failure_of_any_reason_is_never_an_outage(reason: Reason) -> None:
    """A login that fails in any way (a server delaying a wrong password into `auth/timeout`) reads as auth_failed."""
    assert decide(classify_result(r) for r in [result("smtp"), result("imap", "auth", reason),
                                               result("pop3", "auth", reason)]) == "auth_failed"
    assert decide(classify_result(r) for r in [result("smtp", "auth", reason), result("imap")]) == "auth_failed"
    assert decide(classify_result(r) for r in [result("smtp", "auth", reason),
                                               result("imap", "auth", reason)]) == "auth_failed"


def test_login_timeout_summary_names_a_delayed_login() -> None:
    """The plain-words summary of an auth timeout says the server may be delaying failed logins, and the time."""
    failing = result("imap", "auth", "timeout", duration=4.0)
    text = describe("auth_failed", [result("smtp"), failing], "v")
    assert "login did not complete in 4.0 s — the server may be delaying failed logins" in text


def test_auth_disabled_says_switch_to_oauth2() -> None:
    """A policy refusal of password logins (535 5.7.139) tells the reader what to do, not to hunt a wrong password."""
    text = describe("auth_failed", [result("imap"), result("smtp", "auth", "auth_disabled")], "v")
    assert "switch this target to oauth2" in text


def test_every_verdict_has_a_colour_on_the_status_page() -> None:
    """A new verdict (signin_failed) gets its own colour, not the grey fallback."""
    from monitor.web.page import COLOURS

    assert set(VERDICTS) <= set(COLOURS)


@pytest.mark.parametrize("reason", ["mailbox_busy", "login_delay"])
def test_locked_or_delayed_pop3_mailbox_is_not_an_outage(reason: Reason) -> None:
    """POP3 [IN-USE] and [LOGIN-DELAY] (RFC 2449/3206): the server works and the password is good, so the target is
    degraded, never receive_down nor auth_failed, at login and in a round trip's read-back alike."""
    assert decide(classify_result(r) for r in [result("smtp"), result("pop3", "auth", reason)]) == "degraded"
    assert decide(classify_result(r) for r in [result("smtp"), result("roundtrip", "fetch", reason, via="pop3"),
                                               result("pop3", "auth", reason)]) == "degraded"
