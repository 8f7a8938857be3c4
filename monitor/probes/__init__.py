"""The probes: one module per protocol, dispatched by check name.

A probe does the protocol exchange and raises on failure; it never builds a Result or touches metrics.
That is the runner's job, in one place for all probes. Each probe takes its own kind's settings
(`SmtpSettings`, `ImapSettings`, ...); `for_kind` makes it a table entry that takes any check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from monitor.config import (
    CheckBase,
    CheckSettings,
    Config,
    ImapSettings,
    Pop3Settings,
    RoundTripSettings,
    SmtpSettings,
    Target,
)
from monitor.probes import imap, pop3
from monitor.probes.mx import smtp_or_mx
from monitor.probes.roundtrip import RoundTrip
from monitor.result import ProbeContext

__all__ = ["PROBES", "Probe", "for_kind", "probes_for"]

Probe = Callable[[ProbeContext, Target, CheckSettings], Awaitable[None]]
S = TypeVar("S", bound=CheckBase)


def for_kind(kind: type[S], probe: Callable[[ProbeContext, Target, S], Awaitable[None]]) -> Probe:
    """`probe`, which takes the settings of one kind, as a table entry: the table is looked up by the check's
    name, which its settings type fixes, so a mismatch is a bug in the table, said at once."""
    def entry(ctx: ProbeContext, target: Target, check: CheckSettings) -> Awaitable[None]:
        if not isinstance(check, kind):
            raise TypeError(f"the {kind.__name__} probe was given a {check.name} check")
        return probe(ctx, target, check)
    return entry


PROBES: dict[str, Probe] = {
    # An MX target's smtp check walks the domain's MX hosts (monitor/probes/mx.py).
    "smtp": for_kind(SmtpSettings, smtp_or_mx),
    "imap": for_kind(ImapSettings, imap.probe),
    "pop3": for_kind(Pop3Settings, pop3.probe),
}


def probes_for(config: Config) -> dict[str, Probe]:
    """The probe table for a configuration: the fixed probes, plus the round trip when a probe key is set."""
    table = dict(PROBES)
    if config.probe_key is not None:
        roundtrip = RoundTrip(config.probe_key, config.vantage, targets={t.name: t for t in config.targets})
        table["roundtrip"] = for_kind(RoundTripSettings, roundtrip)
    return table
