"""What a check sends to log in (`Credential`), and where it gets it from (`CredentialSource`).

A probe never reads a password or a token itself: it asks the target's source for a credential when it reaches
AUTH, and, when the server rejects a bearer token that had not expired yet, asks the source once to `renew` it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Protocol

from monitor.config import Secret

__all__ = ["Credential", "CredentialSource", "PasswordSource"]


@dataclass(frozen=True)
class Credential:
    """A username and what proves it: a password, or an OAuth2 bearer token (with its expiry, when known)."""

    username: str
    secret: Secret
    kind: Literal["password", "bearer"]
    expires_at: float | None = None

    def expired(self, now: float | None = None) -> bool:
        """True when the token's lifetime is known to be over (a password never expires here)."""
        if self.expires_at is None:
            return False
        return (time.time() if now is None else now) >= self.expires_at


class CredentialSource(Protocol):
    """Where a check gets its credential. `timeout` bounds any request it makes (the check's time left)."""

    @property
    def uses_token(self) -> bool:
        """True when getting the credential may talk to an identity provider (the probe times a `token` step)."""

    async def credential(self, timeout: float) -> Credential:
        """The credential to send now; raises ProbeError(stage `token`) when it cannot be had."""

    async def renew(self, rejected: Credential, timeout: float) -> Credential | None:
        """A fresh credential after the server rejected `rejected` (at most one forced refresh), or None when
        renewing cannot help (a password, or a token that was already expired)."""


class PasswordSource:
    """Today's behaviour: the configured password, always at hand, never renewed."""

    uses_token = False

    def __init__(self, username: str, password: Secret) -> None:
        self._credential = Credential(username, password, "password")

    async def credential(self, timeout: float) -> Credential:
        return self._credential

    async def renew(self, rejected: Credential, timeout: float) -> Credential | None:
        return None
