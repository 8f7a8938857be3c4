"""The web configuration file (`--web.config.file`): TLS and basic auth, in the Prometheus exporter-toolkit format.

    tls_server_config:
      cert_file: server.crt          # paths relative to this file
      key_file: server.key
      min_version: TLS12             # TLS10 … TLS13, optional
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: clients.pem
    basic_auth_users:
      prometheus: $2y$10$…           # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

Same keys and meaning as the exporter toolkit, so one file serves node_exporter and mailmon alike. Problems are
reported like config problems: file, line, what, and exit 2. A security setting is applied or refused, never
accepted and ignored: `cipher_suites` (Go's names, TLS up to 1.2) and `prefer_server_cipher_suites` are applied;
`curve_preferences` (Python's ssl cannot set a curve list) and `http_server_config.headers` are refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import ssl
import warnings
from dataclasses import dataclass, field

import bcrypt
import yaml

from monitor.config import ConfigError
from monitor.config.reader import YamlReader, compose, read_text

__all__ = ["WebConfig", "load_web_config"]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated, but still nameable here
    _TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                     "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Go's crypto/tls names (tls.CipherSuites(), the ones the exporter toolkit accepts) for TLS 1.0-1.2 suites, and
# OpenSSL's names for the same suites. TLS 1.3 suites are not configurable in Go either.
_CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
_TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
_CLIENT_AUTH = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven",
                "RequireAndVerifyClientCert")


@dataclass
class WebConfig:
    """TLS context (None: plain HTTP) and basic-auth users (empty: no auth)."""

    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    # Verified (user, password digest) pairs: bcrypt costs tens of milliseconds by design, and Prometheus
    # sends the same credentials on every scrape.
    _verified: set[tuple[str, bytes]] = field(default_factory=set)

    async def authorized(self, header: str | None) -> bool:
        """True when no users are configured, or the Authorization header carries a valid user and password."""
        if not self.users:
            return True
        if header is None or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        digest = hashlib.sha256(hashed + b"\0" + password.encode()).digest()
        if (user, digest) in self._verified:
            return True
        ok = bool(await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed))
        if ok:
            self._verified.add((user, digest))
        return ok


def load_web_config(path: str) -> WebConfig:
    """Read and check a web config file; raises ConfigError with every problem."""
    root = compose(read_text(path, "web config file"), path)
    reader = YamlReader(path)
    config = WebConfig()
    if root is None:
        return config  # an empty file: plain HTTP, no auth (as the exporter toolkit treats it)
    entries = reader.mapping(root, "", ("tls_server_config", "basic_auth_users", "http_server_config"))
    base = os.path.dirname(os.path.abspath(path))
    if "tls_server_config" in entries:
        config.tls = _tls(reader, entries["tls_server_config"][1], base)
    if "basic_auth_users" in entries:
        node = entries["basic_auth_users"][1]
        if not isinstance(node, yaml.MappingNode):
            reader.problem(node, "basic_auth_users", "must be a mapping of user name to bcrypt hash")
        else:
            for key_node, value_node in node.value:
                user = str(key_node.value)
                hashed = reader.string(value_node, f"basic_auth_users.{user}")
                if hashed is None:
                    continue
                if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                    reader.problem(value_node, f"basic_auth_users.{user}", "is not a bcrypt hash ($2y$…)")
                    continue
                config.users[user] = hashed.encode()
    if "http_server_config" in entries:
        http = reader.mapping(entries["http_server_config"][1], "http_server_config", ("headers",))
        if "headers" in http:
            # Accepting response headers (HSTS, CSP, X-Frame-Options) that the server does not send would give a
            # false sense of protection: refused until the server applies them.
            reader.problem(http["headers"][0], "http_server_config.headers",
                           "is not supported by mailmon (the headers would not be sent): remove it, or set them "
                           "on a reverse proxy")
    if reader.problems:
        raise ConfigError(reader.sorted_problems())
    return config


def _tls(reader: YamlReader, node: yaml.Node, base: str) -> ssl.SSLContext | None:
    path = "tls_server_config"
    entries = reader.mapping(node, path, ("cert_file", "key_file", "min_version", "max_version",
                                          "client_auth_type", "client_ca_file", "cipher_suites",
                                          "prefer_server_cipher_suites", "curve_preferences"))
    files: dict[str, str] = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        if key in entries:
            value = reader.string(entries[key][1], f"{path}.{key}")
            if value is not None:
                files[key] = value if os.path.isabs(value) else os.path.join(base, value)
    for key in ("cert_file", "key_file"):
        if key not in entries:
            reader.problem(node, path, f"{key} is required")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if "cert_file" in files and "key_file" in files:
        try:
            context.load_cert_chain(files["cert_file"], files["key_file"])
        except (OSError, ssl.SSLError) as exc:
            reader.problem(entries["cert_file"][1], f"{path}.cert_file", f"cannot load the certificate and key: {exc}")
    for key, attribute in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in entries:
            version = reader.choice(entries[key][1], f"{path}.{key}", tuple(_TLS_VERSIONS))
            if version is not None:
                setattr(context, attribute, _TLS_VERSIONS[version])
    mode = "NoClientCert"
    if "client_auth_type" in entries:
        mode = reader.choice(entries["client_auth_type"][1], f"{path}.client_auth_type", _CLIENT_AUTH) or mode
    if mode != "NoClientCert":
        if "client_ca_file" not in files:
            reader.problem(node, path, f"client_auth_type {mode} needs client_ca_file")
        else:
            try:
                context.load_verify_locations(files["client_ca_file"])
            except (OSError, ssl.SSLError) as exc:
                reader.problem(entries["client_ca_file"][1], f"{path}.client_ca_file", f"cannot load: {exc}")
        context.verify_mode = ssl.CERT_REQUIRED if mode.startswith("Require") else ssl.CERT_OPTIONAL
    _ciphers(reader, entries, context, path)
    if "curve_preferences" in entries:
        reader.problem(entries["curve_preferences"][1], f"{path}.curve_preferences",
                       "is not supported by mailmon (Python's ssl module cannot set a curve list, so it would "
                       "not be applied): remove it")
    return context


def _ciphers(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], context: ssl.SSLContext,
             path: str) -> None:
    """Apply cipher_suites (in order) and prefer_server_cipher_suites (default true, as in the toolkit)."""
    if "cipher_suites" in entries:
        node = entries["cipher_suites"][1]
        key = f"{path}.cipher_suites"
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            reader.problem(node, key, "must be a non-empty list of Go cipher suite names (leave it out for the "
                                      "default suites)")
            return
        openssl: list[str] = []
        for index, item in enumerate(node.value):
            name = reader.string(item, f"{key}[{index}]")
            if name in _TLS13_SUITES:
                reader.problem(item, f"{key}[{index}]", f"{name} is a TLS 1.3 suite: TLS 1.3 suites are not "
                               "configurable (in the exporter toolkit either); list TLS 1.2 suites only")
            elif name is not None and name not in _CIPHER_SUITES:
                reader.problem(item, f"{key}[{index}]", f"unknown cipher suite {name!r}: one of "
                               + ", ".join(_CIPHER_SUITES))
            elif name is not None:
                openssl.append(_CIPHER_SUITES[name])
        if len(openssl) == len(node.value):
            try:
                context.set_ciphers(":".join(openssl))
            except ssl.SSLError as exc:
                reader.problem(node, key, f"cannot be applied: {exc}")
    prefer = True
    if "prefer_server_cipher_suites" in entries:
        value = reader.boolean(entries["prefer_server_cipher_suites"][1], f"{path}.prefer_server_cipher_suites")
        prefer = prefer if value is None else value
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
