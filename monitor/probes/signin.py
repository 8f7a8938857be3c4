"""What every probe does around sign-in: ask the credential source (timing a `token` step when it may talk to an
identity provider), renew a rejected token once, and tell a policy refusal from rejected credentials.

`sign_in` is the one place of the OAuth2 login rule shared by SMTP, IMAP and POP3: one SASL exchange with the
identity's token; when the server rejects a token that had not expired (revoked), one forced renewal and one more
exchange with the same mechanism; never another mechanism, never a third try."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from monitor.config import Auth
from monitor.errors import ProbeError
from monitor.result import ProbeContext
from monitor.signin import Credential, CredentialSource, source_for
from monitor.steps import Step

__all__ = ["Exchange", "credential", "policy_refusal", "renewed", "sign_in"]

# One SASL exchange of a protocol with a given credential: None when the server accepted it, else the failure
# (returned, not raised, so that sign_in can renew the token and try once more).
Exchange = Callable[[Credential], Awaitable[ProbeError | None]]

# Replies that refuse the *mechanism* by the provider's policy, not the credentials: Exchange Online's
# "535 5.7.139 Authentication unsuccessful, basic authentication is disabled" and "... SmtpClientAuthentication is
# disabled for the Tenant", its 5.7.3 when the word "disabled" goes with it, and Gmail's "534 5.7.9
# Application-specific password required" (also an IMAP [ALERT]).
_POLICY = re.compile(
    r"5\.7\.139|basic authentication is disabled|SmtpClientAuthentication is disabled|"
    r"5\.7\.3\b.*\bdisabled|5\.7\.9\b.*application-specific password|application-specific password required",
    re.IGNORECASE)


# A token request ends this much before the check's deadline, so that a hanging identity provider is reported by
# the request itself (naming the endpoint and how long it waited), not as the check's anonymous deadline.
_TOKEN_MARGIN = 0.25


def _token_timeout(ctx: ProbeContext) -> float:
    left = ctx.time_left()
    return max(left - _TOKEN_MARGIN, left / 2)


def policy_refusal(text: str) -> bool:
    """True when a failed login's reply says the login method is switched off by policy (reason auth_disabled)."""
    return _POLICY.search(text) is not None


async def credential(ctx: ProbeContext, auth: Auth, next_step: Step) -> tuple[CredentialSource, Credential]:
    """The credential to send; a token source's time is the `token` step, then `next_step` starts."""
    source = source_for(auth)
    if source.uses_token:
        ctx.step("token")
    found = await source.credential(_token_timeout(ctx))
    ctx.step(next_step)
    return source, found


async def renewed(ctx: ProbeContext, source: CredentialSource, rejected: Credential,
                  next_step: Step) -> Credential | None:
    """After the server rejected `rejected`: one forced refresh, or None when that cannot help."""
    if not source.uses_token or rejected.expired():
        return None
    ctx.note("the server rejected a token that had not expired: renewing it once")
    ctx.step("token")
    fresh = await source.renew(rejected, _token_timeout(ctx))
    ctx.step(next_step)
    return fresh


async def sign_in(ctx: ProbeContext, auth: Auth, next_step: Step, exchange: Exchange) -> None:
    """Log in with the identity's token through `exchange`; raises the failure that stands at the end.

    A rejection (`auth_rejected`) of a token that had not expired gets one forced renewal and one more exchange;
    a policy refusal, a temporary error or an expired token's rejection is final at once."""
    source, token = await credential(ctx, auth, next_step)
    failure = await exchange(token)
    if failure is not None and failure.reason == "auth_rejected":
        fresh = await renewed(ctx, source, token, next_step)
        if fresh is not None:
            failure = await exchange(fresh)
    if failure is not None:
        raise failure
