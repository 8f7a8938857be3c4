"""The probes: one module per protocol, one async function type, dispatched by check name.

A probe does the protocol exchange and raises on failure; it never builds a Result or touches metrics.
That is the runner's job, in one place for all probes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from monitor.config import CheckSettings, Config, Target
from monitor.probes import imap, pop3
from monitor.probes.mx import smtp_or_mx
from monitor.probes.roundtrip import RoundTrip
from monitor.result import ProbeContext

__all__ = ["PROBES", "Probe", "probes_for"]

Probe = Callable[[ProbeContext, Target, CheckSettings], Awaitable[None]]

PROBES: dict[str, Probe] = {
    # An MX target's smtp check walks the domain's MX hosts (monitor/probes/mx.py).
    "smtp": smtp_or_mx,
    "imap": imap.probe,
    "pop3": pop3.probe,
}


def probes_for(config: Config) -> dict[str, Probe]:
    """The probe table for a configuration: the fixed probes, plus the round trip when a probe key is set."""
    table = dict(PROBES)
    if config.probe_key is not None:
        table["roundtrip"] = RoundTrip(config.probe_key, config.vantage, targets={t.name: t for t in config.targets})
    return table
