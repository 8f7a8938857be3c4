"""After a failed token request: the checks of the same moment share the failure (no stampede on an identity
provider that fails fast), and a token that still works is used until it expires when its early refresh fails."""

from __future__ import annotations

import asyncio

import pytest

from monitor.errors import ProbeError
from tests.fakes.token_endpoint import TokenEndpoint, error, ok
from tests.test_signin_tokens import FakeClock, settings, source


async def test_checks_arriving_after_a_failure_get_it_without_a_new_request() -> None:
    """Nine checks reaching sign-in one after another within the hold: one request, nine failures."""
    async with TokenEndpoint(lambda form: error(500, "server_error")) as idp:
        clock = FakeClock()
        tokens = source(settings(idp.url), clock)
        for _ in range(9):
            with pytest.raises(ProbeError) as failure:
                await tokens.credential(5.0)
            assert (failure.value.stage, failure.value.reason) == ("token", "reply_5xx")
            assert "server_error" in failure.value.detail
            clock.now += 0.5
    assert len(idp.requests) == 1


async def test_a_failure_is_held_only_briefly() -> None:
    """Past the hold, the next check asks the identity provider again."""
    replies = iter([error(500, "server_error"), ok("t1")])
    async with TokenEndpoint(lambda form: next(replies)) as idp:
        clock = FakeClock()
        tokens = source(settings(idp.url), clock)
        with pytest.raises(ProbeError):
            await tokens.credential(5.0)
        clock.now += 6
        assert (await tokens.credential(5.0)).secret.reveal() == "t1"
    assert len(idp.requests) == 2


async def test_a_failed_early_refresh_keeps_the_token_that_still_works() -> None:
    """Due for refresh (10 % before expiry) but the IdP fails: the old token serves until it expires."""
    replies = iter([ok("t1", expires_in=100), error(500, "server_error"), error(500, "server_error")])
    async with TokenEndpoint(lambda form: next(replies)) as idp:
        clock = FakeClock()
        tokens = source(settings(idp.url), clock)
        await tokens.credential(5.0)
        clock.now += 95  # past the refresh point (90), before expiry (100)
        assert (await tokens.credential(5.0)).secret.reveal() == "t1"
        clock.now += 10  # expired: nothing to fall back on
        with pytest.raises(ProbeError):
            await tokens.credential(5.0)
    assert len(idp.requests) == 3


async def test_concurrent_checks_still_share_one_failing_request() -> None:
    async with TokenEndpoint(lambda form: error(401, "invalid_client")) as idp:
        tokens = source(settings(idp.url), FakeClock())
        results = await asyncio.gather(*(tokens.credential(5.0) for _ in range(9)), return_exceptions=True)
    assert all(isinstance(r, ProbeError) and r.reason == "auth_rejected" for r in results)
    assert len(idp.requests) == 1
