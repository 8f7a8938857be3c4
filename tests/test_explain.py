"""`explain`: a client's error set against the monitors' latest results at the same protocol and step."""

from __future__ import annotations

from typing import Any

from monitor.explain import CANNOT_TELL, CLIENT_SIDE, SERVER_SIDE, explain

NOW = 1_800_000_000.0


def status(vantage: str, *checks: dict[str, Any], healthy: bool = True, **extra: Any) -> dict[str, Any]:
    return {"vantage": vantage, "vantage_healthy": healthy, "targets": [{"target": "mail", "checks": list(checks)}],
            **extra}


def row(check: str, ok: bool, stage: str | None = None, reason: str | None = None, age: float = 10.0) -> dict[str, Any]:
    return {"check": check, "via": None, "ok": ok, "stage": stage, "reason": reason, "age_seconds": age}


def fresh(target: str, check: str) -> float:
    return 180.0


def test_server_accepting_the_step_everywhere_is_client_side() -> None:
    """SMTP passes from both vantages: 0x800CCC13 is the client or its network (1), naming both vantages."""
    answer = explain("0x800CCC13", "mail", [status("office", row("smtp", True)), status("dc", row("smtp", True))],
                     fresh, NOW)
    assert answer.code == CLIENT_SIDE
    assert "The server accepts connect from dc, office: this is the client or its network" in answer.text


def test_failing_at_the_step_from_every_vantage_is_server_side() -> None:
    """SMTP refused at connect from both vantages: server side (2)."""
    down = row("smtp", False, "connect", "refused")
    answer = explain("0x800CCC13", "mail", [status("office", down), status("dc", down)], fresh, NOW)
    assert answer.code == SERVER_SIDE
    assert "SMTP (smtp) from office fails at connect (refused)" in answer.text
    assert "from every vantage (dc, office): the fault is on the server side" in answer.text


def test_a_later_failure_means_the_step_itself_works() -> None:
    """The monitor fails at AUTH, after connect: the server accepts connections, so a connect error is the client's."""
    answer = explain("0x800CCC0E", "mail", [status("dc", row("smtp", False, "auth", "auth_rejected"))], fresh, NOW)
    assert answer.code == CLIENT_SIDE
    assert "gets past connect (fails later, at auth/auth_rejected)" in answer.text


def test_one_vantage_failing_names_that_network() -> None:
    """Failing from one vantage and passing from another: the client side, and the failing site named."""
    answer = explain("0x800CCC0E", "mail", [status("office", row("imap", False, "connect", "timeout")),
                                            status("dc", row("imap", True))], fresh, NOW)
    assert answer.code == CLIENT_SIDE
    assert "but not from office: that network or site" in answer.text


def test_stale_results_cannot_tell() -> None:
    """A result older than the freshness limit vouches for nothing: cannot tell (3)."""
    answer = explain("0x800CCC13", "mail", [status("dc", row("smtp", True, age=3600))], fresh, NOW)
    assert answer.code == CANNOT_TELL
    assert "too old" in answer.text


def test_a_monitor_side_failure_is_no_evidence() -> None:
    """The monitor's own sign-in failing (stage token) says nothing about the server's step."""
    answer = explain("0x800CCC13", "mail", [status("dc", row("smtp", False, "token", "reply_5xx"))], fresh, NOW)
    assert answer.code == CANNOT_TELL


def test_an_unreachable_monitor_leaves_server_side_unproven() -> None:
    """One monitor fails the step, the other could not be asked: not enough to blame the server."""
    answer = explain("0x800CCC13", "mail", [status("dc", row("smtp", False, "connect", "refused")), None], fresh, NOW)
    assert answer.code == CANNOT_TELL


def test_no_monitor_at_all_cannot_tell() -> None:
    """No monitor answered: cannot tell."""
    assert explain("0x800CCC13", "mail", [None], fresh, NOW).code == CANNOT_TELL


def test_unknown_code_says_so_and_shows_the_state() -> None:
    """An unknown code is not guessed; the answer still says how each protocol looks."""
    answer = explain("0x80042108", "mail", [status("dc", row("smtp", True), row("imap", True))], fresh, NOW)
    assert answer.code == CANNOT_TELL and answer.matches == []
    assert "is not in mailmon's table" in answer.text and "IMAP (imap) from dc passes" in answer.text


def test_open_and_recent_change_windows_are_named() -> None:
    """Windows open now and closed in the last days are part of the answer."""
    window = {"calendar": "it", "change": "Patch Tuesday", "start": NOW - 3600, "end": NOW + 3600}
    earlier = {"calendar": "it", "change": "Cert renewal", "start": NOW - 90000, "end": NOW - 86400}
    answer = explain("0x800CCC13", "mail", [status("dc", row("smtp", True), change_windows_open=[window],
                                                   change_windows_recent=[earlier])], fresh, NOW)
    assert "Change window open now: Patch Tuesday (it)." in answer.text
    assert "Change windows in the last 3 days: Cert renewal (it)" in answer.text
