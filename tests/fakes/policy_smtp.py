"""A submission server that refuses password logins by policy, as Exchange Online and Gmail do, on aiosmtpd.

aiosmtpd is a complete RFC 5321 / RFC 4954 server: the dialogue (EHLO capabilities, AUTH PLAIN and LOGIN exchanges,
reply codes) is the real protocol; only the authenticator's answer is the provider's policy reply. No real server of
ours says these words (Postfix and Dovecot have no notion of "basic authentication is disabled").
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

__all__ = ["EXCHANGE_BASIC_DISABLED", "GMAIL_APP_PASSWORD", "PolicySmtp"]

EXCHANGE_BASIC_DISABLED = "535 5.7.139 Authentication unsuccessful, basic authentication is disabled."
EXCHANGE_TENANT_DISABLED = ("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
                            "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.")
# Gmail's reply is two lines (RFC 5321 4.2.1 multi-line: "534-" then "534 ").
GMAIL_APP_PASSWORD = ("534-5.7.9 Application-specific password required. For more information, go to\r\n"
                      "534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor - gsmtp")
WRONG_PASSWORD = "535 5.7.8 Authentication credentials invalid"


class _Handler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


class PolicySmtp:
    """`async with PolicySmtp(reply) as fake:` a plain-text submission server on 127.0.0.1:`fake.port` that answers
    every AUTH PLAIN / LOGIN with `reply`."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.port = 0
        self._server: asyncio.Server | None = None

    def _authenticator(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                       auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, message=self.reply)

    async def __aenter__(self) -> PolicySmtp:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(_Handler(), hostname="policy.example.test", authenticator=self._authenticator,
                         auth_require_tls=False, auth_exclude_mechanism=["CRAM-MD5"]),
            "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
