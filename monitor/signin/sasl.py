"""The two OAuth2 SASL mechanisms: XOAUTH2 (Google's and Microsoft's format) and OAUTHBEARER (RFC 7628).

Each builds the client's initial response and knows how a client ends a failed exchange: a server that rejects
the token sends a base64 JSON challenge (`{"status": "401", "schemes": "bearer", "scope": ...}`), and the client
must answer it, with an empty response for XOAUTH2 and with `%x01` (base64 `AQ==`) for OAUTHBEARER, before the
server sends its final failure reply.
"""

from __future__ import annotations

import base64
import binascii
import json

__all__ = ["MECHANISMS", "describe_challenge", "failure_answer", "initial_response"]

MECHANISMS = ("xoauth2", "oauthbearer")


def _gs2_name(username: str) -> str:
    """RFC 5801 saslname: `=` and `,` are escaped as `=3D` and `=2C`."""
    return username.replace("=", "=3D").replace(",", "=2C")


def initial_response(mechanism: str, username: str, token: str, host: str, port: int) -> str:
    """The base64 initial client response of `mechanism` (carries the token: never log it)."""
    if mechanism == "xoauth2":
        message = f"user={username}\x01auth=Bearer {token}\x01\x01"
    elif mechanism == "oauthbearer":
        # RFC 7628 3.1: gs2 header (no channel binding, authzid = the user), then key=value pairs.
        message = f"n,a={_gs2_name(username)},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    else:
        raise ValueError(f"unknown OAuth2 SASL mechanism {mechanism!r}")
    return base64.b64encode(message.encode("utf-8")).decode("ascii")


def failure_answer(mechanism: str) -> str:
    """What the client sends after an error challenge: XOAUTH2 an empty line, OAUTHBEARER %x01 (RFC 7628 3.2.3)."""
    return "" if mechanism == "xoauth2" else base64.b64encode(b"\x01").decode("ascii")


def describe_challenge(challenge: str) -> str:
    """The server's error challenge in words: its JSON `status`, `schemes` and `scope` (for `detail`)."""
    text = challenge.strip()
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return f"error challenge (not base64): {text[:120]!r}"
    try:
        document = json.loads(decoded)
    except ValueError:
        return f"error challenge: {decoded[:200]!r}"
    if not isinstance(document, dict):
        return f"error challenge: {decoded[:200]!r}"
    fields = [f"{key}={document[key]}" for key in ("status", "schemes", "scope") if key in document]
    return "error challenge: " + (" ".join(fields) if fields else decoded[:200])
