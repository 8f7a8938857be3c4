"""The redaction safety net (monitor/redaction.py) on its own: no credential of any SASL or login exchange
survives it, and nothing else is changed. Each secret is built the way a client sends it (monitor/signin/sasl.py
for the OAuth2 mechanisms), and each test checks one exchange."""

from __future__ import annotations

import base64

import pytest

from monitor.redaction import REDACTED, redact, redact_lines
from monitor.result import ProbeContext
from monitor.signin.sasl import MECHANISMS, initial_response

PASSWORD = "hunter2-Zq9"
# A realistic access token: longer than the transcript keeps of one line (monitor/result.py), as Entra ID's are.
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + "QWxhZGRpbjpvcGVuIHNlc2FtZQ" * 40


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str = "probe@lab.test", password: str = PASSWORD) -> str:
    """The base64 SASL PLAIN response (RFC 4616): authzid NUL authcid NUL password."""
    return b64(f"\0{user}\0{password}")


def oauth(mechanism: str) -> str:
    return initial_response(mechanism, "probe@lab.test", TOKEN, "mail.lab.test", 993)


def leaks(lines: list[str], *secrets: str) -> list[str]:
    """The secrets (or a 16-character piece of one, as a cut line would keep) found in `lines`."""
    text = "\n".join(lines)
    return [s for s in secrets if s in text or any(s[i:i + 16] in text for i in range(0, max(1, len(s) - 16), 8))]


def recorded(*events: tuple[str, str]) -> list[str]:
    """A transcript as ProbeContext records it (so its line-length cut applies): ("S"|"C"|"--", text) events."""
    ctx = ProbeContext()
    for who, text in events:
        {"S": ctx.heard, "C": ctx.say, "--": ctx.note}[who](text)
    return ctx.transcript


def test_smtp_auth_plain_initial_response_is_redacted() -> None:
    assert redact_lines([f"C: AUTH PLAIN {plain()}"]) == [f"C: AUTH PLAIN {REDACTED}"]


def test_smtp_auth_plain_after_a_334_challenge_is_redacted() -> None:
    lines = redact_lines(["C: AUTH PLAIN", "S: 334 ", f"C: {plain()}", "S: 235 2.7.0 ok"])
    assert lines == ["C: AUTH PLAIN", "S: 334 ", f"C: {REDACTED}", "S: 235 2.7.0 ok"]


def test_smtp_auth_login_user_and_password_are_redacted() -> None:
    lines = redact_lines(["C: AUTH LOGIN", "S: 334 VXNlcm5hbWU6", f"C: {b64('probe@lab.test')}",
                          "S: 334 UGFzc3dvcmQ6", f"C: {b64(PASSWORD)}", "S: 235 2.7.0 ok"])
    assert not leaks(lines, b64("probe@lab.test"), b64(PASSWORD))
    assert lines[2] == lines[4] == f"C: {REDACTED}"


def test_auth_login_with_the_user_as_initial_response_is_redacted() -> None:
    assert redact_lines([f"C: AUTH LOGIN {b64('probe@lab.test')}"]) == [f"C: AUTH LOGIN {REDACTED}"]


def test_a_short_password_after_a_challenge_is_redacted() -> None:
    """The base64 of a 1- to 3-character password is 4 characters: still caught."""
    assert redact_lines(["S: 334 UGFzc3dvcmQ6", f"C: {b64('pw')}"])[1] == f"C: {REDACTED}"


def test_a_note_between_challenge_and_answer_does_not_hide_the_answer() -> None:
    lines = redact_lines(["S: 334 UGFzc3dvcmQ6", "-- TLS established: TLSv1.3", f"C: {b64(PASSWORD)}"])
    assert lines[2] == f"C: {REDACTED}"


def test_pop3_pass_is_redacted() -> None:
    assert redact_lines([f"C: PASS {PASSWORD}"]) == [f"C: PASS {REDACTED}"]


def test_pop3_sasl_response_after_a_plus_continuation_is_redacted() -> None:
    lines = redact_lines(["C: AUTH PLAIN", "S: + ", f"C: {plain()}", "S: +OK logged in"])
    assert lines[2] == f"C: {REDACTED}"


def test_imap_login_password_is_redacted() -> None:
    assert redact_lines([f"C: a1 LOGIN probe {PASSWORD}"]) == [f"C: a1 LOGIN probe {REDACTED}"]


def test_imap_login_with_a_quoted_user_and_password_is_redacted() -> None:
    lines = redact_lines(['C: a2 LOGIN "probe lab" "hunter 2"'])
    assert lines == [f'C: a2 LOGIN "probe lab" {REDACTED}'] and not leaks(lines, "hunter 2")


def test_imap_login_password_sent_as_a_literal_is_redacted() -> None:
    lines = redact_lines(["C: a1 LOGIN {5}", "S: + Ready", "C: probe {11}", "S: +", f"C: {PASSWORD.replace('-', '')}"])
    assert lines[4] == f"C: {REDACTED}"


def test_imap_authenticate_with_sasl_ir_is_redacted() -> None:
    assert redact_lines([f"C: a3 AUTHENTICATE PLAIN {plain()}"]) == [f"C: a3 AUTHENTICATE PLAIN {REDACTED}"]


def test_commands_in_lower_case_are_redacted_too() -> None:
    assert redact_lines([f"C: a1 login probe {PASSWORD}"]) == [f"C: a1 login probe {REDACTED}"]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_an_oauth2_initial_response_on_the_auth_line_is_redacted(mechanism: str) -> None:
    lines = recorded(("C", f"AUTH {mechanism.upper()} {oauth(mechanism)}"))
    assert not leaks(redact_lines(lines), oauth(mechanism), TOKEN)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_an_oauth2_imap_authenticate_line_is_redacted(mechanism: str) -> None:
    lines = recorded(("C", f"a4 AUTHENTICATE {mechanism.upper()} {oauth(mechanism)}"))
    assert not leaks(redact_lines(lines), oauth(mechanism), TOKEN)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_an_oauth2_response_after_a_continuation_is_redacted_even_when_cut(mechanism: str) -> None:
    """Without SASL-IR the token goes on a line of its own, longer than the transcript keeps: the cut line too."""
    lines = recorded(("C", f"a4 AUTHENTICATE {mechanism.upper()}"), ("S", "+ "), ("C", oauth(mechanism)))
    assert len(oauth(mechanism)) > 300 and not leaks(redact_lines(lines), oauth(mechanism), TOKEN)


def test_server_lines_are_never_changed() -> None:
    lines = ["S: 334 VXNlcm5hbWU6", "S: 250 AUTH PLAIN LOGIN XOAUTH2", "S: + eyJzdGF0dXMiOiI0MDEifQ=="]
    assert redact_lines(lines) == lines


def test_ordinary_client_lines_are_left_alone() -> None:
    lines = ["S: 220 mail.lab.test ESMTP", "C: EHLO probe", "C: MAIL FROM:<probe@lab.test>", "S: 250 ok",
             "C: QUIT", "C: a5 SELECT INBOX", "C: AUTH LOGIN"]
    assert redact_lines(lines) == lines


def test_a_bare_token_not_after_a_continuation_is_left_alone() -> None:
    assert redact_lines(["S: 250 2.0.0 Ok", "C: RSET"]) == ["S: 250 2.0.0 Ok", "C: RSET"]


def test_what_the_probes_already_redacted_stays_as_it_is() -> None:
    lines = [f"C: AUTH PLAIN {REDACTED}", f"C: PASS {REDACTED}", f"C: a1 LOGIN probe@lab.test {REDACTED}",
             "S: 334 ", f"C: {REDACTED}", "S: + ", "C: *"]
    assert redact_lines(lines) == lines


def test_redact_applies_the_rules_to_each_line_of_a_text() -> None:
    assert redact(f"S: 535 no\nC: PASS {PASSWORD}\nS: -ERR") == f"S: 535 no\nC: PASS {REDACTED}\nS: -ERR"


def test_redact_leaves_a_text_without_client_lines_alone() -> None:
    assert redact("5.7.8 Error: authentication failed") == "5.7.8 Error: authentication failed"
