"""The probes: one module per protocol, one async function type, dispatched by check name.

A probe does the protocol exchange and raises on failure; it never builds a Result or touches metrics.
That is the runner's job, in one place for all probes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from monitor.config import CheckSettings, Target
from monitor.probes import imap, pop3, smtp
from monitor.result import ProbeContext

__all__ = ["PROBES", "Probe"]

Probe = Callable[[ProbeContext, Target, CheckSettings], Awaitable[None]]

PROBES: dict[str, Probe] = {
    "smtp": smtp.probe,
    "imap": imap.probe,
    "pop3": pop3.probe,
}
