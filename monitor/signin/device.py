"""The one-time device-code sign-in behind `mailmon auth login` (RFC 8628): how an administrator gets the first
refresh token for `oauth2.grant: refresh_token` on a headless monitoring host.

The device authorization request returns a user code and a verification URI, which are printed; the administrator
opens the URI on any device, signs in as the probe mailbox and enters the code, while this side polls the token
endpoint at the interval the provider asked for (section 3.4): `authorization_pending` waits another interval,
`slow_down` adds 5 seconds to it for good (3.5), `access_denied` and `expired_token` end the sign-in. Only a token
reply that holds a refresh token is stored, with the same atomic 0600 writer as a rotated token (grants.py); on any
failure nothing is written, so an existing refresh token survives a sign-in that went wrong.

Everything runs on the event loop (httpx via endpoint.py); `sleep` and `clock` are parameters so tests can run the
whole dialogue without waiting for real intervals. Nothing printed or raised here contains a token or a secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

from monitor.errors import ProbeError
from monitor.signin.endpoint import post_form
from monitor.signin.grants import client_auth, write_secret_file
from monitor.signin.settings import OAuth2Settings

__all__ = ["DEVICE_CODE_GRANT", "DeviceLoginError", "login"]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 3.2: "If no value is provided, clients MUST use 5 as the default" interval; 3.5: slow_down adds 5 s.
_DEFAULT_INTERVAL = 5.0
_SLOW_DOWN_STEP = 5.0
# Backing off after network or 5xx failures doubles the interval up to this (unless slow_down went beyond it).
_BACKOFF_CAP = 60.0
# When the provider does not say how long the device code lives: stop polling after this long anyway.
_DEFAULT_LIFETIME = 900.0
# Errors of the token endpoint that are steps of the dialogue (3.5), returned to us instead of raised.
_POLLING_ERRORS = frozenset({"authorization_pending", "slow_down", "access_denied", "expired_token"})


class DeviceLoginError(Exception):
    """The sign-in did not produce a refresh token; the message says why in words for the administrator."""


@dataclass(frozen=True)
class _Authorization:
    """The device authorization response (RFC 8628 3.2) in the fields we use."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


async def login(settings: OAuth2Settings, username: str, out: TextIO, *, timeout: float = 30.0,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                clock: Callable[[], float] = time.monotonic) -> str:
    """Run the device-code sign-in for a refresh-token identity and store the refresh token; returns the file.

    Raises DeviceLoginError when no refresh token was obtained (nothing is written then)."""
    if settings.grant != "refresh_token" or settings.refresh_token_file is None:
        raise DeviceLoginError("the target's auth.oauth2 is not grant: refresh_token (device sign-in is for it)")
    if settings.device_url is None:
        raise DeviceLoginError("auth.oauth2 has no device_url (the device authorization endpoint): set it, or "
                               "provider: microsoft / google")
    assert settings.token_url is not None  # the config loader insists on it for grant refresh_token
    started = clock()
    authorization = await _authorize(settings, timeout)
    _tell(out, username, authorization)
    refresh_token = await _poll(settings, authorization, timeout, sleep, clock, started)
    try:
        await asyncio.to_thread(write_secret_file, settings.refresh_token_file, refresh_token)
    except OSError as exc:
        raise DeviceLoginError(f"signed in, but cannot store the refresh token in {settings.refresh_token_file}: "
                               f"{exc.strerror}") from None
    return settings.refresh_token_file


async def _authorize(settings: OAuth2Settings, timeout: float) -> _Authorization:
    """POST the device authorization request (3.1) and read its response (3.2)."""
    assert settings.device_url is not None
    form = {**_client(settings), **({"scope": settings.scope} if settings.scope else {})}
    try:
        reply = await post_form(settings.device_url, form, timeout=timeout, ca_file=settings.ca_file)
    except ProbeError as exc:
        raise DeviceLoginError(f"the device authorization request failed: {exc.detail}") from None
    document = reply.document
    # Google's endpoint names it verification_url (before RFC 8628 was final); the RFC says verification_uri.
    uri = document.get("verification_uri") or document.get("verification_url")
    device_code, user_code = document.get("device_code"), document.get("user_code")
    if not all(isinstance(v, str) and v for v in (uri, device_code, user_code)):
        raise DeviceLoginError(f"the device authorization endpoint {settings.device_url} answered without "
                               "device_code, user_code and verification_uri")
    assert isinstance(uri, str) and isinstance(device_code, str) and isinstance(user_code, str)
    complete = document.get("verification_uri_complete")
    return _Authorization(device_code=device_code, user_code=user_code, verification_uri=uri,
                          verification_uri_complete=complete if isinstance(complete, str) and complete else None,
                          expires_in=_seconds(document.get("expires_in"), _DEFAULT_LIFETIME),
                          interval=_seconds(document.get("interval"), _DEFAULT_INTERVAL))


def _tell(out: TextIO, username: str, authorization: _Authorization) -> None:
    """What the administrator has to do, in the words RFC 8628 3.3 suggests."""
    minutes = max(1, round(authorization.expires_in / 60))
    print(f"To sign in as {username}, open {authorization.verification_uri} in a browser on any device and enter "
          f"the code {authorization.user_code}", file=out)
    if authorization.verification_uri_complete is not None:
        print(f"(or open {authorization.verification_uri_complete}, which has the code in it)", file=out)
    print(f"Waiting for the sign-in; the code expires in {minutes} minute{'s' if minutes != 1 else ''} ...",
          file=out, flush=True)


async def _poll(settings: OAuth2Settings, authorization: _Authorization, timeout: float,
                sleep: Callable[[float], Awaitable[None]], clock: Callable[[], float], started: float) -> str:
    """Poll the token endpoint (3.4) until it gives a token or ends the dialogue; returns the refresh token."""
    assert settings.token_url is not None
    interval = authorization.interval
    deadline = started + authorization.expires_in
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": authorization.device_code, **_client(settings)}
    while True:
        # The first request waits an interval too: the user cannot have signed in yet (3.4, "MUST wait").
        if clock() + interval > deadline:
            raise DeviceLoginError(_EXPIRED)
        await sleep(interval)
        try:
            reply = await post_form(settings.token_url, form, timeout=timeout, ca_file=settings.ca_file,
                                    errors_ok=_POLLING_ERRORS)
        except ProbeError as exc:
            if exc.reason in ("timeout", "reset", "refused", "unreachable", "reply_5xx"):
                # 3.5: on a connection timeout the client MUST reduce its polling frequency, doubling the interval
                # is RECOMMENDED; the same for a provider that fails or is out of reach. Capped, so that a short
                # outage does not push the next poll past the code's expiry; that expiry still ends it.
                interval = min(interval * 2, max(_BACKOFF_CAP, interval))
                continue
            raise DeviceLoginError(f"the token endpoint refused the sign-in: {exc.detail}") from None
        error = reply.document.get("error") if reply.status != 200 else None
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += _SLOW_DOWN_STEP  # for every later request too (3.5)
            continue
        if error == "access_denied":
            raise DeviceLoginError("the sign-in was declined (access_denied): nothing was stored; run "
                                   "`mailmon auth login` again and approve the request")
        if error == "expired_token":
            raise DeviceLoginError(_EXPIRED)
        refresh_token = reply.document.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise DeviceLoginError("signed in, but the provider sent no refresh token: ask for offline access "
                                   "(Microsoft: scope offline_access) and run `mailmon auth login` again")
        return refresh_token


_EXPIRED = ("the code expired before the sign-in was completed (expired_token): nothing was stored; run "
            "`mailmon auth login` again and finish the sign-in in time")


def _client(settings: OAuth2Settings) -> dict[str, str]:
    """client_id, and the client secret when the app registration is a confidential client (Google's is)."""
    return client_auth(settings, time.time())


def _seconds(value: object, default: float) -> float:
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # some providers send numbers as strings
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default
