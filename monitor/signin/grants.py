"""How each token source gets a fresh access token: the three OAuth2 grants, a token file, a token command.

Client assertions and service-account assertions are JWTs signed with PyJWT (RFC 7523); nothing here signs or
encodes a JWT by hand. A rotated refresh token is written back atomically before the new access token is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass

import jwt

from monitor.config import Secret
from monitor.errors import ProbeError
from monitor.signin.endpoint import TokenReply, post_form
from monitor.signin.settings import OAuth2Settings

__all__ = ["Token", "fetch", "read_refresh_token", "write_secret_file"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Assertions live minutes, not hours: Entra ID takes up to 10 min for client assertions, Google 1 h for grants.
_CLIENT_ASSERTION_LIFETIME = 300
_SERVICE_ACCOUNT_LIFETIME = 3600
# A token from a file or command whose lifetime we are not told is re-read this often.
_UNTOLD_LIFETIME = 300.0
_COMMAND_OUTPUT_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Token:
    """An access token and when it stops working (None: not said)."""

    value: Secret
    expires_at: float | None


def client_auth(settings: OAuth2Settings, now: float) -> dict[str, str]:
    """The client-authentication form fields: a secret (client_secret_post) or a signed client assertion."""
    assert settings.client_id is not None and settings.token_url is not None
    fields = {"client_id": settings.client_id}
    if settings.client_secret is not None:
        fields["client_secret"] = settings.client_secret.reveal()
    elif settings.certificate is not None:
        cert = settings.certificate
        claims = {"iss": settings.client_id, "sub": settings.client_id, "aud": settings.token_url,
                  "jti": str(uuid.uuid4()), "iat": int(now), "nbf": int(now),
                  "exp": int(now) + _CLIENT_ASSERTION_LIFETIME}
        fields["client_assertion_type"] = CLIENT_ASSERTION
        fields["client_assertion"] = jwt.encode(claims, cert.key_pem.reveal(), algorithm=cert.algorithm,
                                                headers={"x5t": cert.thumbprint})
    return fields


def _token(reply: TokenReply, url: str, now: float) -> Token:
    document = reply.document
    value = document.get("access_token")
    if not isinstance(value, str) or not value:
        raise ProbeError("token", "protocol", f"token endpoint {url}: the reply has no access_token")
    token_type = document.get("token_type")
    if isinstance(token_type, str) and token_type.lower() != "bearer":
        raise ProbeError("token", "protocol", f"token endpoint {url}: token_type {token_type[:40]!r}, not Bearer")
    lifetime = document.get("expires_in")
    if isinstance(lifetime, str) and lifetime.isdigit():
        lifetime = int(lifetime)  # some providers send it as a string
    expires_at = now + float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else None
    return Token(Secret(value), expires_at)


async def fetch(settings: OAuth2Settings, username: str, timeout: float) -> Token:
    """A fresh access token for `username` from the source `settings` describe."""
    now = time.time()
    if settings.grant == "token_file":
        return await asyncio.to_thread(_read_token_file, settings)
    if settings.grant == "token_command":
        return await _run_token_command(settings, timeout)
    url = settings.token_url
    assert url is not None
    scope = {"scope": settings.scope} if settings.scope else {}
    if settings.grant == "client_credentials":
        form = {"grant_type": "client_credentials", **scope, **client_auth(settings, now)}
        return _token(await post_form(url, form, timeout=timeout, ca_file=settings.ca_file), url, now)
    if settings.grant == "service_account":
        account = settings.service_account
        assert account is not None
        claims = {"iss": account.client_email, "sub": username, "aud": url, "scope": settings.scope or "",
                  "iat": int(now), "exp": int(now) + _SERVICE_ACCOUNT_LIFETIME}
        assertion = jwt.encode(claims, account.private_key.reveal(), algorithm="RS256",
                               headers={"kid": account.private_key_id})
        form = {"grant_type": JWT_BEARER, "assertion": assertion}
        return _token(await post_form(url, form, timeout=timeout, ca_file=settings.ca_file), url, now)
    if settings.grant == "refresh_token":
        return await _refresh(settings, url, scope, timeout, now)
    raise ValueError(f"unknown token source {settings.grant!r}")


async def _refresh(settings: OAuth2Settings, url: str, scope: dict[str, str], timeout: float, now: float) -> Token:
    assert settings.refresh_token_file is not None
    current = await asyncio.to_thread(read_refresh_token, settings.refresh_token_file)
    form = {"grant_type": "refresh_token", "refresh_token": current.reveal(), **scope, **client_auth(settings, now)}
    reply = await post_form(url, form, timeout=timeout, ca_file=settings.ca_file)
    token = _token(reply, url, now)
    rotated = reply.document.get("refresh_token")
    if isinstance(rotated, str) and rotated and rotated != current.reveal():
        # The provider rotated it: the old one may be dead already. Keep the new one on disk before anyone uses
        # the access token, so a crash from here on cannot lose the only refresh token that still works.
        try:
            await asyncio.to_thread(write_secret_file, settings.refresh_token_file, rotated)
        except OSError as exc:
            raise ProbeError("token", "internal", f"cannot store the rotated refresh token in "
                                                  f"{settings.refresh_token_file}: {exc.strerror}") from None
    return token


def read_refresh_token(path: str) -> Secret:
    """The refresh token stored in `path`; a missing or empty file is a sign-in that never happened."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except FileNotFoundError:
        raise ProbeError("token", "auth_rejected", f"no refresh token in {path}: run `mailmon auth login`") from None
    except OSError as exc:
        raise ProbeError("token", "internal", f"cannot read the refresh token file {path}: {exc.strerror}") from None
    if not value:
        raise ProbeError("token", "auth_rejected", f"the refresh token file {path} is empty: run `mailmon auth login`")
    return Secret(value)


def write_secret_file(path: str, value: str) -> None:
    """Replace `path` with `value` atomically, readable by the owner only: a temporary file in the same
    directory (mode 0600 from creation), written and fsync'ed, then renamed over the old one, then the directory
    fsync'ed. A crash at any point leaves the old file or the new one, never a partial or empty one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".mailmon-", suffix=".tmp", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_token_file(settings: OAuth2Settings) -> Token:
    assert settings.token_file is not None
    try:
        with open(settings.token_file, encoding="utf-8") as handle:
            text = handle.read(_COMMAND_OUTPUT_LIMIT).strip()
        changed = os.stat(settings.token_file).st_mtime
    except OSError as exc:
        raise ProbeError("token", "internal", f"cannot read the token file {settings.token_file}: "
                                              f"{exc.strerror}") from None
    return _parse_token_text(text, f"token file {settings.token_file}", changed)


def _parse_token_text(text: str, where: str, since: float) -> Token:
    """A bare token, or a JSON object with access_token and expires_in / expiry (oauth2l --json, vault agents)."""
    if not text:
        raise ProbeError("token", "auth_rejected", f"the {where} is empty")
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            raise ProbeError("token", "protocol", f"the {where} is neither a token nor JSON") from None
        value = document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(value, str) or not value:
            raise ProbeError("token", "protocol", f"the {where} has no access_token")
        lifetime = document.get("expires_in")
        expires_at = since + float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else None
        return Token(Secret(value), expires_at)
    if any(c.isspace() for c in text):
        raise ProbeError("token", "protocol", f"the {where} holds more than one word")
    return Token(Secret(text), since + _UNTOLD_LIFETIME)


async def _run_token_command(settings: OAuth2Settings, timeout: float) -> Token:
    what = f"token command {settings.token_command[0]}"
    try:
        process = await asyncio.create_subprocess_exec(
            *settings.token_command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise ProbeError("token", "internal", f"cannot start the {what}: {exc.strerror}") from None
    try:
        async with asyncio.timeout(max(timeout, 0.001)):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ProbeError("token", "timeout", f"the {what} did not finish within {timeout:.1f}s") from None
    except asyncio.CancelledError:
        process.kill()
        raise
    if process.returncode != 0:
        said = stderr.decode(errors="replace").strip().splitlines()

        # A failure the token source reported itself: like an endpoint answering with an error.
        raise ProbeError("token", "reply_5xx", f"the {what} exited with {process.returncode}"
                                              + (f": {said[-1][:200]}" if said else ""))
    return _parse_token_text(stdout[:_COMMAND_OUTPUT_LIMIT].decode(errors="replace").strip(), f"output of the {what}",
                             time.time())
