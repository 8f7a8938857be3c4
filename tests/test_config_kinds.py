"""One settings type per check kind (monitor/config/kinds.py): what each kind cannot be built with, and the
probe table refusing a check of another kind."""

from __future__ import annotations

from typing import Any

import pytest

from monitor.config import CheckSettings, ImapSettings, RoundTripSettings, SmtpSettings, load_text
from monitor.probes import PROBES
from monitor.result import ProbeContext
from tests import builders

_COMMON: dict[str, Any] = {"port": 993, "tls_mode": "implicit", "interval": 60.0, "timeout": 15.0}


def test_a_round_trip_needs_its_read_back_protocol_and_recipient() -> None:
    """A round trip without `via` or `recipient` cannot be built (the round trip asserted both before)."""
    with pytest.raises(TypeError, match="recipient"):
        RoundTripSettings(**_COMMON, via="imap")


def test_a_kind_has_no_fields_of_another() -> None:
    """An IMAP check takes no SMTP dry-run fields, and an SMTP check no round-trip ones (mypy rejects both too)."""
    with pytest.raises(TypeError, match="mail_from"):
        ImapSettings(**_COMMON, mail_from="a@example.test")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="recipient"):
        SmtpSettings(**_COMMON, recipient="a@example.test")  # type: ignore[call-arg]


def test_the_kind_name_is_fixed_by_the_type() -> None:
    """`name` is not a field: each type has its own, and the label and key follow it."""
    trip = RoundTripSettings(**_COMMON, via="pop3", recipient="a@example.test", ip_family="ipv6")
    assert (trip.name, trip.label, trip.key) == ("roundtrip", "roundtrip", "roundtrip:pop3@ipv6")
    profile = SmtpSettings(**_COMMON, profile="outlook")
    assert (profile.name, profile.label, profile.key) == ("smtp", "smtp:outlook", "smtp:outlook")


def test_the_loader_builds_each_kind_its_type() -> None:
    """A target's smtp, imap and round-trip blocks come back as their own types."""
    text = ("vantage: v\nprobe_key: {env: K}\ntargets:\n  - name: a\n    host: h\n"
            "    auth: {username: u@h, password_env: P}\n    smtp:\n    imap:\n    roundtrip:\n")
    config = load_text(text, "c.yml", environ={"P": "x", "K": "k" * 16})
    assert [type(c) for c in config.targets[0].checks] == [SmtpSettings, ImapSettings, RoundTripSettings]


async def test_the_probe_table_refuses_a_check_of_another_kind() -> None:
    """A table entry given another kind's settings says so at once instead of failing somewhere inside."""
    imap: CheckSettings = builders.check("imap")
    with pytest.raises(TypeError, match="SmtpSettings probe was given a imap check"):
        await PROBES["smtp"](ProbeContext(), builders.target("t", imap), imap)
