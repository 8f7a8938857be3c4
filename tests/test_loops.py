"""Loops between targets: submit through one target (`roundtrip.submit_via`), read back at another."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import Config, ConfigError, load_text
from monitor.probes import probes_for
from monitor.runner import Runner
from tests.conftest import Lab
from tests.fakes.dns_server import DnsServer
from tests.test_authres import lab_dns  # noqa: F401  (fixture)
from tests.test_roundtrip_lab import clean_inbox  # noqa: F401  (fixture)

_ENV = {"P": "x", "K": "a probe key of sixteen characters"}


def _two(receiver_roundtrip: str, sender_block: str = "    smtp: {}\n") -> str:
    return f"""vantage: v
probe_key: {{env: K}}
targets:
  - name: provider-a
    host: a.example
    auth: {{username: alice@a.example, password_env: P}}
{sender_block}  - name: provider-b
    host: b.example
    auth: {{username: bob@b.example, password_env: P}}
    imap: {{}}
    roundtrip: {receiver_roundtrip}
"""


def test_sender_defaults_to_the_submitting_targets_user() -> None:
    """submit_via without sender: the probe comes from the submitting target's user, to this target's user."""
    target = load_text(_two("{via: imap, submit_via: provider-a}"), "l.yaml", _ENV).targets[1]
    trip = next(c for c in target.checks if c.name == "roundtrip")
    assert (trip.submit_via, trip.sender, trip.recipient) == ("provider-a", "alice@a.example", "bob@b.example")


def test_an_explicit_sender_is_kept() -> None:
    target = load_text(_two("{via: imap, submit_via: provider-a, sender: x@a.example}"), "l.yaml", _ENV).targets[1]
    assert next(c for c in target.checks if c.name == "roundtrip").sender == "x@a.example"


@pytest.mark.parametrize(("roundtrip", "sender_block", "problem"), [
    ("{via: imap, submit_via: nobody}", "    smtp: {}\n",
     "l.yaml:12: targets[1].roundtrip.submit_via: no target named 'nobody'"),
    ("{via: imap, submit_via: provider-a}", "    imap: {}\n",
     "l.yaml:12: targets[1].roundtrip.submit_via: target 'provider-a' has no smtp block to submit through"),
])
def test_bad_submit_via_is_a_config_error(roundtrip: str, sender_block: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_text(_two(roundtrip, sender_block), "l.yaml", _ENV)
    assert problem in raised.value.problems, raised.value.problems


def _lab_loop(lab: Lab, port: int) -> Config:
    """other@lab.test submits (through `port`), probe@lab.test reads back: two providers, one lab."""
    tls = f"tls: {{ca_file: {lab.ca}, server_name: {lab.server_name}}}"
    return load_text(f"""vantage: test
probe_key: {{file: {lab.env["LAB_PROBE_KEY_FILE"]}}}
targets:
  - name: sender
    host: {lab.host}
    {tls}
    auth: {{username: {lab.env["LAB_OTHER_USER"]}, password_file: {lab.env["LAB_OTHER_PASSWORD_FILE"]}}}
    smtp: {{port: {port}, tls: starttls}}
  - name: receiver
    host: {lab.host}
    {tls}
    auth: {{username: {lab.user}, password_file: {lab.env["LAB_PASSWORD_FILE"]}}}
    imap: {{port: 993, tls: implicit}}
    roundtrip: {{via: imap, submit_via: sender, timeout: 20s}}
""", "loop.yaml")


@pytest.mark.lab
async def test_loop_from_a_signing_sender_to_a_verifying_receiver(lab: Lab, clean_inbox: None,  # noqa: F811
                                                                  lab_dns: DnsServer) -> None:  # noqa: F811
    """Submitted as other@ through the DKIM-signing port, read back as probe@: delivered, DKIM, SPF and DMARC pass,
    4 hops."""
    config = _lab_loop(lab, int(lab.env["LAB_SIGNED_SUBMISSION_PORT"]))
    receiver = config.targets[1]
    trip = next(c for c in receiver.checks if c.name == "roundtrip")
    result = await Runner("test", probes=probes_for(config)).execute(receiver, trip)
    assert result.ok, result.detail
    assert result.auth_results == {"dkim": "pass", "spf": "pass", "dmarc": "pass"} and result.hops == 4
    assert any("submitting through target sender" in line for line in result.transcript)
    assert not Path(lab.env["LAB_OTHER_MAILDIR"], "new").exists() or all(
        b"X-Mailmon-Probe" not in p.read_bytes() for p in Path(lab.env["LAB_OTHER_MAILDIR"], "new").iterdir())
