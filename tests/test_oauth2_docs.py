"""The copy-paste configurations of docs/oauth2.md load as they are: each YAML block is a whole config, with its
key files put where the block expects them (a throwaway certificate, key and service-account key file)."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from monitor.config import load_text

DOC = Path(__file__).resolve().parent.parent / "docs" / "oauth2.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.DOTALL)
# Where the examples keep their files, and where the test puts them instead.
PREFIXES = ("/etc/mailmon/", "/var/lib/mailmon/", "/run/vault-agent/", "/etc/ssl/certs/")


def key_material(directory: Path) -> None:
    """Every file the examples read at load time, in `directory`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailmon")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (directory / "m365-client-secret").write_text("an-example-secret\n")
    (directory / "gmail-client-secret").write_text("an-example-secret\n")
    (directory / "m365-client.pem").write_text(cert_pem)
    (directory / "m365-client.key").write_text(key_pem)
    (directory / "example-internal-ca.pem").write_text(cert_pem)
    (directory / "gmail-service-account.json").write_text(json.dumps({
        "type": "service_account", "client_email": "mailmon-probe@project.iam.gserviceaccount.com",
        "private_key_id": "0123456789abcdef", "private_key": key_pem,
        "token_uri": "https://oauth2.googleapis.com/token"}))


def test_the_page_has_an_example_for_every_token_source() -> None:
    """Microsoft and Google presets, both client authentications and every kind of token source."""
    text = "\n".join(BLOCKS)
    for source in ("grant: client_credentials", "client_certificate_file", "grant: refresh_token",
                   "grant: service_account", "token_file", "token_command", "provider: microsoft",
                   "provider: google"):
        assert source in text, f"docs/oauth2.md has no example with {source}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("oauth2-docs")
    key_material(directory)
    return directory


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_example_loads(block: str, files: Path) -> None:
    """The block loads without a problem once its files exist (every key spelt right, every value valid)."""
    text = block
    for prefix in PREFIXES:
        text = text.replace(prefix, f"{files}/")
    config = load_text(text, "oauth2.md", {"MAILMON_SSO_SECRET": "an-example-secret"})
    assert config.targets and all(t.auth is not None and t.auth.oauth2 is not None for t in config.targets)
