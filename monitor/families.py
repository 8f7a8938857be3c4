"""Address families (`ip_family: both | ipv4 | ipv6`): one check per family, each its own series.

A dual-stack server can be broken on one family only ("IMAP over IPv6 times out, IPv4 is fine"), and a client
library that falls back from one family to the other hides it. A check with `ip_family` connects only over that
family; `both` turns the check into two checks, one per family, so the families never flap one series. The
`ip_family` label (absent on checks without the setting) and the verdict summary ("IMAP over IPv6 fails ...")
say which family failed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.config import CheckSettings

__all__ = ["FAMILIES", "IP_FAMILY_CHOICES", "address_family", "expand", "family_name"]

# What a check connects over; `both` is a config shorthand that `expand` turns into these two.
FAMILIES = ("ipv4", "ipv6")
IP_FAMILY_CHOICES = ("both", *FAMILIES)
_SOCKET_FAMILY = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_NAMES = {"ipv4": "IPv4", "ipv6": "IPv6"}


def address_family(ip_family: str | None) -> int:
    """The socket family to resolve and connect with: AF_UNSPEC (any) when the check has no `ip_family`."""
    return _SOCKET_FAMILY.get(ip_family or "", socket.AF_UNSPEC)


def family_name(ip_family: str) -> str:
    """`IPv6` for people (summaries, details)."""
    return _NAMES.get(ip_family, ip_family)


def expand(checks: Iterable[CheckSettings], target_family: str | None) -> list[CheckSettings]:
    """Each check with its family settled: its own `ip_family`, else the target's; `both` becomes two checks
    (ipv4 first). Checks with neither keep `ip_family` None and connect over whatever the name resolves to."""
    settled: list[CheckSettings] = []
    for check in checks:
        wanted = check.ip_family or target_family
        if wanted == "both":
            settled.extend(replace(check, ip_family=family) for family in FAMILIES)
        else:
            settled.append(replace(check, ip_family=wanted))
    return settled
