"""The lab identity provider itself follows the RFCs mailmon is tested against: RFC 6749 error replies and client
authentication, RFC 7523 assertions, refresh-token rotation, RFC 8628 device flow, RFC 7662 introspection."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.lab_idp import Idp

pytestmark = pytest.mark.lab

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"




def post(idp: Idp, path: str, form: dict[str, str], basic: tuple[str, str] | None = None,
         ) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(status, headers, JSON body) of a form POST to the IdP."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    request = urllib.request.Request(idp.env["LAB_IDP_URL"] + path, data=urllib.parse.urlencode(form).encode(),
                                     headers=headers)
    context = ssl.create_default_context(cafile=idp.ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def client(idp: Idp) -> dict[str, str]:
    return {"client_id": idp.env["LAB_IDP_CLIENT_ID"], "client_secret": idp.client_secret()}


def assertion(idp: Idp, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "mailmon-lab", "sub": "mailmon-lab", "aud": idp.token_url, "jti": str(uuid.uuid4()),
            "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, Path(idp.env["LAB_IDP_CLIENT_KEY_FILE"]).read_text(), algorithm="RS256")


def assertion_form(idp: Idp, signed: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": "mailmon-lab", "client_assertion": signed,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}


def test_a_wrong_basic_secret_is_401_invalid_client_with_a_challenge(idp: Idp) -> None:
    """RFC 6749 5.2: a client that authenticated with the Authorization header gets 401 and WWW-Authenticate."""
    status, headers, body = post(idp, "/token", {"grant_type": "client_credentials"}, basic=("mailmon-lab", "x"))
    assert (status, body["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert set(body) == {"error", "error_description"}
    assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(("form", "error"), [
    ({"client_id": "mailmon-lab"}, "invalid_request"),                                     # no grant_type
    ({"grant_type": "password", "username": "u", "password": "p"}, "unsupported_grant_type"),
    ({"grant_type": "refresh_token"}, "invalid_request"),                                  # no refresh_token
])
def test_malformed_requests_are_400_with_the_rfc_error(idp: Idp, form: dict[str, str], error: str) -> None:
    status, _, body = post(idp, "/token", {**form, **client(idp)})
    assert (status, body["error"]) == (400, error)


def test_two_client_authentication_methods_are_invalid_request(idp: Idp) -> None:
    status, _, body = post(idp, "/token", {"grant_type": "client_credentials", **client(idp)},
                           basic=("mailmon-lab", idp.client_secret()))
    assert (status, body["error"]) == (400, "invalid_request")


def test_a_certificate_assertion_is_accepted_once(idp: Idp) -> None:
    """RFC 7523 client assertion signed with the lab client key: accepted; the same jti again is a replay."""
    signed = assertion(idp)
    status, _, body = post(idp, "/token", assertion_form(idp, signed))
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 3600
    status, _, body = post(idp, "/token", assertion_form(idp, signed))
    assert (status, body["error"]) == (401, "invalid_client")


def test_an_assertion_for_another_audience_is_invalid_client(idp: Idp) -> None:
    status, _, body = post(idp, "/token", assertion_form(idp, assertion(idp, aud="https://elsewhere.test/token")))
    assert (status, body["error"]) == (401, "invalid_client")


def test_a_refresh_token_works_once_and_its_successor_replaces_it(idp: Idp) -> None:
    """Rotation: the answer carries a new refresh token; the old one is invalid_grant from then on."""
    seed = Path(idp.env["LAB_IDP_REFRESH_TOKEN_FILE"]).read_text().strip()
    status, _, body = post(idp, "/token", {"grant_type": "refresh_token", "refresh_token": seed, **client(idp)})
    assert status == 200 and body["refresh_token"] != seed
    status, _, again = post(idp, "/token", {"grant_type": "refresh_token", "refresh_token": seed, **client(idp)})
    assert (status, again["error"]) == (400, "invalid_grant")
    status, _, _ = post(idp, "/token", {"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                        **client(idp)})
    assert status == 200


def test_a_public_client_refreshes_with_its_client_id_alone(idp: Idp) -> None:
    """RFC 6749 6: the device-code sign-in's public client refreshes without a secret; a wrong secret still fails."""
    seed = Path(idp.env["LAB_IDP_REFRESH_TOKEN_FILE"]).read_text().strip()
    status, _, body = post(idp, "/token", {"grant_type": "refresh_token", "refresh_token": seed,
                                           "client_id": "mailmon-lab", "client_secret": "wrong"})
    assert (status, body["error"]) == (401, "invalid_client")
    status, _, body = post(idp, "/token", {"grant_type": "refresh_token", "refresh_token": seed,
                                           "client_id": "mailmon-lab"})
    assert status == 200 and body["refresh_token"] != seed


def service_account_assertion(idp: Idp, **claims: Any) -> str:
    key = json.loads(Path(idp.env["LAB_IDP_SERVICE_ACCOUNT_FILE"]).read_text())
    now = int(time.time())
    body = {"iss": key["client_email"], "sub": "other@lab.test", "aud": key["token_uri"],
            "scope": "https://mail.google.com/", "iat": now, "exp": now + 3600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key["private_key"], algorithm="RS256",
                      headers={"kid": key["private_key_id"]})


@pytest.mark.parametrize(("claims", "status", "error"), [
    ({}, 200, None),
    ({"sub": "nobody@lab.test"}, 400, "invalid_grant"),
    ({"scope": "https://www.googleapis.com/auth/drive"}, 400, "invalid_scope"),
    ({"exp": int(time.time()) + 7200}, 400, "invalid_grant"),
])
def test_the_service_account_grant_follows_google(idp: Idp, claims: dict[str, Any], status: int,
                                                  error: str | None) -> None:
    got, _, body = post(idp, "/token", {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                        "assertion": service_account_assertion(idp, **claims)})
    assert (got, body.get("error")) == (status, error), body


def test_the_device_flow_answers_as_scripted(idp: Idp) -> None:
    """RFC 8628: the polls answer authorization_pending, slow_down, then tokens; the code then is used up."""
    idp.control("device", script=["authorization_pending", "slow_down"], interval=1)
    status, _, grant = post(idp, "/devicecode", {"client_id": "mailmon-lab", "scope": "offline_access"})
    assert status == 200 and grant["interval"] == 1 and grant["verification_uri"].startswith("https://")
    poll = {"grant_type": DEVICE_GRANT, "device_code": grant["device_code"], "client_id": "mailmon-lab"}
    answers = [post(idp, "/token", poll) for _ in range(4)]
    assert [(s, b.get("error")) for s, _, b in answers] == [
        (400, "authorization_pending"), (400, "slow_down"), (200, None), (400, "invalid_grant")]
    assert answers[2][2]["refresh_token"] and answers[2][2]["access_token"]


@pytest.mark.parametrize("end", ["expired_token", "access_denied"])
def test_the_device_flow_can_end_without_tokens(idp: Idp, end: str) -> None:
    idp.control("device", script=["authorization_pending", end])
    _, _, grant = post(idp, "/devicecode", {"client_id": "mailmon-lab"})
    poll = {"grant_type": DEVICE_GRANT, "device_code": grant["device_code"], "client_id": "mailmon-lab"}
    assert [post(idp, "/token", poll)[2]["error"] for _ in range(3)] == ["authorization_pending", end,
                                                                        "invalid_grant"]


def test_introspection_needs_the_resource_server_and_says_little_about_a_dead_token(idp: Idp) -> None:
    """RFC 7662: client authentication required; an active token's username; an unknown one only active false."""
    dovecot = {"client_id": idp.env["LAB_IDP_DOVECOT_CLIENT_ID"],
               "client_secret": Path(idp.env["LAB_IDP_DOVECOT_SECRET_FILE"]).read_text().strip()}
    token = idp.app_token()
    status, _, body = post(idp, "/introspect", {"token": token})
    assert (status, body["error"]) == (401, "invalid_client")
    status, _, body = post(idp, "/introspect", {"token": token, **dovecot})
    assert status == 200 and body["active"] is True and body["username"] == "probe@lab.test"
    status, _, body = post(idp, "/introspect", {"token": "not-a-token", **dovecot})
    assert (status, body) == (200, {"active": False})
    idp.control("revoke")
    assert post(idp, "/introspect", {"token": token, **dovecot})[2] == {"active": False}


def test_stats_count_token_requests_by_grant(idp: Idp) -> None:
    idp.app_token()
    post(idp, "/token", assertion_form(idp, assertion(idp)))
    post(idp, "/token", {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                         "assertion": service_account_assertion(idp)})
    stats = idp.stats()
    assert stats["token_requests"] == {"client_credentials": 2, "jwt_bearer": 1}
    assert stats["token_requests_total"] == 3 and stats["concurrent_max"] == 1
