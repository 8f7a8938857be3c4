"""Full mailboxes: IMAP quota as Dovecot reports it, and mail refused for quota named `mailbox_full`, not an outage."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.config import Config, ConfigError, load_text
from monitor.errors import smtp_reply_reason
from monitor.metrics import Metrics
from monitor.probes import probes_for
from monitor.probes.imap import parse_quota
from monitor.probes.undelivered import over_quota
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


@pytest.mark.parametrize(("quota", "size", "full"), [
    ({"MESSAGE": (3, 3)}, 100, ("MESSAGE", (3, 3))),
    ({"MESSAGE": (2, 3)}, 100, None),
    ({"STORAGE": (1023, 1024)}, 1024, None),
    ({"STORAGE": (1023, 1024)}, 1025, ("STORAGE", (1023, 1024))),
    ({}, 100, None),
])
def test_over_quota_leaves_room_for_exactly_one_probe(quota: dict[str, tuple[int, int]], size: int,
                                                      full: tuple[str, tuple[int, int]] | None) -> None:
    """A mailbox is too full for the probe when one more message (MESSAGE) or its KiB (STORAGE) would pass the limit."""
    assert over_quota(quota, size) == full


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
    from monitor.web.status import quota_note as _quota_note

    target = _config(lab, "imap: {port: 993, tls: implicit, quota_warning: 90%}").targets[0]
    full = builders.result("full", "imap", quota={"MESSAGE": (19, 20), "STORAGE": (10, 1000)})
    roomy = builders.result("full", "imap", quota={"MESSAGE": (2, 20)})
    assert _quota_note(target, [full]) == (" The INBOX mailbox is 95% full (MESSAGE 19 of 20): new mail may be "
                                           "refused.")
    assert _quota_note(target, [roomy]) == ""


@pytest.fixture
def quota_late(lab: Lab) -> Iterator[None]:
    """Postfix without the quota policy at RCPT: a full mailbox is noticed only by Dovecot's LMTP, after `250`."""
    lab.control("fault", "quota-late", "on")
    try:
        yield
    finally:
        lab.control("fault", "quota-late", "off")


@pytest.mark.lab
async def test_lmtp_over_quota_bounce_fails_the_round_trip_as_mailbox_full(
        lab: Lab, empty_full_mailbox: None, quota_late: None) -> None:
    """Accepted with 250, refused by LMTP for quota (a bounce): delivery/mailbox_full with the quota, not
    not_delivered; the Postfix log shows the LMTP refusal that the classification stands for."""
    _deliver(lab, int(lab.env["LAB_FULL_QUOTA_MESSAGES"]))
    config = _config(lab, "smtp: {port: 587, tls: starttls}", "imap: {port: 993, tls: implicit}",
                     "roundtrip: {via: imap, timeout: 8s}")
    result = await _run(config, "roundtrip:imap")
    assert (result.stage, result.reason) == ("delivery", "mailbox_full"), result.detail
    assert result.smtp_code == 250
    assert result.quota["MESSAGE"] == (3, 3) and "MESSAGE 3 of 3" in result.detail
    assert result.queue_id is not None
    log = Path(lab.env["LAB_POSTFIX_LOG"]).read_text()
    assert re.search(rf"{result.queue_id}: to=<{lab.env['LAB_FULL_USER']}>.*status=bounced .*5\.2\.2", log), \
        "no LMTP over-quota bounce for the probe in the Postfix log"


@pytest.mark.lab
async def test_probe_lost_with_room_in_the_mailbox_stays_not_delivered(lab: Lab, empty_full_mailbox: None) -> None:
    """A held probe (queue, not quota) with quota to spare is still not_delivered: the quota alone never blames."""
    lab.control("fault", "hold", "on")
    try:
        config = _config(lab, "smtp: {port: 587, tls: starttls}", "imap: {port: 993, tls: implicit}",
                         "roundtrip: {via: imap, timeout: 6s}")
        result = await _run(config, "roundtrip:imap")
    finally:
        lab.control("fault", "hold", "off")
    assert (result.stage, result.reason) == ("delivery", "not_delivered"), result.detail


@pytest.mark.lab
async def test_bounce_to_the_submitting_target_names_the_full_mailbox(lab: Lab, empty_full_mailbox: None,
                                                                      quota_late: None) -> None:
    """A loop (submit_via) read back over POP3, which has no quota to ask: the DSN that LMTP's refusal sent to the
    sender's mailbox says 5.2.2, so the round trip is delivery/mailbox_full; that DSN is deleted, nothing else."""
    _deliver(lab, int(lab.env["LAB_FULL_QUOTA_MESSAGES"]))
    tls = f"tls: {{ca_file: {lab.ca}, server_name: {lab.server_name}}}"
    config = load_text(f"""vantage: test
probe_key: {{file: {lab.env["LAB_PROBE_KEY_FILE"]}}}
targets:
  - name: sender
    host: {lab.host}
    {tls}
    auth: {{username: {lab.env["LAB_OTHER_USER"]}, password_file: {lab.env["LAB_OTHER_PASSWORD_FILE"]}}}
    smtp: {{port: 587, tls: starttls}}
    imap: {{port: 993, tls: implicit}}
  - name: full
    host: {lab.host}
    {tls}
    auth: {{username: {lab.env["LAB_FULL_USER"]}, password_file: {lab.env["LAB_FULL_PASSWORD_FILE"]}}}
    pop3: {{port: 995, tls: implicit}}
    roundtrip: {{via: pop3, submit_via: sender, timeout: 8s}}
""", "loop.yaml")
    before = {p.name for p in Path(lab.env["LAB_OTHER_MAILDIR"], "new").iterdir()}
    receiver = config.targets[1]
    result = await Runner("test", probes=probes_for(config)).execute(receiver, receiver.checks[-1])
    assert (result.stage, result.reason) == ("delivery", "mailbox_full"), result.detail
    assert "bounced to the sender (sender): Status 5.2.2" in result.detail
    after = {p.name for p in Path(lab.env["LAB_OTHER_MAILDIR"], "new").iterdir()}
    assert after <= before, "the bounce was left in the sender's mailbox"
