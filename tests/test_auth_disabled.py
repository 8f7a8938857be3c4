"""Provider policy replies to a password login read `auth/auth_disabled`, a wrong password `auth/auth_rejected`."""

from __future__ import annotations

import pytest

from monitor.probes.signin import policy_refusal
from tests.conftest import local_target, run_once
from tests.fakes.policy_smtp import (
    EXCHANGE_BASIC_DISABLED,
    EXCHANGE_TENANT_DISABLED,
    GMAIL_APP_PASSWORD,
    WRONG_PASSWORD,
    PolicySmtp,
)


@pytest.mark.parametrize("reply", [EXCHANGE_BASIC_DISABLED, EXCHANGE_TENANT_DISABLED, GMAIL_APP_PASSWORD],
                         ids=["exchange-basic-disabled", "exchange-tenant-disabled", "gmail-app-password"])
async def test_policy_refusal_of_plain_is_auth_disabled(reply: str) -> None:
    """AUTH PLAIN answered by a provider's "basic authentication is disabled" is auth_disabled, with its words."""
    async with PolicySmtp(reply) as fake:
        result = await run_once(local_target("smtp", fake.port))
    assert (result.stage, result.reason) == ("auth", "auth_disabled")
    assert reply.split(" ", 1)[1].split(".")[0] in result.detail


async def test_wrong_password_stays_auth_rejected() -> None:
    """The same server answering 535 5.7.8 (credentials invalid) is still auth_rejected."""
    async with PolicySmtp(WRONG_PASSWORD) as fake:
        result = await run_once(local_target("smtp", fake.port))
    assert (result.stage, result.reason) == ("auth", "auth_rejected")


@pytest.mark.parametrize(("text", "disabled"), [
    ("LOGIN failed.", False),
    ("[ALERT] Application-specific password required: https://support.google.com/accounts/answer/185833", True),
    ("5.7.3 Authentication unsuccessful", False),
    ("550 5.7.3 SMTP client authentication is disabled for this mailbox", True),
])
def test_policy_words_are_recognised_in_imap_and_pop3_replies_too(text: str, disabled: bool) -> None:
    """The matcher used by every protocol: policy words yes, a plain failure no."""
    assert policy_refusal(text) is disabled
