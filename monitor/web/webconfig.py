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
reported like config problems: file, line, what, and exit 2.
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

from monitor.config import ConfigError, YamlReader

__all__ = ["WebConfig", "load_web_config"]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated, but still nameable here
    _TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                     "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
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
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the web config file: {exc.strerror}"]) from None
    reader = YamlReader(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
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
        reader.mapping(entries["http_server_config"][1], "http_server_config", ("headers",))
    if reader.problems:
        raise ConfigError(reader.problems)
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
    return context
