"""One request to an OAuth2 endpoint (RFC 6749 section 3.2, RFC 8628 section 3.1), over httpx on the event loop.

Every failure becomes a ProbeError of stage `token` with one of the existing reasons, and the provider's own
`error` / `error_description` in `detail` (RFC 6749 5.2), never the request body: that holds the client secret,
the refresh token or the signed assertion.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import httpx

from monitor.errors import ProbeError, classify
from monitor.steps import Reason

__all__ = ["TokenReply", "post_form"]

# Token replies are a few KB; a hostile or broken endpoint must not make us buffer without bound.
_MAX_BODY = 256 * 1024
# RFC 6749 5.2 errors that mean "these credentials (client or grant) are not accepted": the identity provider
# rejects the monitor's sign-in, the same kind of failure as a wrong password.
_REJECTED = frozenset({"invalid_client", "invalid_grant", "unauthorized_client", "access_denied"})
_CONTEXTS: dict[str | None, ssl.SSLContext] = {}


@dataclass(frozen=True)
class TokenReply:
    """A successful JSON reply (`document`), plus the HTTP status for device-flow polling."""

    status: int
    document: dict[str, Any] = field(default_factory=dict)


def _context(ca_file: str | None) -> ssl.SSLContext:
    """One verifying context per CA file (loading a bundle costs milliseconds: not per request)."""
    context = _CONTEXTS.get(ca_file)
    if context is None:
        context = _CONTEXTS[ca_file] = ssl.create_default_context(cafile=ca_file)
    return context


async def post_form(url: str, form: dict[str, str], *, timeout: float, ca_file: str | None = None,
                    basic: tuple[str, str] | None = None, errors_ok: frozenset[str] = frozenset()) -> TokenReply:
    """POST `form` to `url` and return its JSON reply. An error reply whose `error` is in `errors_ok` (a device
    flow's `authorization_pending`) is returned too; every other failure raises ProbeError(`token`, ...)."""
    try:
        async with asyncio.timeout(max(timeout, 0.001)):
            return await _post(url, form, timeout, ca_file, basic, errors_ok)
    except TimeoutError:
        raise ProbeError("token", "timeout", f"token endpoint {url}: no answer within {timeout:.1f}s") from None
    except ProbeError as exc:
        # The detail quotes the provider's error_description: a broken or hostile endpoint that echoes the
        # request back would put the secret, refresh token or assertion we sent into logs and history.
        raise ProbeError(exc.stage, exc.reason, _scrub(exc.detail, form, basic)) from None


# Form fields that carry credentials (RFC 6749 2.3.1, 6; RFC 7523 2.1, 2.2; RFC 8628 3.4).
_SECRET_FIELDS = ("client_secret", "client_assertion", "refresh_token", "assertion", "device_code", "code",
                  "password")


def _scrub(text: str, form: dict[str, str], basic: tuple[str, str] | None) -> str:
    """`text` with every credential of the request replaced by ********."""
    values = [form[key] for key in _SECRET_FIELDS if key in form] + ([basic[1]] if basic else [])
    # Values too short to be a credential would only mangle the provider's words.
    for value in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "********")
    return text


async def _post(url: str, form: dict[str, str], timeout: float, ca_file: str | None,
                basic: tuple[str, str] | None, errors_ok: frozenset[str]) -> TokenReply:
    # A client per request: token requests are rare (one per identity per token lifetime), and a pooled client
    # would outlive the event loop it was made on (the `check` command, tests).
    # trust_env=False: no proxy or CA settings from the environment; the config says where the IdP is.
    async with httpx.AsyncClient(verify=_context(ca_file), timeout=timeout, trust_env=False,
                                 follow_redirects=False) as client:
        try:
            async with client.stream("POST", url, data=form, auth=basic,
                                     headers={"Accept": "application/json"}) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_BODY:
                        raise ProbeError("token", "protocol", f"token endpoint {url}: reply longer than "
                                                              f"{_MAX_BODY} bytes")
                status = response.status_code
        except httpx.TimeoutException:
            raise ProbeError("token", "timeout", f"token endpoint {url}: no answer within {timeout:.1f}s") from None
        except httpx.RemoteProtocolError as exc:
            reason: Reason = "reset" if "disconnect" in str(exc).lower() else "protocol"
            raise ProbeError("token", reason, f"token endpoint {url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ProbeError("token", _reason(exc), f"token endpoint {url}: {_describe(exc)}") from None
    return _reply(url, status, bytes(body), errors_ok)


def _links(exc: BaseException) -> list[BaseException]:
    """The error and everything it came from, suppressed contexts too: anyio raises "All connection attempts
    failed" with the ConnectionRefusedError that says why only in its context."""
    links = [exc]
    while ((inner := links[-1].__cause__ or links[-1].__context__) is not None
           and all(inner is not seen for seen in links)):
        links.append(inner)
    return links


def _reason(exc: BaseException) -> Reason:
    """The innermost link that names a reason (`classify` per link), else internal."""
    for link in reversed(_links(exc)):
        _, reason = classify(link, "token")
        if reason != "internal":
            return reason
    return "internal"


def _describe(exc: BaseException) -> str:
    """The innermost error's words (httpx wraps the OSError or SSL error that says what happened)."""
    inner = _links(exc)[-1]
    text = str(inner) or type(inner).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _reply(url: str, status: int, body: bytes, errors_ok: frozenset[str]) -> TokenReply:
    try:
        document = json.loads(body) if body else None
    except ValueError:
        document = None
    if status == 200:
        if not isinstance(document, dict):
            raise ProbeError("token", "protocol", f"token endpoint {url}: HTTP 200 without a JSON object")
        return TokenReply(status, document)
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, str) and error in errors_ok:
        return TokenReply(status, document)  # type: ignore[arg-type]
    said = ""
    if isinstance(error, str):
        said = f": {error[:80]}"
        description = document.get("error_description") if isinstance(document, dict) else None
        if isinstance(description, str) and description:
            said += f": {description.splitlines()[0][:240]}"
    reason: Reason
    if isinstance(error, str) and error in _REJECTED:
        reason = "auth_rejected"
    elif 400 <= status < 500:
        reason = "reply_4xx"
    elif 500 <= status < 600:
        reason = "reply_5xx"
    else:
        reason = "protocol"
    raise ProbeError("token", reason, f"token endpoint {url}: HTTP {status}{said}")
