"""Full mailboxes: IMAP quota as Dovecot reports it, and mail refused for quota named `mailbox_full`, not an outage."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from monitor.config import Config, ConfigError, load_text
from monitor.errors import smtp_reply_reason
from monitor.metrics import Metrics
from monitor.probes import probes_for
from monitor.probes.imap import parse_quota
from monitor.result import Result
from monitor.runner import Runner
from monitor.verdict import classify_result, decide
from tests import builders
from tests.conftest import Lab


@pytest.mark.parametrize(("code", "message", "reason"), [
    (552, "5.2.2 <full@lab.test>: Recipient address rejected: Mailbox is full", "mailbox_full"),
    (452, "4.2.2 The email account that you tried to reach is over quota.", "mailbox_full"),
    (452, "4.3.1 Insufficient system storage", "reply_4xx"),
    (550, "5.1.1 <nobody@lab.test>: Recipient address rejected", "reply_5xx"),
    (552, "5.3.4 Message size exceeds fixed limit", "reply_5xx"),
])
def test_smtp_reply_reason_names_a_full_mailbox_only(code: int, message: str, reason: str) -> None:
    """Only the RFC 3463 X.2.2 "mailbox full" status is mailbox_full; the server's own disk is not."""
    assert smtp_reply_reason(code, message) == reason


def test_parse_quota_reads_every_resource() -> None:
    """STORAGE and MESSAGE of a QUOTA response; unlimited (0) and malformed triples are left out."""
    lines: list[bytes | bytearray | str] = [b'"User quota" (STORAGE 2 1024 MESSAGE 3 3 X-ODD 1 0)',
                                             b"Getquotaroot completed"]
    assert parse_quota(lines) == {"STORAGE": (2, 1024), "MESSAGE": (3, 3)}


def test_a_full_mailbox_is_never_an_smtp_outage() -> None:
    """SMTP refusing RCPT for quota while IMAP works is `degraded`, not `smtp_down`."""
    smtp = builders.result("t", "smtp", stage="rcpt", reason="mailbox_full")
    imap = builders.result("t", "imap")
    assert decide([classify_result(smtp), classify_result(imap)]) == "degraded"


@pytest.mark.parametrize("value", ["0", "0%", "150%", "1.5", "lots"])
def test_bad_quota_warning_is_a_config_error(value: str) -> None:
    """quota_warning must be a share above 0 and at most 100 %."""
    text = ("vantage: v\ntargets:\n  - name: t\n    host: 127.0.0.2\n    auth: {username: u, password_env: P}\n"
            f"    imap: {{quota_warning: '{value}'}}\n")
    with pytest.raises(ConfigError) as raised:
        load_text(text, "m.yaml", {"P": "x"})
    assert raised.value.problems == [f"m.yaml:6: targets[0].imap.quota_warning: must be a share above 0 and at most "
                                     f"100% (e.g. 90% or 0.9), got '{value}'"]


def _doveadm(lab: Lab, *args: str) -> str:
    done = subprocess.run(["doveadm", "-c", lab.env["LAB_DOVECOT_CONFIG"], *args], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _deliver(lab: Lab, count: int) -> None:
    """Mail to the quota user through the lab's own port 25, as any sender would."""
    for _ in range(count):
        done = subprocess.run(["swaks", "--server", f"{lab.host}:25", "--to", lab.env["LAB_FULL_USER"], "--from",
                               lab.user, "--silent", "2"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def empty_full_mailbox(lab: Lab) -> Iterator[None]:
    def empty() -> None:
        _doveadm(lab, "expunge", "-u", lab.env["LAB_FULL_USER"], "mailbox", "INBOX", "all")
        _doveadm(lab, "quota", "recalc", "-u", lab.env["LAB_FULL_USER"])
    empty()
    try:
        yield
    finally:
        empty()


def _config(lab: Lab, *checks: str) -> Config:
    user = lab.env["LAB_FULL_USER"]
    text = f"""
vantage: test
probe_key: {{file: {lab.env["LAB_PROBE_KEY_FILE"]}}}
targets:
  - name: full
    host: {lab.host}
    tls: {{ca_file: {lab.ca}, server_name: {lab.server_name}}}
    auth: {{username: {user}, password_file: {lab.env["LAB_FULL_PASSWORD_FILE"]}}}
""" + "".join(f"    {check}\n" for check in checks)
    return load_text(text, "quota.yaml")


async def _run(config: Config, key: str) -> Result:
    target = config.targets[0]
    check = next(c for c in target.checks if c.key == key)
    return await Runner("test", probes=probes_for(config)).execute(target, check)


def _dovecot_quota(lab: Lab) -> dict[str, tuple[int, int]]:
    """`doveadm quota get`: {resource: (value, limit)}."""
    rows = re.findall(r"^User quota\s+(\w+)\s+(\d+)\s+(\d+)", _doveadm(lab, "quota", "get", "-u",
                                                                    lab.env["LAB_FULL_USER"]), re.MULTILINE)
    return {name: (int(value), int(limit)) for name, value, limit in rows}


@pytest.mark.lab
async def test_quota_metrics_match_doveadm(lab: Lab, empty_full_mailbox: None) -> None:
    """After two deliveries the imap check's quota series say what `doveadm quota get` says."""
    _deliver(lab, 2)
    config = _config(lab, "imap: {port: 993, tls: implicit, quota_warning: 60%}")
    result = await _run(config, "imap")
    assert result.ok, result.detail
    assert result.quota == _dovecot_quota(lab)
    registry = CollectorRegistry()
    metrics = Metrics(registry, "test")
    metrics.add_target(config.targets[0])
    metrics.record(result)
    labels = {"vantage": "test", "target": "full", "check": "imap", "via": ""}
    messages, limit = result.quota["MESSAGE"]
    assert registry.get_sample_value("mailmon_mailbox_quota_used_ratio", {**labels, "resource": "MESSAGE"}) == \
        messages / limit == 2 / int(lab.env["LAB_FULL_QUOTA_MESSAGES"])
    assert registry.get_sample_value("mailmon_mailbox_quota_limit", {**labels, "resource": "STORAGE"}) == \
        result.quota["STORAGE"][1] * 1024
    assert registry.get_sample_value("mailmon_mailbox_quota_warning_ratio", labels) == 0.6


@pytest.mark.lab
async def test_full_mailbox_fails_the_round_trip_as_mailbox_full(lab: Lab, empty_full_mailbox: None) -> None:
    """A full mailbox refuses the probe at RCPT (552 5.2.2): rcpt/mailbox_full at once, not a delivery timeout."""
    _deliver(lab, int(lab.env["LAB_FULL_QUOTA_MESSAGES"]))
    config = _config(lab, "smtp: {port: 587, tls: starttls}", "imap: {port: 993, tls: implicit}",
                     "roundtrip: {via: imap, timeout: 20s}")
    result = await _run(config, "roundtrip:imap")
    assert (result.stage, result.reason) == ("rcpt", "mailbox_full"), result.detail
    assert result.smtp_code == 552 and "5.2.2" in result.detail
    assert result.duration_seconds < 10


@pytest.mark.lab
async def test_smtp_dry_run_to_a_full_mailbox_is_mailbox_full(lab: Lab, empty_full_mailbox: None) -> None:
    """The smtp check's MAIL/RCPT dry run to a full mailbox says mailbox_full."""
    _deliver(lab, int(lab.env["LAB_FULL_QUOTA_MESSAGES"]))
    user = lab.env["LAB_FULL_USER"]
    config = _config(lab, f"smtp: {{port: 587, tls: starttls, mail_from: {user}, rcpt_to: {user}}}")
    result = await _run(config, "smtp")
    assert (result.stage, result.reason) == ("rcpt", "mailbox_full"), result.detail


def test_summary_names_a_nearly_full_mailbox(lab: Lab) -> None:
    """Above its quota_warning, the status summary says how full the mailbox is and what follows."""
    from monitor.app import _quota_note

    target = _config(lab, "imap: {port: 993, tls: implicit, quota_warning: 90%}").targets[0]
    full = builders.result("full", "imap", quota={"MESSAGE": (19, 20), "STORAGE": (10, 1000)})
    roomy = builders.result("full", "imap", quota={"MESSAGE": (2, 20)})
    assert _quota_note(target, [full]) == (" The INBOX mailbox is 95% full (MESSAGE 19 of 20): new mail may be "
                                           "refused.")
    assert _quota_note(target, [roomy]) == ""
