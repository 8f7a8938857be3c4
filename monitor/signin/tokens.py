"""One token per identity, shared by every check that signs in as it: cached, refreshed ahead of expiry, one
request at a time, and renewed once when a server rejects a token that had not expired yet.

The identity registry lives as long as the process, so a config reload that leaves an identity unchanged keeps
its token (equal settings are the same identity), and a reload that changes it starts afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from monitor.config import Auth
from monitor.errors import ProbeError
from monitor.signin.credential import Credential, CredentialSource, PasswordSource
from monitor.signin.grants import Token, fetch
from monitor.signin.settings import OAuth2Settings
from monitor.steps import Reason

__all__ = ["IDENTITIES", "Identities", "TokenEvent", "TokenSource", "source_for"]

# Refresh this share of a token's lifetime before it ends, but never more than this many seconds before: a
# one-hour token is renewed 5 minutes early, a 5-second lab token half a second early.
_AHEAD_SHARE = 0.1
_AHEAD_MAX = 300.0
# After a failed token request, checks that need a token within this many seconds get the same failure instead of
# asking again: the checks of one cycle reach sign-in moments apart, and an identity provider that fails fast
# (refused, 500, invalid_client) must not get one request from each of them.
_FAILURE_HOLD = 5.0


@dataclass(frozen=True)
class TokenEvent:
    """One token request's outcome, for metrics: `outcome` is `success` or the failure's reason."""

    identity: str
    grant: str
    outcome: Reason | Literal["success"]  # a reason of stage `token` (steps.reasons_at("token")) on failure
    expires_at: float | None


Fetch = Callable[[float], Awaitable[Token]]


class TokenSource:
    """The token of one identity. `clock` is wall time (token expiry is wall time); tests pass a fake one."""

    uses_token = True

    def __init__(self, username: str, grant: str, fetch_token: Fetch, clock: Callable[[], float] = time.time,
                 observer: Callable[[TokenEvent], None] | None = None) -> None:
        self.username = username
        self.grant = grant
        self._fetch = fetch_token
        self._clock = clock
        self.observer = observer
        self._token: Token | None = None
        self._refresh_at = 0.0
        self._flight: asyncio.Task[Token] | None = None
        self._failure: tuple[float, ProbeError] | None = None  # the last request's failure and when
        self.requests = 0  # token requests made (tests, debugging)

    def _credential(self, token: Token) -> Credential:
        return Credential(self.username, token.value, "bearer", token.expires_at)

    async def credential(self, timeout: float) -> Credential:
        token = self._token
        now = self._clock()
        if token is not None and now < self._refresh_at:
            return self._credential(token)
        try:
            self._recent_failure(now)
            return self._credential(await self._refresh(timeout))
        except ProbeError:
            if token is not None and token.expires_at is not None and self._clock() < token.expires_at:
                # The early refresh failed, but the token we have still works: use it until it expires (the
                # failed request is counted by the observer, so the metrics still show the IdP's trouble).
                return self._credential(token)
            raise

    def _recent_failure(self, now: float) -> None:
        """Raise the last request's failure again while it is recent (see _FAILURE_HOLD)."""
        if self._failure is not None and (self._flight is None or self._flight.done()):
            at, error = self._failure
            if 0.0 <= now - at < _FAILURE_HOLD:
                raise ProbeError(error.stage, error.reason, error.detail)

    async def renew(self, rejected: Credential, timeout: float) -> Credential | None:
        """One forced refresh after a server rejected `rejected`, unless that token had expired anyway (then a
        new one would not change the server's mind about us) or another check renewed it already."""
        if rejected.expired(self._clock()):
            return None
        token = self._token
        if token is not None and token.value != rejected.secret:
            return self._credential(token)  # someone refreshed since: use theirs
        if self._flight is None or self._flight.done():
            self._token = None
        return self._credential(await self._refresh(timeout))

    async def _refresh(self, timeout: float) -> Token:
        """Join the running request for this identity, or start one: never two at once."""
        flight = self._flight
        loop = asyncio.get_running_loop()
        if flight is None or flight.done() or flight.get_loop() is not loop:
            flight = self._flight = loop.create_task(self._request(timeout), name=f"token {self.username}")
        # shield: a check whose deadline ends while waiting must not cancel the request others wait for too.
        return await asyncio.shield(flight)

    async def _request(self, timeout: float) -> Token:
        self.requests += 1
        try:
            token = await self._fetch(timeout)
        except ProbeError as exc:
            self._failure = (self._clock(), exc)
            self._notify(exc.reason, None)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = ProbeError("token", "internal", f"{type(exc).__name__}: {exc}"[:300])
            self._failure = (self._clock(), error)
            self._notify("internal", None)
            raise error from None
        now = self._clock()
        if token.expires_at is None:
            self._refresh_at = float("inf")  # until a server rejects it
        else:
            lifetime = max(token.expires_at - now, 0.0)
            self._refresh_at = token.expires_at - min(lifetime * _AHEAD_SHARE, _AHEAD_MAX)
        self._token = token
        self._failure = None
        self._notify("success", token.expires_at)
        return token

    def _notify(self, outcome: Reason | Literal["success"], expires_at: float | None) -> None:
        if self.observer is not None:
            self.observer(TokenEvent(self.username, self.grant, outcome, expires_at))


class Identities:
    """The credential source of every identity the configuration signs in as, kept across reloads. `clock` is
    the sources' wall clock (tests swap in a fake one to cross token lifetimes without sleeping)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._sources: dict[tuple[str, OAuth2Settings], TokenSource] = {}
        self.observer: Callable[[TokenEvent], None] | None = None
        self.clock = clock

    def _now(self) -> float:
        return self.clock()

    def source(self, auth: Auth) -> CredentialSource:
        if auth.oauth2 is None:
            return PasswordSource(auth.username, auth.password)
        key = (auth.username, auth.oauth2)
        source = self._sources.get(key)
        if source is None:
            settings = auth.oauth2
            username = auth.username

            async def fetch_token(timeout: float) -> Token:
                real, mine = time.time(), self.clock()
                token = await fetch(settings, username, timeout)
                if token.expires_at is None or self.clock is time.time:
                    return token
                # fetch() stamps expiry with the real clock as the request starts; the sources compare it with
                # `clock`, so move it by the two clocks' difference at that moment (not after the reply: a slow
                # reply must not shorten the lifetime).
                return Token(token.value, token.expires_at - real + mine)

            source = self._sources[key] = TokenSource(username, settings.grant, fetch_token, clock=self._now,
                                                      observer=self._observe)
        return source

    def _observe(self, event: TokenEvent) -> None:
        if self.observer is not None:
            self.observer(event)

    def retain(self, auths: list[Auth]) -> None:
        """Forget identities no longer configured (after a reload); the others keep their tokens."""
        keep = {(a.username, a.oauth2) for a in auths if a.oauth2 is not None}
        for key in list(self._sources):
            if key not in keep:
                del self._sources[key]

    def clear(self) -> None:
        self._sources.clear()


IDENTITIES = Identities()


def source_for(auth: Auth) -> CredentialSource:
    """The credential source of `auth` in the process-wide registry."""
    return IDENTITIES.source(auth)
