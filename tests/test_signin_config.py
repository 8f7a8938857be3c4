"""The `auth.oauth2` block: provider presets fill defaults, explicit keys override, checks time a token step."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ConfigError, load_text
from monitor.metrics import expected_phases, possible_failures
from monitor.signin.sasl import describe_challenge, failure_answer, initial_response

ENV = {"MAILMON_TEST_SECRET": "s3cret-value"}


def config(oauth2: str, mechanism: str = "xoauth2") -> str:
    return ("vantage: test\ntargets:\n  - name: m365\n    host: outlook.office365.com\n    auth:\n"
            f"      username: probe@contoso.example\n      mechanism: {mechanism}\n      oauth2:\n"
            + "".join(f"        {line}\n" for line in oauth2.strip().splitlines())
            + "    smtp: {port: 587, tls: starttls}\n    imap:\n    pop3:\n")


def test_microsoft_preset_fills_the_tenant_endpoint_and_app_scope() -> None:
    """provider microsoft + tenant: Entra ID's v2.0 token endpoint and Exchange Online's .default scope."""
    loaded = load_text(config("grant: client_credentials\nprovider: microsoft\ntenant: contoso.onmicrosoft.com\n"
                              "client_id: app-id\nclient_secret_env: MAILMON_TEST_SECRET"), "c.yml", ENV)
    auth = loaded.targets[0].auth
    assert auth is not None and auth.oauth2 is not None
    assert auth.oauth2.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert auth.oauth2.scope == "https://outlook.office365.com/.default"
    assert auth.oauth2.client_secret is not None and auth.oauth2.client_secret.reveal() == "s3cret-value"


def test_explicit_token_url_and_scope_override_the_preset() -> None:
    """token_url and scope always win over a provider's defaults (any other provider works)."""
    loaded = load_text(config("grant: refresh_token\nprovider: google\ntoken_url: https://sso.example/token\n"
                              "scope: mail offline_access\nclient_id: app\nrefresh_token_file: /tmp/rt"),
                       "c.yml", ENV)
    auth = loaded.targets[0].auth
    assert auth is not None and auth.oauth2 is not None
    assert (auth.oauth2.token_url, auth.oauth2.scope) == ("https://sso.example/token", "mail offline_access")
    assert auth.oauth2.device_url == "https://oauth2.googleapis.com/device/code"


def test_oauth2_checks_time_a_token_step_and_can_fail_there() -> None:
    """Every check of an OAuth2 target has a `token` phase before its login and token failures pre-created."""
    loaded = load_text(config("token_file: /run/token", "oauthbearer"), "c.yml", ENV)
    target = loaded.targets[0]
    assert target.auth is not None and target.auth.mechanism == "oauthbearer"
    phases = {c.name: expected_phases(c) for c in target.checks}
    assert phases["smtp"][phases["smtp"].index("token") + 1] == "auth"
    assert phases["imap"][phases["imap"].index("token") + 1] == "login"
    assert phases["pop3"][phases["pop3"].index("token") + 1] == "auth" and "user" not in phases["pop3"]
    for check in target.checks:
        failures = possible_failures(check)
        assert ("token", "reply_5xx") in failures and ("token", "auth_rejected") in failures
        assert ("auth", "auth_disabled") in failures


def test_xoauth2_initial_response_is_the_documented_format() -> None:
    """XOAUTH2: base64 of user=...^Aauth=Bearer ...^A^A (Google's and Microsoft's format)."""
    import base64

    text = base64.b64decode(initial_response("xoauth2", "u@example.test", "tok", "h", 587)).decode()
    assert text == "user=u@example.test\x01auth=Bearer tok\x01\x01"


def test_oauthbearer_initial_response_follows_rfc7628() -> None:
    """OAUTHBEARER: gs2 header with the escaped authzid, host, port, auth, ending in ^A^A."""
    import base64

    text = base64.b64decode(initial_response("oauthbearer", "a,b=c@x", "tok", "mail.x", 993)).decode()
    assert text == "n,a=a=2Cb=3Dc@x,\x01host=mail.x\x01port=993\x01auth=Bearer tok\x01\x01"


def test_failure_answers_end_the_exchange_as_each_mechanism_says() -> None:
    """XOAUTH2 ends a failure with an empty response, OAUTHBEARER with %x01 (AQ==)."""
    assert (failure_answer("xoauth2"), failure_answer("oauthbearer")) == ("", "AQ==")


def test_error_challenge_json_goes_to_detail() -> None:
    """The JSON status, schemes and scope of an error challenge are put in words."""
    import base64

    challenge = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"mail"}').decode()
    assert describe_challenge(challenge) == "error challenge: status=401 schemes=bearer scope=mail"


def test_token_command_string_is_split_into_words() -> None:
    """A token_command given as a string is split into words like a shell would."""
    loaded = load_text(config("token_command: oauth2l fetch --json 'a b'"), "c.yml", ENV)
    auth = loaded.targets[0].auth
    assert auth is not None and auth.oauth2 is not None
    assert auth.oauth2.token_command == ("oauth2l", "fetch", "--json", "a b")


def _pair(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate, its key, and another key that does not belong to it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailmon")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    paths = (directory / "client.pem", directory / "client.key", directory / "other.key")
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for path, k in ((paths[1], key), (paths[2], other)):
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return paths


@pytest.mark.parametrize(("block", "line", "expected"), [
    # The key file of a certificate that cannot be read: its own line, not the certificate's.
    ("grant: client_credentials\ntoken_url: https://idp.example/token\nclient_id: app\n"
     "client_certificate_file: {cert}\nclient_key_file: {dir}/missing.key",
     13, "targets[0].auth.oauth2.client_key_file: cannot read key file '{dir}/missing.key': No such file or directory"),
    ("grant: client_credentials\ntoken_url: https://idp.example/token\nclient_id: app\n"
     "client_certificate_file: {cert}\nclient_key_file: {other}",
     13, "targets[0].auth.oauth2.client_key_file: the private key does not belong to the certificate"),
    ("grant: service_account\nprovider: google\nservice_account_file: {dir}/missing.json",
     11, "targets[0].auth.oauth2.service_account_file: cannot read service account key file '{dir}/missing.json': "
         "No such file or directory"),
])
def test_bad_key_material_is_a_config_error_with_its_line(tmp_path: Path, block: str, line: int,
                                                          expected: str) -> None:
    """Key material is checked at load: the problem names file:line and what is wrong (exit 2 via validate)."""
    cert, key, other = _pair(tmp_path)
    values = {"cert": cert, "key": key, "other": other, "dir": tmp_path}
    with pytest.raises(ConfigError) as caught:
        load_text(config(block.format(**values)), "c.yml", ENV)
    assert caught.value.problems == [f"c.yml:{line}: {expected.format(**values)}"]
