"""Secrets in the config: the `auth` block (a password from a file or the environment, or an OAuth2 token source),
and the `probe_key` that signs probe messages. A secret's value is read here and wrapped in Secret at once."""

from __future__ import annotations

import errno
import os
import re

import yaml

from monitor.config.model import Auth, Secret
from monitor.config.reader import YamlReader, get

__all__ = ["AUTH_KEYS", "OAUTH2_MECHANISMS", "load_auth", "load_probe_key", "read_secret", "whose"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


AUTH_KEYS = ("username", "password_env", "password_file", "oauth2", "mechanism")
OAUTH2_MECHANISMS = ("xoauth2", "oauthbearer")


def load_auth(reader: YamlReader, node: yaml.Node, path: str, environ: dict[str, str]) -> Auth | None:
    entries = reader.mapping(node, path, AUTH_KEYS)
    if not isinstance(node, yaml.MappingNode):
        return None
    username = get(reader, entries, "username", path, reader.string, None)
    if username is None and "username" not in entries:
        reader.problem(node, path, "username is required")
    if "oauth2" in entries:
        return _load_oauth2_auth(reader, node, entries, path, environ, username)
    if "mechanism" in entries:
        reader.problem(entries["mechanism"][0], f"{path}.mechanism", "only applies with oauth2 (xoauth2, "
                                                                     "oauthbearer); SMTP profiles set PLAIN or LOGIN "
                                                                     "with auth_mechanism")
    sources = [key for key in ("password_env", "password_file") if key in entries]
    if len(sources) != 1:
        reader.problem(node, path, "give exactly one of password_env, password_file or oauth2")
        return None
    key = sources[0]
    source = "env" if key == "password_env" else "file"
    password = read_secret(reader, entries[key][1], f"{path}.{key}", source, environ, "password")
    if username is None or password is None:
        return None
    return Auth(username=username, password=Secret(password))


def _load_oauth2_auth(reader: YamlReader, node: yaml.Node, entries: dict[str, tuple[yaml.Node, yaml.Node]],
                      path: str, environ: dict[str, str], username: str | None) -> Auth | None:
    """`auth` with an `oauth2` token source instead of a password (monitor/signin/settings.py)."""
    from monitor.signin.settings import load_oauth2  # here: monitor.signin imports this module

    for key in ("password_env", "password_file"):
        if key in entries:
            reader.problem(entries[key][0], f"{path}.{key}", "give either a password or oauth2, not both")
    mechanism = get(reader, entries, "mechanism", path, lambda n, p: reader.choice(n, p, OAUTH2_MECHANISMS),
                    "xoauth2")
    oauth2 = load_oauth2(reader, entries["oauth2"][1], f"{path}.oauth2", environ)
    if username is None or oauth2 is None:
        return None
    return Auth(username=username, oauth2=oauth2, mechanism=mechanism)


def read_secret(reader: YamlReader, node: yaml.Node, path: str, source: str, environ: dict[str, str],
                what: str) -> str | None:
    """A secret from an environment variable (`source` env) or a file; None, with the problem recorded, if unusable."""
    value: str | None = None
    if source == "env":
        name = reader.string(node, path, _ENV_NAME, "an environment variable name")
        if name is None:
            return None
        value = environ.get(name)
        if value is None:
            reader.problem(node, path, f"environment variable {name} is not set")
            return None
    else:
        file_name = reader.string(node, path)
        if file_name is None:
            return None
        try:
            with open(file_name, encoding="utf-8") as handle:
                # One trailing newline is an editor's, not the secret's.
                value = handle.read().removesuffix("\n").removesuffix("\r")
        except OSError as exc:
            reader.problem(node, path, f"cannot read {what} file {file_name!r}: {exc.strerror}{whose(exc)}")
            return None
    if value == "":
        reader.problem(node, path, f"the {what} is empty")
        return None
    return value


def whose(exc: OSError) -> str:
    """For a permission error, who needs to read the file: the image and the systemd unit run as their own user."""
    if exc.errno != errno.EACCES or not hasattr(os, "geteuid"):
        return ""
    return f" (mailmon runs as uid {os.geteuid()}: make the file readable by that user)"


_MIN_KEY_LENGTH = 16


def load_probe_key(reader: YamlReader, node: yaml.Node, environ: dict[str, str]) -> Secret | None:
    entries = reader.mapping(node, "probe_key", ("file", "env"))
    if len(entries) != 1:
        reader.problem(node, "probe_key", "give exactly one of file or env")
        return None
    key, (_, value_node) = next(iter(entries.items()))
    value = read_secret(reader, value_node, f"probe_key.{key}", key, environ, "probe key")
    if value is not None and len(value) < _MIN_KEY_LENGTH:
        reader.problem(value_node, f"probe_key.{key}",
                       f"the key is too short: use at least {_MIN_KEY_LENGTH} characters")
        return None
    return Secret(value) if value is not None else None
