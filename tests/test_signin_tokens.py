"""Token sources against a fake token endpoint: one request per identity and lifetime, single flight, renewal
on rejection, identity-provider failures as stage `token`, refresh-token rotation on disk, JWT assertions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from monitor.config import Auth, Secret
from monitor.errors import ProbeError
from monitor.signin.credential import Credential
from monitor.signin.grants import Token, fetch, write_secret_file
from monitor.signin.settings import ClientCertificate, OAuth2Settings, ServiceAccount
from monitor.signin.tokens import Identities, TokenEvent, TokenSource
from tests.conftest import free_port
from tests.fakes.token_endpoint import Reply, TokenEndpoint, error, ok

SECRET = "client-secret-must-not-leak"


def settings(url: str, **extra: object) -> OAuth2Settings:
    fields: dict[str, object] = {"grant": "client_credentials", "token_url": url, "client_id": "mailmon-probe",
                                 "client_secret": Secret(SECRET), "scope": "https://mail.example/.default"}
    fields.update(extra)
    return OAuth2Settings(**fields)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def source(oauth2: OAuth2Settings, clock: FakeClock | None = None, events: list[TokenEvent] | None = None,
           ) -> TokenSource:
    """A token source as the registry builds it, on a fake clock (expiry is computed from the fetch's time)."""
    clock = clock or FakeClock()

    async def fetch_token(timeout: float) -> Token:
        token = await fetch(oauth2, "probe@example.test", timeout)
        # fetch() stamps expiry with the wall clock; move it onto the fake one.
        shift = clock.now - time.time()
        return Token(token.value, None if token.expires_at is None else token.expires_at + shift)

    return TokenSource("probe@example.test", oauth2.grant, fetch_token, clock=clock,
                       observer=events.append if events is not None else None)


async def test_checks_sharing_an_identity_make_one_request_until_expiry() -> None:
    """3 targets x 3 checks asking at once, over 10 cycles, make one token request while the token is fresh."""
    async with TokenEndpoint() as idp:
        clock = FakeClock()
        tokens = source(settings(idp.url), clock)
        for _ in range(10):
            got = await asyncio.gather(*(tokens.credential(5.0) for _ in range(9)))
            assert {c.secret.reveal() for c in got} == {"token-1"}
            clock.now += 60
    assert len(idp.requests) == 1


async def test_short_lived_tokens_refresh_once_per_expiry_never_concurrently() -> None:
    """With expires_in 5 and a cycle every 2 s, 9 concurrent checks refresh once per expiry, one request at a time."""
    async with TokenEndpoint(lambda form: ok(f"token-{len(idp.requests)}", expires_in=5)) as idp:
        clock = FakeClock()
        tokens = source(settings(idp.url), clock)
        seen = []
        for _ in range(10):  # fake times 0, 2, ... 18: refreshed at 0, 6, 12, 18 (refresh 0.5 s before expiry)
            got = await asyncio.gather(*(tokens.credential(5.0) for _ in range(9)))
            seen.append({c.secret.reveal() for c in got})
            clock.now += 2
    assert len(idp.requests) == 4
    assert idp.max_concurrent == 1
    assert all(len(s) == 1 for s in seen)


async def test_a_slow_endpoint_still_gets_one_request_from_many_waiting_checks() -> None:
    """Checks arriving while a request is under way join it instead of sending their own."""
    async with TokenEndpoint(lambda form: Reply(200, ok("slow").body, delay=0.3)) as idp:
        tokens = source(settings(idp.url))
        got = await asyncio.gather(*(tokens.credential(5.0) for _ in range(50)))
    assert len(idp.requests) == 1 and {c.secret.reveal() for c in got} == {"slow"}


async def test_a_rejected_unexpired_token_is_renewed_once_for_all_checks() -> None:
    """Three checks whose server rejected the same token get one new token from one request."""
    async with TokenEndpoint() as idp:
        tokens = source(settings(idp.url))
        first = await tokens.credential(5.0)
        renewed = await asyncio.gather(*(tokens.renew(first, 5.0) for _ in range(3)))
    assert len(idp.requests) == 2
    assert {c.secret.reveal() for c in renewed if c is not None} == {"token-2"}


async def test_an_expired_rejected_token_is_not_renewed_by_force() -> None:
    """renew() of a token whose lifetime was over says None: the next credential() refreshes as usual."""
    async with TokenEndpoint() as idp:
        clock = FakeClock()
        tokens = source(settings(idp.url), clock)
        first = await tokens.credential(5.0)
        clock.now += 7200
        assert await tokens.renew(first, 5.0) is None
    assert len(idp.requests) == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_request() -> None:
    """A check whose deadline ends while waiting leaves the request for the others."""
    async with TokenEndpoint(lambda form: Reply(200, ok("late").body, delay=0.3)) as idp:
        tokens = source(settings(idp.url))
        impatient = asyncio.create_task(tokens.credential(5.0))
        patient = asyncio.create_task(tokens.credential(5.0))
        await asyncio.sleep(0.05)
        impatient.cancel()
        assert (await patient).secret.reveal() == "late"
    assert len(idp.requests) == 1


def _form_secret_free(detail: str) -> None:
    assert SECRET not in detail


@pytest.mark.parametrize(("reply", "reason", "words"), [
    (error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided."), "auth_rejected",
     "HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided."),
    (error(400, "invalid_grant", "The refresh token has expired."), "auth_rejected",
     "HTTP 400: invalid_grant: The refresh token has expired."),
    (error(400, "unauthorized_client"), "auth_rejected", "HTTP 400: unauthorized_client"),
    (error(400, "invalid_scope", "scope unknown"), "reply_4xx", "HTTP 400: invalid_scope: scope unknown"),
    (Reply(500, {}), "reply_5xx", "HTTP 500"),
    (Reply(503, {"error": "temporarily_unavailable"}), "reply_5xx", "HTTP 503: temporarily_unavailable"),
    (Reply(200, {"token_type": "Bearer"}), "protocol", "the reply has no access_token"),
    (Reply(close=True), "reset", "token endpoint"),
], ids=["invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope", "http500", "http503",
        "no-token", "closed"])
async def test_identity_provider_failures_are_stage_token(reply: Reply, reason: str, words: str) -> None:
    """Every failure of the token endpoint is stage token with its reason and the provider's words, no secret."""
    async with TokenEndpoint(lambda form: reply) as idp:
        with pytest.raises(ProbeError) as caught:
            await source(settings(idp.url)).credential(5.0)
    assert (caught.value.stage, caught.value.reason) == ("token", reason)
    assert words in caught.value.detail
    _form_secret_free(caught.value.detail)


async def test_a_hanging_endpoint_is_token_timeout_within_the_deadline() -> None:
    """A token endpoint that never answers fails at the check's time left, not later."""
    async with TokenEndpoint(lambda form: Reply(hang=True)) as idp:
        started = time.monotonic()
        with pytest.raises(ProbeError) as caught:
            await source(settings(idp.url)).credential(0.5)
    assert (caught.value.stage, caught.value.reason) == ("token", "timeout")
    assert time.monotonic() - started < 1.5


async def test_a_closed_port_is_token_refused() -> None:
    """Nothing listening at the token URL: token/refused at once."""
    with pytest.raises(ProbeError) as caught:
        await source(settings(f"http://127.0.0.1:{free_port()}/token")).credential(5.0)
    assert (caught.value.stage, caught.value.reason) == ("token", "refused")


async def test_token_requests_are_reported_by_outcome() -> None:
    """The observer hears each request's outcome and the new expiry (the metrics' source)."""
    events: list[TokenEvent] = []
    replies = iter([error(500, "server_error"), ok("t", expires_in=60)])
    async with TokenEndpoint(lambda form: next(replies)) as idp:
        clock = FakeClock()
        tokens = source(settings(idp.url), clock, events)
        with pytest.raises(ProbeError):
            await tokens.credential(5.0)
        clock.now += 10  # past the hold of a failure (within it, checks get the failure without a request)
        await tokens.credential(5.0)
    assert [e.outcome for e in events] == ["reply_5xx", "success"]
    assert events[1].expires_at == pytest.approx(clock.now + 60, abs=2)


async def test_client_credentials_sends_the_secret_in_the_form() -> None:
    """client_secret_post: grant_type, client_id, client_secret and scope in the body (RFC 6749 2.3.1, 4.4.2)."""
    async with TokenEndpoint() as idp:
        await source(settings(idp.url)).credential(5.0)
    assert idp.requests[0] == {"grant_type": "client_credentials", "client_id": "mailmon-probe",
                               "client_secret": SECRET, "scope": "https://mail.example/.default"}


def _certificate(tmp_path: Path) -> tuple[ClientCertificate, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailmon-probe")])
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + __import__("datetime").timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    der = cert.public_bytes(serialization.Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")
    return ClientCertificate(thumbprint, Secret(pem), "RS256"), cert


async def test_certificate_client_assertion_is_a_signed_rfc7523_jwt(tmp_path: Path) -> None:
    """private_key_jwt: an RS256 assertion with x5t, iss = sub = client_id, aud = token URL, a jti, short exp."""
    certificate, cert = _certificate(tmp_path)
    async with TokenEndpoint() as idp:
        await source(settings(idp.url, client_secret=None, certificate=certificate)).credential(5.0)
    form = idp.requests[0]
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in form
    header = jwt.get_unverified_header(form["client_assertion"])
    claims = jwt.decode(form["client_assertion"], cert.public_key(), algorithms=["RS256"], audience=idp.url)  # type: ignore[arg-type]
    assert header["x5t"] == certificate.thumbprint and header["alg"] == "RS256"
    assert claims["iss"] == claims["sub"] == "mailmon-probe" and claims["jti"]
    assert 0 < claims["exp"] - claims["iat"] <= 600


async def test_service_account_grant_sends_a_jwt_bearer_assertion_for_the_mailbox(tmp_path: Path) -> None:
    """RFC 7523 2.1 as Google uses it: iss = service account, sub = the mailbox, aud = token URI, scope."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    async with TokenEndpoint() as idp:
        account = ServiceAccount("monitor@project.iam.example", "key-1", Secret(pem), idp.url)
        oauth2 = OAuth2Settings(grant="service_account", token_url=idp.url, scope="https://mail.google.com/",
                                service_account=account)
        await source(oauth2).credential(5.0)
    form = idp.requests[0]
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = jwt.decode(form["assertion"], key.public_key(), algorithms=["RS256"], audience=idp.url)
    assert claims["iss"] == "monitor@project.iam.example" and claims["sub"] == "probe@example.test"
    assert claims["scope"] == "https://mail.google.com/" and claims["exp"] - claims["iat"] <= 3600
    assert jwt.get_unverified_header(form["assertion"])["kid"] == "key-1"


async def test_refresh_token_rotation_is_on_disk_before_the_token_is_used(tmp_path: Path) -> None:
    """A rotated refresh token replaces the file (mode 0600) before the new access token is handed out."""
    stored = tmp_path / "refresh.token"
    stored.write_text("refresh-1\n")
    seen_on_disk: list[str] = []

    def answer(form: dict[str, str]) -> Reply:
        seen_on_disk.append(stored.read_text().strip())
        number = len(seen_on_disk)
        return ok(f"access-{number}", refresh_token=f"refresh-{number + 1}")

    async with TokenEndpoint(answer) as idp:
        tokens = source(settings(idp.url, grant="refresh_token", refresh_token_file=str(stored), scope=None))
        first = await tokens.credential(5.0)
        assert stored.read_text().strip() == "refresh-2"
        await tokens.renew(first, 5.0)
    assert [form["refresh_token"] for form in idp.requests] == ["refresh-1", "refresh-2"]
    assert stored.read_text().strip() == "refresh-3"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


async def test_missing_refresh_token_file_says_to_sign_in() -> None:
    """No refresh token yet: stage token, auth_rejected, and the command to run."""
    oauth2 = settings("http://127.0.0.1:1/token", grant="refresh_token", refresh_token_file="/nonexistent/rt")
    with pytest.raises(ProbeError) as caught:
        await source(oauth2).credential(5.0)
    assert (caught.value.stage, caught.value.reason) == ("token", "auth_rejected")
    assert "mailmon auth login" in caught.value.detail


_WRITER = """
import sys
from monitor.signin.grants import write_secret_file
path = sys.argv[1]
n = 0
while True:
    n += 1
    write_secret_file(path, f"refresh-{n:08d}-" + "x" * 4000)
"""


def test_kill_during_rotation_leaves_the_old_or_the_new_token_never_a_partial_one(tmp_path: Path) -> None:
    """SIGKILL at 20 random moments of a writer rotating the file: it always holds one whole token."""
    stored = tmp_path / "refresh.token"
    write_secret_file(str(stored), "refresh-00000000-" + "x" * 4000)
    root = Path(__file__).resolve().parent.parent
    for attempt in range(20):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(stored)], cwd=root)
        time.sleep(0.05 + (attempt % 7) * 0.013)
        writer.kill()
        writer.wait()
        text = stored.read_text()
        assert text.startswith("refresh-") and text.endswith("x" * 4000 + "\n") and len(text) == 4018, text[:40]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "refresh.token"]
    assert all(name.startswith(".mailmon-") for name in leftovers)  # temporary files of killed writers only


async def test_token_file_is_read_as_given(tmp_path: Path) -> None:
    """token_file: a bare token, re-read when renewed (something else keeps it fresh)."""
    path = tmp_path / "access.token"
    path.write_text("file-token-1\n")
    tokens = source(OAuth2Settings(grant="token_file", token_file=str(path)))
    first = await tokens.credential(5.0)
    path.write_text("file-token-2\n")
    renewed = await tokens.renew(first, 5.0)
    assert first.secret.reveal() == "file-token-1"
    assert renewed is not None and renewed.secret.reveal() == "file-token-2"


async def test_token_command_output_json_gives_the_lifetime() -> None:
    """token_command printing oauth2l-style JSON: the token and its expires_in."""
    output = json.dumps({"access_token": "cmd-token", "expires_in": 120})
    oauth2 = OAuth2Settings(grant="token_command", token_command=(sys.executable, "-c", f"print({output!r})"))
    got = await fetch(oauth2, "probe@example.test", 5.0)
    assert got.value.reveal() == "cmd-token"
    assert got.expires_at == pytest.approx(time.time() + 120, abs=5)


async def test_failing_token_command_is_stage_token() -> None:
    """A token command that exits non-zero: token/reply_5xx with its last stderr line."""
    oauth2 = OAuth2Settings(grant="token_command",
                            token_command=(sys.executable, "-c", "import sys; sys.exit('vault: permission denied')"))
    with pytest.raises(ProbeError) as caught:
        await fetch(oauth2, "probe@example.test", 5.0)
    assert (caught.value.stage, caught.value.reason) == ("token", "reply_5xx")
    assert "vault: permission denied" in caught.value.detail


async def test_registry_keeps_an_unchanged_identity_across_reloads() -> None:
    """Equal settings are the same identity (same cached token); changed settings start a new one."""
    registry = Identities()
    first = Auth("probe@example.test", oauth2=settings("https://idp.example/token"), mechanism="xoauth2")
    again = Auth("probe@example.test", oauth2=settings("https://idp.example/token"), mechanism="oauthbearer")
    changed = Auth("probe@example.test", oauth2=settings("https://idp.example/token", client_id="other"))
    source_one = registry.source(first)
    registry.retain([again])
    assert registry.source(again) is source_one
    assert registry.source(changed) is not source_one
    registry.retain([changed])
    assert registry.source(first) is not source_one


async def test_no_secret_or_token_in_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """httpx and httpcore at debug level log no client secret and no access token."""
    caplog.set_level(logging.DEBUG)
    async with TokenEndpoint(lambda form: ok("access-token-must-not-leak")) as idp:
        await source(settings(idp.url)).credential(5.0)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in text and "access-token-must-not-leak" not in text


def test_credential_repr_hides_the_secret() -> None:
    """A credential in a traceback or a debug print shows no secret."""
    credential = Credential("u", Secret("bearer-value"), "bearer")
    assert "bearer-value" not in repr(credential) and "bearer-value" not in str(credential)
    assert os.environ.get("NOTHING") is None
