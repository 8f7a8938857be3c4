"""No OAuth2 credential in what mailmon records: transcripts against the real lab servers, and a token endpoint that
echoes what it was sent. (tests/test_oauth2_lab_failures.py scans the debug log, /metrics, /api/status, /api/history,
the status page, the history file and `check --json` for every lab secret; this file covers the transcript lines
each protocol writes and an identity provider that repeats the request in its error.)"""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path

import pytest

from monitor.config import load_text
from monitor.errors import ProbeError
from monitor.result import Result
from monitor.runner import Runner
from monitor.signin.endpoint import post_form
from tests.conftest import Lab
from tests.fakes.token_endpoint import Reply, TokenEndpoint
from tests.lab_idp import IMPLICIT, MECHANISMS, Idp, config_yaml, target_yaml

SECRET = "client-secret-7Qx2-do-not-print"


def encoded_forms(secret: str) -> list[str]:
    """The secret and the middle of its base64 at each alignment (how a SASL response could carry it)."""
    forms = [secret]
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + secret.encode()).decode()
        forms.append(encoded[4:-4])
    return forms


# --- an identity provider that echoes the request -------------------------------------------------------------------

@pytest.mark.parametrize("field", ["client_secret", "refresh_token", "client_assertion", "assertion", "device_code"])
async def test_an_echoed_credential_is_scrubbed_from_the_detail(field: str) -> None:
    """A (broken) endpoint that quotes the request body in error_description: the detail keeps its words, not ours."""
    def echo(form: dict[str, str]) -> Reply:
        return Reply(401, {"error": "invalid_client", "error_description": urllib.parse.urlencode(form, safe="=")})

    async with TokenEndpoint(echo) as idp:
        with pytest.raises(ProbeError) as caught:
            await post_form(idp.url, {"grant_type": "x", "client_id": "app", field: SECRET}, timeout=5)
    assert (caught.value.stage, caught.value.reason) == ("token", "auth_rejected")
    assert "invalid_client" in caught.value.detail and f"{field}=********" in caught.value.detail
    assert SECRET not in caught.value.detail and SECRET not in str(caught.value)


async def test_a_basic_auth_secret_is_scrubbed_too() -> None:
    """client_secret_basic: the password of the Basic header is a credential as well."""
    async with TokenEndpoint(lambda form: Reply(400, {"error": "invalid_request",
                                                      "error_description": f"bad secret {SECRET}"})) as idp:
        with pytest.raises(ProbeError) as caught:
            await post_form(idp.url, {"grant_type": "x"}, timeout=5, basic=("app", SECRET))
    assert SECRET not in caught.value.detail and "bad secret ********" in caught.value.detail


# --- transcripts against the real lab -------------------------------------------------------------------------------



# What each protocol's client lines look like where the token goes: SMTP and IMAP (SASL-IR, which Dovecot offers)
# put the initial response on the command line, POP3 after the server's empty challenge (RFC 5034 4: too long).
EXPECTED = {
    "smtp": lambda name: [f"C: AUTH {name} ********"],
    "imap": lambda name: [f"AUTHENTICATE {name} ********"],
    "pop3": lambda name: [f"C: AUTH {name}", "C: ********"],
}


def auth_lines(result: Result) -> list[str]:
    """The client lines from the first AUTH/AUTHENTICATE on, up to the next server line that is not a challenge."""
    lines = result.transcript
    start = next(i for i, line in enumerate(lines) if line.startswith("C: ") and " AUTH" in f" {line[3:]}")
    return [line for line in lines[start:start + 3] if line.startswith("C: ")]


@pytest.mark.lab
@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize(("check", "port", "tls"), IMPLICIT)
async def test_the_transcript_shows_stars_where_the_token_went(lab: Lab, idp: Idp, tmp_path: Path, mechanism: str,
                                                              check: str, port: int, tls: str) -> None:
    """A token the server first rejects (introspection: inactive) and a renewed one: both exchanges are masked,
    and neither token, nor the client secret, appears in any form in the transcript or detail."""
    idp.control("inactive", count=1)
    config = load_text(config_yaml(target_yaml(lab, idp, "t", "secret", mechanism, tmp_path, ((check, port, tls),))),
                       "secrets.yml")
    target = config.targets[0]
    result = await Runner("lab").execute(target, target.checks[0])
    assert result.ok, f"{result.stage}/{result.reason}: {result.detail}\n" + "\n".join(result.transcript)
    assert any("renewing it once" in line for line in result.transcript)
    name = mechanism.upper()
    sent = auth_lines(result)
    for expected in EXPECTED[check](name):
        assert any(line.endswith(expected) or line == expected for line in sent), sent
    secrets = idp.issued()["access_tokens"] + [idp.client_secret()]
    assert len(secrets) >= 3
    text = "\n".join([*result.transcript, result.detail or ""])
    leaked = [s[:6] for s in secrets if any(form in text for form in encoded_forms(s))]
    assert leaked == []

