"""SMTP AUTH XOAUTH2 / OAUTHBEARER against a scripted server that validates the token as Dovecot does (error
challenge, then 535), with a fake token endpoint: the exchange, the renewal, the transcript and the verdict.

The real-server versions of these tests run against the lab (tests/test_oauth2_lab.py); this one provokes what the
lab cannot be asked per test: a server that accepts only the second token, a 3,000-character token."""

from __future__ import annotations

import base64
import json

from monitor.config import Auth, Target
from monitor.signin import IDENTITIES
from monitor.signin.settings import OAuth2Settings
from monitor.verdict import VerdictBoard
from tests import builders
from tests.conftest import run_once
from tests.fakes.server import Conn, FakeServer
from tests.fakes.token_endpoint import Reply, TokenEndpoint, ok
from tests.test_signin_tokens import SECRET, settings

CHALLENGE = base64.b64encode(json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"}).encode())


class Submission:
    """A submission server offering XOAUTH2 and OAUTHBEARER that accepts the tokens in `good`."""

    def __init__(self, good: set[str]) -> None:
        self.good = good
        self.lines: list[bytes] = []

    def token_of(self, response: bytes) -> str:
        text = base64.b64decode(response).decode()
        return text.split("auth=Bearer ", 1)[1].split("\x01", 1)[0]

    async def __call__(self, conn: Conn) -> None:
        await conn.send(b"220 fake.test ESMTP\r\n")
        while (line := await conn.line()) is not None:
            self.lines.append(line)
            words = line.strip().split(b" ")
            verb = words[0].upper()
            if verb == b"EHLO":
                await conn.send(b"250-fake.test\r\n250 AUTH PLAIN XOAUTH2 OAUTHBEARER\r\n")
            elif verb == b"AUTH":
                if len(words) == 2:  # no initial response: ask for it (RFC 4954 4)
                    await conn.send(b"334 \r\n")
                    answer = await conn.line()
                    assert answer is not None
                    self.lines.append(answer)
                    response = answer.strip()
                else:
                    response = words[2]
                if self.token_of(response) in self.good:
                    await conn.send(b"235 2.7.0 Authentication successful\r\n")
                    continue
                await conn.send(b"334 " + CHALLENGE + b"\r\n")
                end = await conn.line()
                self.lines.append(end or b"")
                await conn.send(b"535 5.7.8 Error: authentication failed: Invalid token\r\n")
            elif verb == b"QUIT":
                await conn.send(b"221 2.0.0 Bye\r\n")
                return
            else:
                await conn.send(b"502 5.5.2 Error: command not recognized\r\n")


def target(port: int, oauth2: OAuth2Settings, mechanism: str = "xoauth2") -> Target:
    check = builders.check("smtp", port=port, tls_mode="none", timeout=5.0, uses_token=True)
    return builders.target("fake", check, host="127.0.0.1",
                           auth=Auth("probe@example.test", oauth2=oauth2, mechanism=mechanism))


async def test_xoauth2_passes_and_the_transcript_hides_the_token() -> None:
    """A good token: AUTH XOAUTH2 with an initial response, 235, a timed token step, no token in the transcript."""
    IDENTITIES.clear()
    server = Submission({"token-1"})
    async with TokenEndpoint() as idp, FakeServer(server) as fake:
        result = await run_once(target(fake.port, settings(idp.url)))
    assert result.ok, result.detail
    assert "token" in result.phases and "auth" in result.phases
    assert "C: AUTH XOAUTH2 ********" in result.transcript
    assert not any("token-1" in line or SECRET in line for line in result.transcript)


async def test_a_rejected_token_is_renewed_once_and_then_passes() -> None:
    """The server rejects the first token (revoked): the error challenge is answered with an empty line, one new
    token is fetched, and the second AUTH passes."""
    IDENTITIES.clear()
    server = Submission({"token-2"})
    async with TokenEndpoint() as idp, FakeServer(server) as fake:
        result = await run_once(target(fake.port, settings(idp.url)))
    assert result.ok, result.detail
    assert len(idp.requests) == 2
    assert b"\r\n" in server.lines  # the empty line that ends a failed XOAUTH2 exchange


async def test_a_token_rejected_again_is_auth_rejected_with_the_challenge_in_detail() -> None:
    """Still rejected after the renewal: auth/auth_rejected, the JSON status in detail, two token requests."""
    IDENTITIES.clear()
    async with TokenEndpoint() as idp, FakeServer(Submission(set())) as fake:
        result = await run_once(target(fake.port, settings(idp.url)))
    assert (result.stage, result.reason) == ("auth", "auth_rejected")
    assert "status=401" in result.detail and "schemes=bearer" in result.detail
    assert len(idp.requests) == 2


async def test_oauthbearer_ends_a_failure_with_x01() -> None:
    """OAUTHBEARER answers the error challenge with AQ== (RFC 7628 3.2.3), not an empty line."""
    IDENTITIES.clear()
    server = Submission(set())
    async with TokenEndpoint() as idp, FakeServer(server) as fake:
        result = await run_once(target(fake.port, settings(idp.url), "oauthbearer"))
    assert result.reason == "auth_rejected"
    assert b"AQ==\r\n" in server.lines and b"\r\n" not in server.lines


async def test_a_long_token_goes_after_the_334_not_on_the_command_line() -> None:
    """A 3,000-character token would push AUTH past Postfix's 2048-character line: it is sent after 334."""
    IDENTITIES.clear()
    long_token = "L" * 3000
    server = Submission({long_token})
    async with TokenEndpoint(lambda form: ok(long_token)) as idp, FakeServer(server) as fake:
        result = await run_once(target(fake.port, settings(idp.url)))
    assert result.ok, result.detail
    assert server.lines[1].strip() == b"AUTH XOAUTH2"
    assert all(len(line) <= 2048 for line in server.lines if line.startswith(b"AUTH"))


async def test_an_identity_provider_failure_is_signin_failed_not_smtp_down() -> None:
    """Token endpoint 500: token/reply_5xx with the provider's words, and the verdict signin_failed."""
    IDENTITIES.clear()
    async with TokenEndpoint(lambda form: Reply(500, {"error": "server_error", "error_description": "backend down"})
                             ) as idp, FakeServer(Submission(set())) as fake:
        result = await run_once(target(fake.port, settings(idp.url)))
    assert (result.stage, result.reason) == ("token", "reply_5xx")
    assert "server_error: backend down" in result.detail and SECRET not in result.detail
    board = VerdictBoard()
    assert board.record(result) == "signin_failed"
