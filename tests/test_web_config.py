"""`--web.config.file` TLS settings: applied as the exporter toolkit defines them, or refused with file:line."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from monitor.config import ConfigError
from monitor.web.webconfig import load_web_config
from tests.tools import tool

AES128 = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
AES256 = "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding web.pem / web.key, a self-signed RSA certificate for 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("webtls")
    subprocess.run([tool("openssl", package="the Debian package openssl"), "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-days", "2", "-subj", "/CN=mailmon", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp / "web.key"), "-out", str(tmp / "web.pem")], check=True, capture_output=True,
                   timeout=60)
    return tmp


def _web(directory: Path, extra: str) -> Path:
    path = directory / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: web.pem\n  key_file: web.key\n  max_version: TLS12\n" + extra)
    return path


def _negotiate(server: ssl.SSLContext, client_ciphers: str) -> str:
    """A TLS 1.2 handshake in memory; the cipher the server chose (OpenSSL name), or ssl.SSLError."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(client_ciphers)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, end in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    found = s.cipher()
    assert found is not None
    return found[0]


def test_cipher_suites_are_applied(cert: Path) -> None:
    """A client offering only a suite outside cipher_suites is refused; one offering it gets the listed suite."""
    context = load_web_config(str(_web(cert, f"  cipher_suites: [{AES256}]\n"))).tls
    assert context is not None
    with pytest.raises(ssl.SSLError):
        _negotiate(context, "ECDHE-RSA-AES128-GCM-SHA256")
    assert _negotiate(context, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384") \
        == "ECDHE-RSA-AES256-GCM-SHA384"


@pytest.mark.parametrize(("prefer", "chosen"), [("true", "ECDHE-RSA-AES128-GCM-SHA256"),
                                                ("false", "ECDHE-RSA-AES256-GCM-SHA384")])
def test_prefer_server_cipher_suites_decides_whose_order_wins(cert: Path, prefer: str, chosen: str) -> None:
    """true: the first of cipher_suites that the client offers; false: the client's first choice."""
    web = _web(cert, f"  cipher_suites: [{AES128}, {AES256}]\n  prefer_server_cipher_suites: {prefer}\n")
    context = load_web_config(str(web)).tls
    assert context is not None
    assert _negotiate(context, "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256") == chosen


@pytest.mark.parametrize(("extra", "line", "message"), [
    ("  curve_preferences: [CurveP256]\n", 5, "tls_server_config.curve_preferences: is not supported by mailmon"),
    ("  cipher_suites: [TLS_BOGUS]\n", 5, "tls_server_config.cipher_suites[0]: unknown cipher suite 'TLS_BOGUS'"),
    ("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", 5, "TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: deny\n", 6,
     "http_server_config.headers: is not supported by mailmon"),
])
def test_settings_that_cannot_be_applied_are_refused_with_file_line(cert: Path, extra: str, line: int,
                                                                   message: str) -> None:
    """A security setting mailmon would not apply is an error naming file and line, never silently accepted."""
    web = _web(cert, extra)
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(web))
    text = "\n".join(caught.value.problems)
    assert f"{web}:{line}:" in text and message in text, text


def test_invalid_yaml_is_reported_with_file_line(tmp_path: Path) -> None:
    """A web config that is not YAML names the file and the line, as the main config does."""
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(web))
    assert caught.value.problems[0].startswith(f"{web}:3: not valid YAML: "), caught.value.problems


def test_problems_are_sorted_by_line(cert: Path) -> None:
    """Problems come in file order, not in the order the loader happens to check the sections."""
    web = cert / "sorted.yml"
    web.write_text("basic_auth_users:\n  alice: plaintext\ntls_server_config:\n  cert_file: web.pem\n"
                   "  key_file: web.key\n  curve_preferences: [CurveP256]\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(web))
    assert [p.split(": ", 1)[0] for p in caught.value.problems] == [f"{web}:2", f"{web}:6"], caught.value.problems
