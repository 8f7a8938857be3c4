"""The `auth.oauth2` block of a target: which token source, its endpoint, client and key material.

`provider: microsoft` (with `tenant`) and `provider: google` only fill in defaults (endpoints and scopes);
`token_url`, `device_url` and `scope` always override them, so any standards-following identity provider works.
Key material (client secret, certificate key, service-account key) is read and checked when the config loads, so a
missing or unreadable file is a config error with its line, not a failed check at 3 a.m.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from dataclasses import dataclass

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from monitor.config import Secret, YamlReader, _ca_file_problem, _read_secret

__all__ = ["GRANTS", "PROVIDERS", "OAuth2Settings", "load_oauth2"]

GRANTS = ("client_credentials", "refresh_token", "service_account")
PROVIDERS = ("microsoft", "google")
KEYS = ("provider", "tenant", "grant", "token_url", "device_url", "scope", "client_id", "client_secret_file",
        "client_secret_env", "client_certificate_file", "client_key_file", "refresh_token_file",
        "service_account_file", "token_file", "token_command", "ca_file")

# Entra ID (Microsoft identity platform v2.0) endpoints and the Exchange Online scopes: app-only tokens ask for the
# resource's `.default`; delegated tokens for the three protocol permissions plus offline_access (a refresh token).
_MICROSOFT_TOKEN = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
_MICROSOFT_DEVICE = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode"
_MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
_MICROSOFT_DELEGATED_SCOPE = ("https://outlook.office.com/IMAP.AccessAsUser.All "
                              "https://outlook.office.com/POP.AccessAsUser.All "
                              "https://outlook.office.com/SMTP.Send offline_access")
_GOOGLE_TOKEN = "https://oauth2.googleapis.com/token"
_GOOGLE_DEVICE = "https://oauth2.googleapis.com/device/code"
_GOOGLE_SCOPE = "https://mail.google.com/"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$")
# Which keys each kind of source takes, beside provider/tenant/token_url/scope/ca_file.
_ONLY_FOR = {
    "client_id": ("client_credentials", "refresh_token"),
    "client_secret_file": ("client_credentials", "refresh_token"),
    "client_secret_env": ("client_credentials", "refresh_token"),
    "client_certificate_file": ("client_credentials",),
    "client_key_file": ("client_credentials",),
    "refresh_token_file": ("refresh_token",),
    "device_url": ("refresh_token",),
    "service_account_file": ("service_account",),
}


@dataclass(frozen=True)
class ClientCertificate:
    """A certificate registered for the client and its private key: signs RFC 7523 client assertions."""

    thumbprint: str      # x5t: base64url SHA-1 of the DER certificate (what Entra ID matches)
    key_pem: Secret
    algorithm: str       # RS256 for RSA keys, ES256 for P-256


@dataclass(frozen=True)
class ServiceAccount:
    """The fields of a Google service-account key file that the JWT-bearer grant needs."""

    client_email: str
    private_key_id: str
    private_key: Secret
    token_uri: str


@dataclass(frozen=True)
class OAuth2Settings:
    """One token source. `grant` is client_credentials, refresh_token, service_account, token_file or
    token_command; equal settings are one identity, whose token every check shares."""

    grant: str
    token_url: str | None = None
    device_url: str | None = None
    scope: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    certificate: ClientCertificate | None = None
    refresh_token_file: str | None = None
    service_account: ServiceAccount | None = None
    token_file: str | None = None
    token_command: tuple[str, ...] = ()
    ca_file: str | None = None
    provider: str | None = None


def _get(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], key: str, path: str) -> str | None:
    return reader.string(entries[key][1], f"{path}.{key}") if key in entries else None


def load_oauth2(reader: YamlReader, node: yaml.Node, path: str, environ: dict[str, str]) -> OAuth2Settings | None:
    """Read an `oauth2` block; every problem goes to `reader` with its line."""
    entries = reader.mapping(node, path, KEYS)
    if not isinstance(node, yaml.MappingNode):
        return None
    problems_before = len(reader.problems)
    kinds = [key for key in ("grant", "token_file", "token_command") if key in entries]
    if len(kinds) != 1:
        reader.problem(node, path, "give exactly one of grant (client_credentials, refresh_token, service_account), "
                                   "token_file or token_command")
        return None
    kind: str = kinds[0]
    if kind == "grant":
        chosen = reader.choice(entries["grant"][1], f"{path}.grant", GRANTS)
        if chosen is None:
            return None
        kind = chosen
    for key, kinds_for in _ONLY_FOR.items():
        if key in entries and kind not in kinds_for:
            reader.problem(entries[key][0], f"{path}.{key}", f"does not apply to {_kind_name(kind)} (it is for "
                                                             f"{' and '.join('grant ' + k for k in kinds_for)})")
    provider = None
    if "provider" in entries:
        provider = reader.choice(entries["provider"][1], f"{path}.provider", PROVIDERS)
    tenant = _get(reader, entries, "tenant", path)
    if tenant is not None and not _TENANT.match(tenant):
        reader.problem(entries["tenant"][1], f"{path}.tenant", f"{tenant!r} is not a tenant ID or domain")
        tenant = None
    if "tenant" in entries and provider != "microsoft":
        reader.problem(entries["tenant"][0], f"{path}.tenant", "only applies to provider: microsoft")
    token_url = _url(reader, entries, "token_url", path)
    device_url = _url(reader, entries, "device_url", path)
    if provider == "microsoft" and "tenant" not in entries and token_url is None and kind in GRANTS:
        reader.problem(entries["provider"][1], f"{path}.provider",
                       "provider microsoft needs tenant (the directory (tenant) ID or primary domain), "
                       "or an explicit token_url")
    if provider == "microsoft" and tenant is not None:
        token_url = token_url or _MICROSOFT_TOKEN.format(tenant=tenant)
        device_url = device_url or _MICROSOFT_DEVICE.format(tenant=tenant)
    elif provider == "google":
        token_url = token_url or (_GOOGLE_TOKEN if kind != "service_account" else None)
        device_url = device_url or _GOOGLE_DEVICE
    scope = _get(reader, entries, "scope", path) or _default_scope(provider, kind)
    ca_file = _get(reader, entries, "ca_file", path)
    if ca_file is not None and (problem := _ca_file_problem(ca_file)) is not None:
        reader.problem(entries["ca_file"][1], f"{path}.ca_file", problem)

    settings = OAuth2Settings(grant=kind, token_url=token_url, device_url=device_url if kind == "refresh_token"
                              else None, scope=scope, ca_file=ca_file, provider=provider)
    if kind in ("client_credentials", "refresh_token"):
        settings = _load_client(reader, node, entries, path, environ, settings)
    if kind == "refresh_token":
        refresh_file = _get(reader, entries, "refresh_token_file", path)
        if "refresh_token_file" not in entries:
            reader.problem(node, path, "grant refresh_token needs refresh_token_file (where `mailmon auth login` "
                                       "stores the refresh token)")
        settings = _with(settings, refresh_token_file=refresh_file)
    if kind == "service_account":
        settings = _load_service_account(reader, node, entries, path, settings)
    if kind in ("client_credentials", "refresh_token") and settings.token_url is None and provider is None \
            and "token_url" not in entries:
        reader.problem(node, path, f"grant {kind} needs token_url (or provider: microsoft / google)")
    if kind == "token_file":
        settings = _with(settings, token_file=_get(reader, entries, "token_file", path))
    if kind == "token_command":
        settings = _with(settings, token_command=_command(reader, entries["token_command"][1], f"{path}.token_command"))
    if len(reader.problems) != problems_before:
        return None
    return settings


def _with(settings: OAuth2Settings, **changes: object) -> OAuth2Settings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]


def _kind_name(kind: str) -> str:
    return kind if kind in ("token_file", "token_command") else f"grant {kind}"


def _default_scope(provider: str | None, kind: str) -> str | None:
    if provider == "microsoft":
        return _MICROSOFT_APP_SCOPE if kind == "client_credentials" else _MICROSOFT_DELEGATED_SCOPE
    if provider == "google":
        return _GOOGLE_SCOPE
    return None


def _url(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], key: str, path: str) -> str | None:
    url = _get(reader, entries, key, path)
    if url is not None and not url.startswith("https://"):
        reader.problem(entries[key][1], f"{path}.{key}", f"{url!r} is not an https:// URL (tokens and client "
                                                         "secrets travel over it)")
        return None
    return url


def _command(reader: YamlReader, node: yaml.Node, path: str) -> tuple[str, ...]:
    if isinstance(node, yaml.SequenceNode):
        items = [reader.string(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        words = [item for item in items if item is not None]
        if not words and not items:
            reader.problem(node, path, "must not be empty")
        return tuple(words) if len(words) == len(items) else ()
    text = reader.string(node, path)
    if text is None:
        return ()
    try:
        words = shlex.split(text)
    except ValueError as exc:
        reader.problem(node, path, f"cannot split the command into words: {exc}")
        return ()
    return tuple(words)


def _load_client(reader: YamlReader, node: yaml.Node, entries: dict[str, tuple[yaml.Node, yaml.Node]], path: str,
                 environ: dict[str, str], settings: OAuth2Settings) -> OAuth2Settings:
    """client_id and how the client proves itself: a secret (file or env) or a certificate (client assertion)."""
    client_id = _get(reader, entries, "client_id", path)
    if "client_id" not in entries:
        reader.problem(node, path, f"grant {settings.grant} needs client_id (the application (client) ID)")
    ways = [key for key in ("client_secret_file", "client_secret_env", "client_certificate_file") if key in entries]
    secret: Secret | None = None
    certificate: ClientCertificate | None = None
    if len(ways) > 1:
        reader.problem(node, path, "give at most one of client_secret_file, client_secret_env or "
                                   "client_certificate_file")
    elif not ways and settings.grant == "client_credentials":
        reader.problem(node, path, "grant client_credentials needs client_secret_file, client_secret_env or "
                                   "client_certificate_file")
    elif ways and ways[0] in ("client_secret_file", "client_secret_env"):
        key = ways[0]
        value = _read_secret(reader, entries[key][1], f"{path}.{key}", "env" if key.endswith("_env") else "file",
                             environ, "client secret")
        secret = Secret(value) if value is not None else None
    elif ways:
        certificate = _load_certificate(reader, entries, path)
    if "client_key_file" in entries and "client_certificate_file" not in entries:
        reader.problem(entries["client_key_file"][0], f"{path}.client_key_file", "needs client_certificate_file")
    return _with(settings, client_id=client_id, client_secret=secret, certificate=certificate)


def _read_bytes(reader: YamlReader, node: yaml.Node, path: str, what: str) -> bytes | None:
    name = reader.string(node, path)
    if name is None:
        return None
    try:
        with open(name, "rb") as handle:
            return handle.read()
    except OSError as exc:
        reader.problem(node, path, f"cannot read {what} {name!r}: {exc.strerror}")
        return None


def _load_certificate(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]],
                      path: str) -> ClientCertificate | None:
    cert_node = entries["client_certificate_file"][1]
    cert_pem = _read_bytes(reader, cert_node, f"{path}.client_certificate_file", "certificate file")
    key_node = entries["client_key_file"][1] if "client_key_file" in entries else cert_node
    key_path = f"{path}.client_key_file" if "client_key_file" in entries else f"{path}.client_certificate_file"
    key_pem = _read_bytes(reader, key_node, key_path, "key file") if key_node is not cert_node else cert_pem
    if cert_pem is None or key_pem is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        reader.problem(cert_node, f"{path}.client_certificate_file", "holds no PEM certificate")
        return None
    key_text = _pem_block(key_pem, "PRIVATE KEY")
    if key_text is None:
        reader.problem(key_node, key_path, "holds no PEM private key (add client_key_file)")
        return None
    try:
        key = serialization.load_pem_private_key(key_text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        reader.problem(key_node, key_path, f"the private key cannot be used: {_first_line(exc)}")
        return None
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        algorithm = "ES256"
    else:
        reader.problem(key_node, key_path, "the private key must be RSA or EC P-256")
        return None
    public = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    if public != key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo):
        reader.problem(key_node, key_path, "the private key does not belong to the certificate")
        return None
    der = certificate.public_bytes(serialization.Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")  # x5t is SHA-1 by definition
    return ClientCertificate(thumbprint=thumbprint, key_pem=Secret(key_text), algorithm=algorithm)


def _pem_block(data: bytes, kind: str) -> str | None:
    """The first `-----BEGIN ...PRIVATE KEY-----` block of a PEM file (a combined cert+key file has two)."""
    text = data.decode("ascii", errors="replace")
    match = re.search(r"-----BEGIN ([A-Z ]*)" + kind + r"-----.*?-----END \1" + kind + "-----", text, re.DOTALL)
    return match.group(0) if match else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _load_service_account(reader: YamlReader, node: yaml.Node, entries: dict[str, tuple[yaml.Node, yaml.Node]],
                          path: str, settings: OAuth2Settings) -> OAuth2Settings:
    if "service_account_file" not in entries:
        reader.problem(node, path, "grant service_account needs service_account_file (the key file, JSON)")
        return settings
    key_node = entries["service_account_file"][1]
    where = f"{path}.service_account_file"
    data = _read_bytes(reader, key_node, where, "service account key file")
    if data is None:
        return settings
    try:
        document = json.loads(data)
    except ValueError:
        reader.problem(key_node, where, "is not a JSON service account key file")
        return settings
    fields = ("client_email", "private_key_id", "private_key", "token_uri")
    if not isinstance(document, dict) or document.get("type") != "service_account" or not all(
            isinstance(document.get(f), str) and document.get(f) for f in fields):
        reader.problem(key_node, where, f"is not a service account key file (type service_account with "
                                        f"{', '.join(fields)})")
        return settings
    try:
        serialization.load_pem_private_key(document["private_key"].encode(), password=None)
    except (ValueError, TypeError) as exc:
        reader.problem(key_node, where, f"its private_key cannot be used: {_first_line(exc)}")
        return settings
    account = ServiceAccount(document["client_email"], document["private_key_id"], Secret(document["private_key"]),
                             document["token_uri"])
    scope = settings.scope
    if scope is None:
        reader.problem(node, path, "grant service_account needs scope (https://mail.google.com/ for Gmail, or "
                                   "provider: google)")
    return _with(settings, service_account=account, token_url=settings.token_url or account.token_uri)
