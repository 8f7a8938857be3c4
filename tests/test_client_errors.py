"""The client-error table: every entry sourced and checkable, look-up by code and by vendor text, no guessing."""

from __future__ import annotations

import pytest

from monitor.client_errors import SESSION, ClientError, lookup, table
from monitor.config import CheckSettings, ImapSettings, Pop3Settings, SmtpSettings
from monitor.metrics import possible_failures
from monitor.steps import STEP_STAGE

# The checks mailmon runs for each protocol, in their fullest form (TLS, AUTH, a test transaction).
_CHECKS: dict[str, CheckSettings] = {
    "smtp": SmtpSettings(port=587, tls_mode="starttls", interval=60, timeout=10, mail_from="probe@example.org",
                         rcpt_to=("probe@example.org",)),
    "imap": ImapSettings(port=993, tls_mode="implicit", interval=60, timeout=10),
    "pop3": Pop3Settings(port=995, tls_mode="implicit", interval=60, timeout=10),
}
_ROUNDTRIP_STAGES = {"data"}  # DATA is sent by the round trip's submission, not by the plain SMTP check


def _stages(protocol: str) -> set[str]:
    stages = {stage for stage, _ in possible_failures(_CHECKS[protocol])}
    stages |= {STEP_STAGE["dns"], STEP_STAGE["connect"]}
    return stages | (_ROUNDTRIP_STAGES if protocol == "smtp" else set())


@pytest.mark.parametrize("entry", table(), ids=lambda e: e.id)
def test_entry_resolves_to_a_step_mailmon_checks(entry: ClientError) -> None:
    """Every entry names a protocol mailmon checks and a step that protocol's check can report."""
    assert entry.protocols
    for protocol in entry.protocols:
        assert entry.step == SESSION or entry.step in _stages(protocol), (entry.id, protocol, entry.step)


@pytest.mark.parametrize("entry", table(), ids=lambda e: e.id)
def test_entry_has_a_source(entry: ClientError) -> None:
    """Every mapping says where it comes from: a vendor header or the client's own localisation."""
    assert entry.source.startswith(("Windows SDK, imnxport.h", "Thunderbird localisation, mail/locales/"))
    if entry.messages and entry.client != "Thunderbird":
        # Outlook's texts are not in the header that defines its codes: say where each was seen.
        assert entry.text_source.startswith("http"), entry.id


@pytest.mark.parametrize("entry", [e for e in table() if e.codes], ids=lambda e: e.id)
def test_each_code_finds_its_entry(entry: ClientError) -> None:
    """An Outlook code, in any case and inside the client's whole sentence, finds its entry."""
    for code in entry.codes:
        assert [e.id for e in lookup(f"Sending reported error ({code.lower()}): something")] == [entry.id]


@pytest.mark.parametrize(("reported", "expected"), [
    ("The message could not be sent because connecting to Outgoing server (SMTP) smtp.example.org failed. "
     "The server may be unavailable or is refusing SMTP connections.", "thunderbird-smtp-request-refused"),
    ("送信 (SMTP) サーバー smtp.example.jp に接続できなかったため、メッセージを送信できませんでした。",
     "thunderbird-smtp-request-refused"),
    ("タスク 'example - 受信中' はエラーを報告しました: 'サーバーへの接続が中断されました。'", "outlook-0x800ccc0f"),
    ("Unable to authenticate to Outgoing server (SMTP) smtp.example.org. Please check the password",
     "thunderbird-smtp-auth-failure"),
])
def test_vendor_text_finds_its_entry(reported: str, expected: str) -> None:
    """A user's copy of the client's message (English or Japanese) finds the entry for it."""
    assert [e.id for e in lookup(reported)] == [expected]


@pytest.mark.parametrize("reported", ["0x12345678", "it does not work", "failed", "Cannot send: the connection to "
                                      "the server was lost", ""])
def test_unknown_reports_match_nothing(reported: str) -> None:
    """Unknown codes and loose descriptions match nothing: no entry is ever guessed."""
    assert lookup(reported) == []


def test_the_docs_list_every_entry() -> None:
    """docs/client-errors.md lists every entry of the table, so the published table cannot drift from the data."""
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "client-errors.md").read_text()
    assert [e.id for e in table() if f"| `{e.id}` |" not in page] == []
