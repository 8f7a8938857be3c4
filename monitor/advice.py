"""Warnings about a valid configuration that will still mislead: settings that work until the server does
something the RFCs allow. `validate` and `check` print them; they never fail the command."""

from __future__ import annotations

from monitor.config import CheckSettings, Config, Target
from monitor.durations import format_duration

__all__ = ["AUTH_TIMEOUT_COMMON", "AUTH_TIMEOUT_DOVECOT", "config_warnings"]

# Servers delay a failed login on purpose (anti brute force): 3-5 s is common, Dovecot's auth penalty grows to
# 15 s per client IP. A check's timeout covers its whole session, so it needs the delay plus the rest of the
# session: below the first figure a wrong password of a delaying server ends as `auth/timeout` instead of
# `auth/auth_rejected`; the second covers Dovecot's maximum penalty.
AUTH_TIMEOUT_COMMON = 10.0
AUTH_TIMEOUT_DOVECOT = 20.0


def _logs_in(target: Target, check: CheckSettings) -> bool:
    if target.auth is None:
        return False
    return check.use_auth or check.name != "smtp"


def config_warnings(config: Config) -> list[str]:
    """One sentence per questionable setting, naming the target and check."""
    warnings = []
    for target in config.targets:
        for check in target.checks:
            if _logs_in(target, check) and check.timeout < AUTH_TIMEOUT_COMMON:
                warnings.append(
                    f"target {target.name}, check {check.key}: timeout {format_duration(check.timeout)} is too short "
                    f"for servers that delay failed logins (3-5 s is common, Dovecot up to 15 s): a wrong password "
                    f"would end as auth/timeout; {format_duration(AUTH_TIMEOUT_COMMON)} covers common delays, "
                    f"{format_duration(AUTH_TIMEOUT_DOVECOT)} Dovecot's maximum")
    return warnings
