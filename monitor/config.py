"""Typed, immutable configuration, loaded from YAML with every problem reported at once (file, line, what).

The loader walks PyYAML's node tree rather than plain dicts so that each error can name the line it
comes from, duplicate keys are caught (plain `yaml.safe_load` silently keeps the last one), and unknown
keys are errors rather than silently ignored typos.
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from monitor.changes import ChangeEntry, ChangeSource, IcsError, check_rrule, parse_ics
from monitor.durations import format_duration, parse_duration
from monitor.errors import MailmonError
from monitor.families import IP_FAMILY_CHOICES
from monitor.families import expand as expand_families
from monitor.history import MIN_MAX_BYTES
from monitor.mx import MxSpec

if TYPE_CHECKING:
    from monitor.signin.settings import OAuth2Settings

__all__ = [
    "CHECK_NAMES",
    "DEFAULT_LISTEN",
    "Auth",
    "CheckSettings",
    "Config",
    "ConfigError",
    "Secret",
    "Target",
    "TlsSettings",
    "load",
    "parse_listen",
]

CHECK_NAMES = ("smtp", "imap", "pop3", "roundtrip")
READBACK_NAMES = ("imap", "pop3")
TLS_MODES = ("starttls", "implicit", "none")
DEFAULT_LISTEN = "127.0.0.1:9917"
DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 15.0
DEFAULT_CONCURRENCY = 64
# The well-known port per (protocol, TLS mode) when a check leaves `port` out.
DEFAULT_PORTS = {
    ("smtp", "starttls"): 587, ("smtp", "implicit"): 465, ("smtp", "none"): 25,
    ("imap", "starttls"): 143, ("imap", "implicit"): 993, ("imap", "none"): 143,
    ("pop3", "starttls"): 110, ("pop3", "implicit"): 995, ("pop3", "none"): 110,
}
DEFAULT_TLS_MODE = {"smtp": "starttls", "imap": "implicit", "pop3": "implicit"}
DEFAULT_ROUNDTRIP_TIMEOUT = 60.0
# Folders where a filtered probe message may land; only those that exist on the server are looked at.
DEFAULT_JUNK_FOLDERS = ("Junk", "Spam", "Junk E-mail", "INBOX.Junk", "INBOX.Spam")
# Label values end up in PromQL selectors and URLs: keep them to a safe alphabet.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

T = TypeVar("T")


class ConfigError(MailmonError):
    """The configuration is unusable; `problems` holds one plain sentence per bad entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A password that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class TlsSettings:
    """How to verify the server: a CA bundle (None = system store) and the expected certificate name."""

    ca_file: str | None = None
    server_name: str | None = None


_NO_PASSWORD = Secret("")  # an OAuth2 identity has none


@dataclass(frozen=True)
class Auth:
    """Who the probe logs in as, and with what: a password, or an OAuth2 token source (`oauth2`, see
    monitor/signin/) sent with the SASL `mechanism` (xoauth2 or oauthbearer)."""

    username: str
    password: Secret = _NO_PASSWORD
    oauth2: OAuth2Settings | None = None
    mechanism: str | None = None


@dataclass(frozen=True)
class CheckSettings:
    """One protocol check of one target."""

    name: str
    port: int
    tls_mode: str
    interval: float
    timeout: float
    use_auth: bool = True
    helo_name: str | None = None
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    mailbox: str = "INBOX"
    # Round trip only: the read-back protocol, who receives the probe message, who sends it, junk folders.
    via: str | None = None
    recipient: str | None = None
    sender: str | None = None
    junk_folders: tuple[str, ...] = ()
    # SMTP client profile only: the kind of client this check imitates (TLS versions, AUTH mechanism).
    profile: str | None = None
    tls_min: str | None = None
    tls_max: str | None = None
    auth_mechanism: str | None = None
    # IMAP only: the share of the mailbox quota (any resource) above which the mailbox counts as nearly full.
    quota_warning: float = 0.9
    # The target signs in with OAuth2: the check gets a token (a timed `token` step) before AUTH/LOGIN.
    uses_token: bool = False
    # Round trip only: the target whose smtp block (host, port, credentials) submits the probe; None: this one.
    submit_via: str | None = None
    # The address family this check connects over (ipv4, ipv6; `both` while loading only, see monitor/families.py);
    # None: whatever the host name resolves to, as before.
    ip_family: str | None = None

    @property
    def label(self) -> str:
        """The `check` label: `smtp`, `imap`, ..., or `smtp:<profile>` for an SMTP client profile."""
        return f"{self.name}:{self.profile}" if self.profile else self.name

    @property
    def key(self) -> str:
        """Unique among a target's checks: the label, or `roundtrip:imap` for a round trip read back over IMAP;
        `@ipv6` follows for a check bound to an address family (`imap@ipv6`)."""
        key = f"{self.label}:{self.via}" if self.via else self.label
        return f"{key}@{self.ip_family}" if self.ip_family else key


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    tls: TlsSettings
    auth: Auth | None
    checks: tuple[CheckSettings, ...]
    # `host: {mx: DOMAIN}`: the smtp check walks the domain's MX hosts (monitor/mx.py); `host` is then the domain.
    mx: MxSpec | None = None

    @property
    def server_name(self) -> str:
        """The name the server certificate must carry."""
        return self.tls.server_name or self.host

    def settings(self, name: str) -> CheckSettings | None:
        """The settings of the target's `name` check (the first, for round trips), or None."""
        return next((c for c in self.checks if c.name == name), None)


@dataclass(frozen=True)
class SelfcheckSettings:
    """The vantage's own health check: names to resolve, an optional TCP reference endpoint."""

    interval: float = 30.0
    timeout: float = 5.0
    resolve: tuple[str, ...] = ()
    reference: tuple[str, int] | None = None


@dataclass(frozen=True)
class HistorySettings:
    """The probe history journal: SQLite file, how long and how much to keep."""

    path: str
    retention: float = 30 * 86400.0
    max_bytes: int = 200 * 1000 * 1000


FAILURE_SERIES = ("all", "on_failure")


@dataclass(frozen=True)
class Module:
    """A check described once and run against hosts that come from outside the config (blackbox-style):
    `GET /probe?module=NAME&target=HOST[:PORT]`, or a `targets_from` file naming the module."""

    name: str
    check: CheckSettings
    tls: TlsSettings
    auth: Auth | None
    # Host names or addresses the module may be run against (full-match regexes); empty: any host. Required
    # when the module logs in, so that nobody can have the monitor send its credentials to a host of their
    # choosing through a URL.
    hosts: tuple[re.Pattern[str], ...] = ()

    def allows(self, host: str) -> bool:
        return not self.hosts or any(pattern.fullmatch(host) for pattern in self.hosts)

    def target(self, name: str, host: str, port: int | None = None) -> Target:
        """The one-check target this module describes for `host` (`port` overrides the module's)."""
        check = self.check if port is None else replace(self.check, port=port)
        return Target(name=name, host=host, tls=self.tls, auth=self.auth, checks=(check,))


@dataclass(frozen=True)
class Config:
    vantage: str
    listen: str
    interval: float
    timeout: float
    concurrency: int
    targets: tuple[Target, ...]
    source: str = ""
    # Signs probe messages (HMAC) so that only messages this monitor family sent are ever deleted.
    probe_key: Secret | None = None
    selfcheck: SelfcheckSettings = field(default_factory=SelfcheckSettings)
    history: HistorySettings | None = None
    # Which failure counters exist before their first failure: "on_failure" (the default since issue 14: a pair
    # appears when it first happens, ~70 % fewer series) or "all" (every (stage, reason) pair a check can
    # produce, at 0).
    failure_series: str = "on_failure"
    # Change calendars (client update days, renewals, maintenance) shown beside faults on every view.
    changes: tuple[ChangeSource, ...] = ()
    # Named checks for `GET /probe?module=NAME&target=HOST[:PORT]` and for discovered targets (monitor/ondemand.py).
    modules: dict[str, Module] = field(default_factory=dict)
    # Prometheus file_sd files (absolute glob patterns) whose entries become scheduled targets (monitor/discovery.py).
    targets_from: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` → (host, port); ValueError with a plain sentence otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9917 or [::1]:9917)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class YamlReader:
    """Walks YAML nodes, converting values and collecting every problem with its line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self._lines: list[int] = []
        self.ca_files: dict[str, str | None] = {}  # CA file -> why it cannot be used (None: it can)

    def problem(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        where = f" {path}:" if path else ""
        self.problems.append(f"{self.source}{line}:{where} {message}")
        self._lines.append(node.start_mark.line if node is not None else -1)

    def sorted_problems(self) -> list[str]:
        """The problems in file order (the loader finds them in its own order)."""
        order = sorted(range(len(self.problems)), key=lambda i: self._lines[i])
        return [self.problems[i] for i in order]

    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The mapping's entries by key; unknown and duplicate keys are reported."""
        if not isinstance(node, yaml.MappingNode):
            what = "must be a mapping" if path else "the top level must be a mapping"
            self.problem(node, path, f"{what} with keys {', '.join(allowed)}")
            return {}
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                self.problem(key_node, path, "keys must be plain strings")
            elif key in entries:
                self.problem(key_node, sub, "duplicate key")
            elif key not in allowed:
                self.problem(key_node, sub, f"unknown key (allowed here: {', '.join(allowed)})")
            else:
                entries[key] = (key_node, value_node)
        return entries

    def scalar(self, node: yaml.Node, path: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.problem(node, path, "must be a single value, not a list, mapping or empty")
            return None
        return str(node.value)

    def string(self, node: yaml.Node, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        if value == "":
            self.problem(node, path, "must not be empty")
            return None
        if pattern is not None and not pattern.match(value):
            self.problem(node, path, f"{value!r} is not {what}")
            return None
        return value

    def integer(self, node: yaml.Node, path: str, low: int, high: int) -> int | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        if node.tag != "tag:yaml.org,2002:int" or not re.fullmatch(r"[0-9]+", value) or not low <= int(value) <= high:
            quoted = node.tag == "tag:yaml.org,2002:str" and re.fullmatch(r"[0-9]+", value) is not None
            hint = " (a quoted string: remove the quotes)" if quoted else ""
            self.problem(node, path, f"must be an integer between {low} and {high}, got {value!r}{hint}")
            return None
        return int(value)

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        if node.tag != "tag:yaml.org,2002:bool":
            self.problem(node, path, f"must be true or false, got {value!r}")
            return None
        return value.lower() in ("true", "yes", "on")

    def duration(self, node: yaml.Node, path: str) -> float | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return None
        if seconds <= 0:
            self.problem(node, path, "must be longer than zero")
            return None
        return seconds

    def choice(self, node: yaml.Node, path: str, choices: tuple[str, ...]) -> str | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        if value not in choices:
            self.problem(node, path, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def string_list(self, node: yaml.Node, path: str) -> tuple[str, ...] | None:
        if isinstance(node, yaml.ScalarNode):
            single = self.string(node, path)
            return (single,) if single is not None else None
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, path, "must be an address or a non-empty list of addresses")
            return None
        items = [self.string(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if any(item is None for item in items):
            return None
        return tuple(item for item in items if item is not None)


def _get(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], key: str, path: str,
         convert: Callable[[yaml.Node, str], T | None], default: T) -> T:
    """The converted value of `key`, or `default` when absent or invalid (the problem is already recorded)."""
    if key not in entries:
        return default
    value = convert(entries[key][1], f"{path}.{key}" if path else key)
    return default if value is None else value


def _load_tls(reader: YamlReader, node: yaml.Node, path: str) -> TlsSettings:
    return _load_tls_entries(reader, reader.mapping(node, path, ("ca_file", "server_name")), path)


def _ca_file_problem(ca_file: str) -> str | None:
    """Why `ca_file` cannot serve as a CA bundle, or None. Caught here, a bad bundle would otherwise fail
    every probe at run time as a TLS error, blaming the server for a fault of the monitor's own setup."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        return f"CA file {ca_file!r} holds no usable certificate ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read CA file {ca_file!r}: {exc.strerror}{_whose(exc)}"
    return None


def _check_timing(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], path: str, interval: float,
                  timeout: float) -> None:
    """Report timeout > interval once, at the level that sets one of them (levels below inherit both)."""
    if timeout <= interval or not ("interval" in entries or "timeout" in entries):
        return
    key = "timeout" if "timeout" in entries else "interval"
    reader.problem(entries[key][1], f"{path}.{key}" if path else key,
                   f"timeout ({format_duration(timeout)}) must not be longer than "
                   f"interval ({format_duration(interval)})")


AUTH_KEYS = ("username", "password_env", "password_file", "oauth2", "mechanism")
OAUTH2_MECHANISMS = ("xoauth2", "oauthbearer")


def _load_auth(reader: YamlReader, node: yaml.Node, path: str, environ: dict[str, str]) -> Auth | None:
    entries = reader.mapping(node, path, AUTH_KEYS)
    if not isinstance(node, yaml.MappingNode):
        return None
    username = _get(reader, entries, "username", path, reader.string, None)
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
    password = _read_secret(reader, entries[key][1], f"{path}.{key}", source, environ, "password")
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
    mechanism = _get(reader, entries, "mechanism", path, lambda n, p: reader.choice(n, p, OAUTH2_MECHANISMS),
                     "xoauth2")
    oauth2 = load_oauth2(reader, entries["oauth2"][1], f"{path}.oauth2", environ)
    if username is None or oauth2 is None:
        return None
    return Auth(username=username, oauth2=oauth2, mechanism=mechanism)


def _read_secret(reader: YamlReader, node: yaml.Node, path: str, source: str, environ: dict[str, str],
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
            reader.problem(node, path, f"cannot read {what} file {file_name!r}: {exc.strerror}{_whose(exc)}")
            return None
    if value == "":
        reader.problem(node, path, f"the {what} is empty")
        return None
    return value


def _whose(exc: OSError) -> str:
    """For a permission error, who needs to read the file: the image and the systemd unit run as their own user."""
    if exc.errno != errno.EACCES or not hasattr(os, "geteuid"):
        return ""
    return f" (mailmon runs as uid {os.geteuid()}: make the file readable by that user)"


_CHECK_KEYS = {
    "smtp": ("port", "tls", "interval", "timeout", "auth", "helo_name", "mail_from", "rcpt_to", "ip_family"),
    "imap": ("port", "tls", "interval", "timeout", "auth", "mailbox", "quota_warning", "ip_family"),
    "pop3": ("port", "tls", "interval", "timeout", "auth", "ip_family"),
}
_PROFILE_KEYS = ("name", "tls_min", "tls_max", "auth_mechanism", *_CHECK_KEYS["smtp"])
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
AUTH_MECHANISMS = ("plain", "login")
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def _load_profiles(reader: YamlReader, node: yaml.Node, path: str, interval: float, timeout: float,
                   has_auth: bool) -> list[CheckSettings]:
    """SMTP client profiles: each an extra `smtp:<name>` check imitating one kind of mail client."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.problem(node, path, "must be a non-empty list of profiles ({name, port, tls, tls_min, tls_max, "
                                   "auth_mechanism})")
        return []
    profiles: list[CheckSettings] = []
    for index, item in enumerate(node.value):
        where = f"{path}[{index}]"
        entries = reader.mapping(item, where, _PROFILE_KEYS)
        if not isinstance(item, yaml.MappingNode):
            continue
        name = _get(reader, entries, "name", where,
                    lambda n, p: reader.string(n, p, _PROFILE_NAME, "a profile name (lower-case letters, digits, _ -)"),
                    None)
        if "name" not in entries:
            reader.problem(item, where, "name is required (it becomes the check label smtp:<name>)")
        elif name is not None and any(p.profile == name for p in profiles):
            reader.problem(entries["name"][1], f"{where}.name", f"duplicate profile name {name!r}")
            name = None
        versions = [_get(reader, entries, key, where, lambda n, p: reader.choice(n, p, TLS_VERSIONS), None)
                    for key in ("tls_min", "tls_max")]
        if None not in versions and TLS_VERSIONS.index(versions[0]) > TLS_VERSIONS.index(versions[1]):
            reader.problem(item, where, f"tls_min {versions[0]} is above tls_max {versions[1]}")
        mechanism = _get(reader, entries, "auth_mechanism", where,
                         lambda n, p: reader.choice(n, p, AUTH_MECHANISMS), None)
        plain = {key: value for key, value in entries.items() if key in _CHECK_KEYS["smtp"]}
        check = _load_check(reader, "smtp", item, where, interval, timeout, has_auth, entries=plain)
        if check is None or name is None:
            continue
        if mechanism is not None and not check.use_auth:
            reader.problem(entries["auth_mechanism"][1], f"{where}.auth_mechanism", "needs auth (credentials)")
        profiles.append(replace(check, profile=name, tls_min=versions[0], tls_max=versions[1],
                                auth_mechanism=mechanism))
    return profiles


def _load_check(reader: YamlReader, name: str, node: yaml.Node, path: str, interval: float, timeout: float,
                has_auth: bool, entries: dict[str, tuple[yaml.Node, yaml.Node]] | None = None) -> CheckSettings | None:
    if entries is not None:
        pass  # already read by the caller (a client profile)
    elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        entries = {}  # `smtp:` alone turns the check on with defaults
    else:
        entries = reader.mapping(node, path, _CHECK_KEYS[name])
    tls_mode = _get(reader, entries, "tls", path, lambda n, p: reader.choice(n, p, TLS_MODES), DEFAULT_TLS_MODE[name])
    port = _get(reader, entries, "port", path, lambda n, p: reader.integer(n, p, 1, 65535),
                DEFAULT_PORTS[(name, tls_mode)])
    check_interval = _get(reader, entries, "interval", path, reader.duration, interval)
    check_timeout = _get(reader, entries, "timeout", path, reader.duration, timeout)
    _check_timing(reader, entries, path, check_interval, check_timeout)
    use_auth = _get(reader, entries, "auth", path, reader.boolean, has_auth)
    if use_auth and not has_auth:
        reader.problem(entries["auth"][1], f"{path}.auth", "auth is on but the target has no auth block")
    if name in ("imap", "pop3") and not has_auth:
        reader.problem(node, path, f"{name} needs credentials: add an auth block to the target")
    elif name in ("imap", "pop3") and not use_auth and "auth" in entries:
        reader.problem(entries["auth"][1], f"{path}.auth", f"the {name} check always logs in: auth cannot be off")
    mail_from = _get(reader, entries, "mail_from", path, reader.string, None)
    no_recipients: tuple[str, ...] = ()
    rcpt_to = _get(reader, entries, "rcpt_to", path, reader.string_list, no_recipients)
    if (mail_from is None) != (not rcpt_to):
        reader.problem(node, path, "mail_from and rcpt_to go together (the MAIL/RCPT dry run needs both)")
    return CheckSettings(
        name=name, port=port, tls_mode=tls_mode, interval=check_interval, timeout=check_timeout,
        use_auth=use_auth and has_auth,
        helo_name=_get(reader, entries, "helo_name", path, reader.string, None),
        mail_from=mail_from, rcpt_to=rcpt_to,
        mailbox=_get(reader, entries, "mailbox", path, reader.string, "INBOX"),
        quota_warning=_get(reader, entries, "quota_warning", path, _ratio(reader), 0.9),
        ip_family=_get(reader, entries, "ip_family", path, lambda n, p: reader.choice(n, p, IP_FAMILY_CHOICES), None),
    )


def _ratio(reader: YamlReader) -> Callable[[yaml.Node, str], float | None]:
    """A share written as `90%` or `0.9`, above 0 and at most 1."""
    def convert(node: yaml.Node, path: str) -> float | None:
        text = reader.scalar(node, path)
        if text is None:
            return None
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            value = -1.0
        if not 0 < value <= 1:
            reader.problem(node, path, f"must be a share above 0 and at most 100% (e.g. 90% or 0.9), got {text!r}")
            return None
        return value
    return convert


_ROUNDTRIP_KEYS = ("via", "interval", "timeout", "recipient", "sender", "junk_folders", "mailbox", "ip_family",
                   "submit_via")


def _load_roundtrip(reader: YamlReader, node: yaml.Node, path: str, interval: float,
                    checks: dict[str, CheckSettings], auth_user: str | None,
                    has_auth: bool = False) -> list[CheckSettings]:
    """One CheckSettings per read-back protocol; submission and read-back reuse the target's own blocks."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}  # `roundtrip:` alone: every default
    else:
        entries = reader.mapping(node, path, _ROUNDTRIP_KEYS)
    default_via = tuple(name for name in READBACK_NAMES if name in checks) or ("imap",)
    via = _get(reader, entries, "via", path, reader.string_list, default_via)
    for name in via:
        if name not in READBACK_NAMES:
            reader.problem(entries["via"][1], f"{path}.via", f"{name!r} cannot read mail back: use imap or pop3")
        elif name not in checks:
            reader.problem(node, path, f"via {name} needs the target's {name} block (its port, tls and credentials)")
    if "smtp" not in checks and "submit_via" not in entries:
        reader.problem(node, path, "a round trip submits over SMTP: the target needs an smtp block (or submit_via)")
    if len(set(via)) != len(via):
        reader.problem(entries["via"][1], f"{path}.via", "lists a protocol twice")
    check_interval = _get(reader, entries, "interval", path, reader.duration, interval)
    # The default deadline shrinks to fit a shorter interval; one set explicitly must fit by itself.
    check_timeout = _get(reader, entries, "timeout", path, reader.duration,
                         min(DEFAULT_ROUNDTRIP_TIMEOUT, check_interval))
    _check_timing(reader, entries, path, check_interval, check_timeout)
    recipient = _get(reader, entries, "recipient", path, reader.string, auth_user)
    # An auth block that failed (an unreadable password file) has its own problem: one cause, one error.
    if recipient is None and not has_auth:
        reader.problem(node, path, "recipient is required when the target has no auth block")
    submit_via = _get(reader, entries, "submit_via", path, reader.string, None)
    # Submitted through another target, the probe comes from that target's user (settled in _link_submitters).
    sender = _get(reader, entries, "sender", path, reader.string, None if submit_via else recipient)
    default_junk: tuple[str, ...] = DEFAULT_JUNK_FOLDERS
    junk = _get(reader, entries, "junk_folders", path, reader.string_list, default_junk)
    mailbox = _get(reader, entries, "mailbox", path, reader.string, "INBOX")
    ip_family = _get(reader, entries, "ip_family", path, lambda n, p: reader.choice(n, p, IP_FAMILY_CHOICES), None)
    result = []
    for name in via:
        readback = checks.get(name)
        if name not in READBACK_NAMES or readback is None or recipient is None:
            continue
        result.append(CheckSettings(
            name="roundtrip", port=readback.port, tls_mode=readback.tls_mode, interval=check_interval,
            timeout=check_timeout, use_auth=True, via=name, recipient=recipient, sender=sender,
            junk_folders=junk, mailbox=mailbox, ip_family=ip_family, submit_via=submit_via))
    return result


def _load_target(reader: YamlReader, node: yaml.Node, path: str, interval: float, timeout: float,
                 environ: dict[str, str]) -> Target | None:
    entries = reader.mapping(node, path, ("name", "host", "tls", "auth", "interval", "timeout", *CHECK_NAMES,
                                          "smtp_profiles", "ip_family"))
    if not isinstance(node, yaml.MappingNode):
        return None
    for required in ("name", "host"):
        if required not in entries:
            reader.problem(node, path, f"{required} is required")
    name = _get(reader, entries, "name", path,
                lambda n, p: reader.string(n, p, _NAME, "a valid target name (letters, digits, _ . : @ -)"), None)
    mx: MxSpec | None = None
    if "host" in entries and isinstance(entries["host"][1], yaml.MappingNode):
        mx = _load_mx_host(reader, entries["host"][1], f"{path}.host")
        host = mx.domain if mx is not None else None
    else:
        host = _get(reader, entries, "host", path, reader.string, None)
    tls = _load_tls(reader, entries["tls"][1], f"{path}.tls") if "tls" in entries else TlsSettings()
    auth = _load_auth(reader, entries["auth"][1], f"{path}.auth", environ) if "auth" in entries else None
    interval = _get(reader, entries, "interval", path, reader.duration, interval)
    timeout = _get(reader, entries, "timeout", path, reader.duration, timeout)
    _check_timing(reader, entries, path, interval, timeout)
    checks: list[CheckSettings] = []
    for check_name in CHECK_NAMES:
        if check_name in entries and check_name != "roundtrip":
            check = _load_check(reader, check_name, entries[check_name][1], f"{path}.{check_name}",
                                interval, timeout, "auth" in entries)
            if check is not None:
                checks.append(check)
    if "smtp_profiles" in entries:
        checks.extend(_load_profiles(reader, entries["smtp_profiles"][1], f"{path}.smtp_profiles", interval, timeout,
                                     "auth" in entries))
    if "roundtrip" in entries:
        by_name = {c.name: c for c in checks if c.profile is None}
        checks.extend(_load_roundtrip(reader, entries["roundtrip"][1], f"{path}.roundtrip", interval, by_name,
                                      auth.username if auth is not None else None, "auth" in entries))
    if not any(c in entries for c in (*CHECK_NAMES, "smtp_profiles")):
        reader.problem(node, path, f"no checks: add at least one of {', '.join(CHECK_NAMES)}")
    if auth is not None and auth.oauth2 is not None:
        if any(c.auth_mechanism for c in checks):
            reader.problem(entries["smtp_profiles"][1], f"{path}.smtp_profiles",
                           "auth_mechanism (plain, login) needs a password; with oauth2 set auth.mechanism")
        checks = [replace(c, uses_token=True) if c.use_auth else c for c in checks]
    target_family = _get(reader, entries, "ip_family", path, lambda n, p: reader.choice(n, p, IP_FAMILY_CHOICES),
                         None)
    checks = expand_families(checks, target_family)
    if mx is not None:
        for other in ("imap", "pop3", "roundtrip"):
            if other in entries:
                reader.problem(entries[other][0], f"{path}.{other}", "needs a host: MX records (host: {mx: ...}) "
                                                                     "name where mail arrives, checked by smtp only")
    if name is None or host is None:
        return None
    return Target(name=name, host=host, tls=tls, auth=auth, checks=tuple(checks), mx=mx)


def _link_submitters(reader: YamlReader, targets: list[Target], nodes: dict[str, yaml.Node],
                     paths: dict[str, str]) -> list[Target]:
    """Round trips with `submit_via`: the named target must exist and submit over SMTP; without `sender`, the probe
    comes from that target's user (a loop from one provider to another)."""
    by_name = {t.name: t for t in targets}
    linked = []
    for target in targets:
        checks = []
        for check in target.checks:
            if check.submit_via is not None:
                where = f"{paths[target.name]}.roundtrip.submit_via"
                node = _child(_child(nodes[target.name], "roundtrip"), "submit_via")
                other = by_name.get(check.submit_via)
                if other is None:
                    reader.problem(node, where, f"no target named {check.submit_via!r}")
                elif other.settings("smtp") is None:
                    reader.problem(node, where, f"target {other.name!r} has no smtp block to submit through")
                elif check.sender is None:
                    if other.auth is None:
                        reader.problem(node, where, f"target {other.name!r} has no auth block: set roundtrip.sender")
                    else:
                        check = replace(check, sender=other.auth.username)
            checks.append(check)
        linked.append(replace(target, checks=tuple(checks)))
    return linked


def _child(node: yaml.Node, key: str) -> yaml.Node:
    """The value node of `key` in a mapping node (for a problem's line), else the node itself."""
    if isinstance(node, yaml.MappingNode):
        for name, value in node.value:
            if getattr(name, "value", None) == key:
                return value  # type: ignore[no-any-return]
    return node


def _load_mx_host(reader: YamlReader, node: yaml.Node, path: str) -> MxSpec | None:
    """`{mx: DOMAIN, resolver: ADDRESS[:PORT]}` (resolver optional: the system's)."""
    entries = reader.mapping(node, path, ("mx", "resolver"))
    domain = _get(reader, entries, "mx", path, reader.string, None)
    if domain is None:
        if "mx" not in entries:
            reader.problem(node, path, "mx is required: the domain whose MX records to check")
        return None
    resolver: tuple[str, int] | None = None
    text = _get(reader, entries, "resolver", path, reader.string, None)
    if text is not None:
        if text.startswith("["):  # [::1]:5353
            address, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ("53" if not rest else "")
        elif text.count(":") == 1:  # 127.0.0.53:5353
            address, port = text.split(":")
        else:
            address, port = text, "53"
        if not is_address(address) or not port.isdigit() or not 0 < int(port) < 65536:
            reader.problem(entries["resolver"][1], f"{path}.resolver",
                           f"{text!r} is not an IP address with an optional port (e.g. 127.0.0.53 or [::1]:5353)")
        else:
            resolver = (address, int(port))
    return MxSpec(domain.rstrip(".").lower(), resolver)


def load_text(text: str, source: str, environ: dict[str, str] | None = None) -> Config:
    """Build a Config from YAML text; raises ConfigError listing every problem."""
    environ = dict(os.environ) if environ is None else environ
    reader = YamlReader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:
        at = text.count("\n", 0, exc.position) + 1
        raise ConfigError([f"{source}:{at}: not valid YAML: character #x{exc.character:04x}: {exc.reason}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: not valid YAML: nested too deeply"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        message = exc.problem or exc.context or "unreadable"
        if exc.problem and exc.context and exc.context_mark is not None:
            message += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise ConfigError([f"{source}{line}: not valid YAML: {message}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None
    if root is None:
        raise ConfigError([f"{source}: the file is empty"])
    entries = reader.mapping(root, "", ("vantage", "listen", "defaults", "concurrency", "probe_key", "selfcheck",
                                        "history", "metrics", "targets", "changes", "modules", "targets_from"))
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(reader.sorted_problems())

    vantage = _get(reader, entries, "vantage", "",
                   lambda n, p: reader.string(n, p, _NAME, "a valid vantage name (letters, digits, _ . : @ -)"), "")
    if "vantage" not in entries:
        reader.problem(root, "vantage", "is required (it labels every series of this monitor)")
    listen = _get(reader, entries, "listen", "", reader.string, DEFAULT_LISTEN)
    try:
        parse_listen(listen)
    except ValueError as exc:
        reader.problem(entries["listen"][1], "listen", str(exc))
    interval, timeout = DEFAULT_INTERVAL, DEFAULT_TIMEOUT
    if "defaults" in entries:
        defaults = reader.mapping(entries["defaults"][1], "defaults", ("interval", "timeout"))
        interval = _get(reader, defaults, "interval", "defaults", reader.duration, interval)
        timeout = _get(reader, defaults, "timeout", "defaults", reader.duration, timeout)
        _check_timing(reader, defaults, "defaults", interval, timeout)
    concurrency = _get(reader, entries, "concurrency", "", lambda n, p: reader.integer(n, p, 1, 100000),
                       DEFAULT_CONCURRENCY)

    failure_series = "on_failure"
    if "metrics" in entries:
        metrics = reader.mapping(entries["metrics"][1], "metrics", ("failure_series",))
        failure_series = _get(reader, metrics, "failure_series", "metrics",
                              lambda n, p: reader.choice(n, p, FAILURE_SERIES), failure_series)
    probe_key = _load_probe_key(reader, entries["probe_key"][1], environ) if "probe_key" in entries else None
    targets: list[Target] = []
    modules = _load_modules(reader, entries["modules"][1], interval, timeout, environ) if "modules" in entries else {}
    targets_from = _load_targets_from(reader, entries["targets_from"][1], source) if "targets_from" in entries else ()
    if "targets" not in entries:
        if not modules and not targets_from:
            # (Or none, with modules for GET /probe or targets_from: docs/scaling.md.)
            reader.problem(root, "targets", "is required: list at least one target")
    else:
        node = entries["targets"][1]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            reader.problem(node, "targets", "must be a non-empty list of targets")
        else:
            seen: dict[str, int] = {}
            for index, target_node in enumerate(node.value):
                target = _load_target(reader, target_node, f"targets[{index}]", interval, timeout, environ)
                if target is None:
                    continue
                if target.name in seen:
                    reader.problem(target_node, f"targets[{index}].name",
                                   f"duplicate target name {target.name!r} (first at targets[{seen[target.name]}])")
                    continue
                seen[target.name] = index
                targets.append(target)
            targets = _link_submitters(reader, targets, {name: node.value[i] for name, i in seen.items()},
                                       {name: f"targets[{i}]" for name, i in seen.items()})
    if probe_key is None and "probe_key" not in entries and any(c.via for t in targets for c in t.checks):
        reader.problem(root, "probe_key", "is required for round trips: {file: PATH} or {env: NAME} holding a "
                                          "secret of at least 16 characters that signs probe messages")
    if reader.problems:
        raise ConfigError(reader.sorted_problems())
    selfcheck = _load_selfcheck(reader, entries["selfcheck"][1] if "selfcheck" in entries else None, interval,
                                targets)
    history = _load_history(reader, entries["history"][1], source, environ) if "history" in entries else None
    changes = _load_changes(reader, entries["changes"][1], source) if "changes" in entries else ()
    if reader.problems:
        raise ConfigError(reader.sorted_problems())
    return Config(vantage=vantage, listen=listen, interval=interval, timeout=timeout, concurrency=concurrency,
                  targets=tuple(targets), source=source, probe_key=probe_key, selfcheck=selfcheck, history=history,
                  failure_series=failure_series, changes=changes, modules=modules, targets_from=targets_from)


_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
# The history writer's own floor (its size retention needs room for a few commits): one rule, checked here
# with file:line so `validate` and `run` agree.
_MIN_HISTORY_BYTES = MIN_MAX_BYTES


def state_directory(environ: dict[str, str]) -> str | None:
    """The service manager's state directory: systemd's StateDirectory= sets $STATE_DIRECTORY (a colon-separated
    list; the first is ours), and the container image sets it to its volume, /var/lib/mailmon."""
    first = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return first if os.path.isabs(first) else None


def _load_history(reader: YamlReader, node: yaml.Node, source: str,
                  environ: dict[str, str]) -> HistorySettings | None:
    """Where the probe history journal lives and how much of it to keep."""
    entries = reader.mapping(node, "history", ("path", "retention", "max_size"))
    if not isinstance(node, yaml.MappingNode):
        return None
    if "path" not in entries:
        reader.problem(node, "history", "path is required (the SQLite file, relative to $STATE_DIRECTORY when set, "
                                        "else to this config file)")
        return None
    path = reader.string(entries["path"][1], "history.path")
    retention = _get(reader, entries, "retention", "history", reader.duration, HistorySettings.retention)
    max_bytes = HistorySettings.max_bytes
    if "max_size" in entries:
        text = reader.scalar(entries["max_size"][1], "history.max_size")
        match = _SIZE.match(text.strip()) if text is not None else None
        if text is not None and match is None:
            reader.problem(entries["max_size"][1], "history.max_size", f"{text!r} is not a size (e.g. 200MB, 1GiB)")
        elif match is not None:
            max_bytes = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
            if max_bytes < _MIN_HISTORY_BYTES:
                reader.problem(entries["max_size"][1], "history.max_size",
                               f"must be at least {_MIN_HISTORY_BYTES // 1024}KiB, got {max_bytes} bytes")
    if path is None:
        return None
    # A relative path is state, not configuration: under a service manager it goes to the state directory (the
    # config directory is read-only there: /etc/mailmon under ProtectSystem=strict or a :ro container mount);
    # run by hand, beside the config file as before.
    base = state_directory(environ)
    if not os.path.isabs(path) and base is not None:
        path = os.path.join(base, path)
    elif not os.path.isabs(path) and source:
        path = os.path.join(os.path.dirname(os.path.abspath(source)), path)
    return HistorySettings(path=path, retention=retention, max_bytes=max_bytes)


_SELFCHECK_INTERVAL = 30.0
_SELFCHECK_TIMEOUT = 5.0


def is_address(host: str) -> bool:
    """True for an IP address literal (which needs no name resolution)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _load_selfcheck(reader: YamlReader, node: yaml.Node | None, interval: float,
                    targets: list[Target]) -> SelfcheckSettings:
    """The vantage's own health check; on by default, resolving the target host names the probes need."""
    entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    if node is not None and not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        entries = reader.mapping(node, "selfcheck", ("interval", "timeout", "resolve", "reference"))
    # Never slower than the checks it vouches for: a broken vantage must show before its failures mislead.
    check_interval = _get(reader, entries, "interval", "selfcheck", reader.duration,
                          min(interval, _SELFCHECK_INTERVAL))
    check_timeout = _get(reader, entries, "timeout", "selfcheck", reader.duration,
                         min(_SELFCHECK_TIMEOUT, check_interval))
    _check_timing(reader, entries, "selfcheck", check_interval, check_timeout)
    names = tuple(dict.fromkeys(t.host for t in targets if not is_address(t.host)))
    resolve = _get(reader, entries, "resolve", "selfcheck", reader.string_list, names)
    reference: tuple[str, int] | None = None
    if "reference" in entries:
        text = reader.string(entries["reference"][1], "selfcheck.reference")
        if text is not None:
            try:
                reference = parse_listen(text)
            except ValueError:
                reader.problem(entries["reference"][1], "selfcheck.reference",
                               f"{text!r} is not HOST:PORT (a TCP endpoint this vantage should always reach)")
    return SelfcheckSettings(interval=check_interval, timeout=check_timeout, resolve=resolve, reference=reference)


_MIN_KEY_LENGTH = 16


def _load_probe_key(reader: YamlReader, node: yaml.Node, environ: dict[str, str]) -> Secret | None:
    entries = reader.mapping(node, "probe_key", ("file", "env"))
    if len(entries) != 1:
        reader.problem(node, "probe_key", "give exactly one of file or env")
        return None
    key, (_, value_node) = next(iter(entries.items()))
    value = _read_secret(reader, value_node, f"probe_key.{key}", key, environ, "probe key")
    if value is not None and len(value) < _MIN_KEY_LENGTH:
        reader.problem(value_node, f"probe_key.{key}",
                       f"the key is too short: use at least {_MIN_KEY_LENGTH} characters")
        return None
    return Secret(value) if value is not None else None


def load(path: str, environ: dict[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError (also for an unreadable file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text"]) from None
    return load_text(text, path, environ)


@functools.cache
def default_helo_name() -> str:
    """The name we announce in EHLO when the config names none; looked up once (it can block on DNS)."""
    return socket.getfqdn() or "mailmon.localdomain"


_CALENDAR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@ -]{0,63}$")


def _load_changes(reader: YamlReader, node: yaml.Node, source: str) -> tuple[ChangeSource, ...]:
    """`changes:` — a list of calendars, each `{calendar: NAME, file: F.ics}` or `{calendar: NAME, entries: [...]}`."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.problem(node, "changes", "must be a non-empty list of calendars ({calendar: NAME, file: F.ics} or "
                                        "{calendar: NAME, entries: [...]})")
        return ()
    sources = []
    for index, item in enumerate(node.value):
        path = f"changes[{index}]"
        entries = reader.mapping(item, path, ("calendar", "file", "entries"))
        if not isinstance(item, yaml.MappingNode):
            continue
        name = _get(reader, entries, "calendar", path,
                    lambda n, p: reader.string(n, p, _CALENDAR_NAME, "a calendar name (letters, digits, _ . : @ - "
                                                                     "and spaces, at most 64)"), None)
        if "calendar" not in entries:
            reader.problem(item, path, "calendar is required (it names the calendar on every view)")
        if ("file" in entries) == ("entries" in entries):
            reader.problem(item, path, "give exactly one of file (an iCalendar .ics file) or entries")
            continue
        if "file" in entries:
            changes_file = _load_ics_file(reader, entries["file"][1], f"{path}.file", source)
            if name is not None and changes_file is not None:
                sources.append(ChangeSource(calendar=name, file=changes_file))
        else:
            inline = _load_change_entries(reader, entries["entries"][1], f"{path}.entries")
            if name is not None and inline is not None:
                sources.append(ChangeSource(calendar=name, entries=inline))
    return tuple(sources)


def _load_ics_file(reader: YamlReader, node: yaml.Node, path: str, source: str) -> str | None:
    """The .ics file's absolute path (relative ones are relative to the config file), parsed once to prove it."""
    name = reader.string(node, path)
    if name is None:
        return None
    if not os.path.isabs(name) and source:
        name = os.path.join(os.path.dirname(os.path.abspath(source)), name)
    try:
        with open(name, encoding="utf-8") as handle:
            parse_ics(handle.read(), name)
    except OSError as exc:
        reader.problem(node, path, f"cannot read calendar file {name!r}: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        reader.problem(node, path, f"calendar file {name!r} is not UTF-8 text (RFC 5545 files are UTF-8)")
        return None
    except IcsError as exc:
        # The calendar's own file and line say more than the config's: report those, naming the config entry.
        for problem in exc.problems:
            reader.problem(node, path, f"bad calendar: {problem}")
        return None
    return name


_CHANGE_START = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)$")


def _load_change_entries(reader: YamlReader, node: yaml.Node, path: str) -> tuple[ChangeEntry, ...] | None:
    """Inline changes: `{name, start: "2026-01-13 10:00", timezone: Asia/Tokyo, duration: 3d, rrule: ...}`."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.problem(node, path, "must be a non-empty list of {name, start, duration[, timezone][, rrule]}")
        return None
    found: list[ChangeEntry] = []
    ok = True
    for index, item in enumerate(node.value):
        sub = f"{path}[{index}]"
        entries = reader.mapping(item, sub, ("name", "start", "timezone", "duration", "rrule"))
        if not isinstance(item, yaml.MappingNode):
            ok = False
            continue
        for key in ("name", "start", "duration"):
            if key not in entries:
                reader.problem(item, sub, f"{key} is required")
                ok = False
        name = _get(reader, entries, "name", sub, reader.string, None)
        duration = _get(reader, entries, "duration", sub, reader.duration, None)
        zone: dt.tzinfo = dt.UTC
        if "timezone" in entries:
            zone_name = reader.string(entries["timezone"][1], f"{sub}.timezone")
            try:
                zone = ZoneInfo(zone_name) if zone_name is not None else zone
            except (ZoneInfoNotFoundError, ValueError):
                reader.problem(entries["timezone"][1], f"{sub}.timezone",
                               f"{zone_name!r} is not a known IANA time zone (e.g. Asia/Tokyo, Europe/Berlin, UTC)")
                ok = False
        start = None
        if "start" in entries:
            text = reader.scalar(entries["start"][1], f"{sub}.start")
            match = _CHANGE_START.match(text.strip()) if text is not None else None
            if match is None:
                reader.problem(entries["start"][1], f"{sub}.start",
                               f"{text!r} is not a local date and time: write e.g. \"2026-01-13 10:00\" (the zone "
                               "goes in timezone)")
                ok = False
            else:
                try:
                    start = dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}").replace(tzinfo=zone)
                except ValueError as exc:
                    reader.problem(entries["start"][1], f"{sub}.start", f"not a real date and time: {exc}")
                    ok = False
        rrule = None
        if "rrule" in entries:
            rrule = reader.string(entries["rrule"][1], f"{sub}.rrule")
            try:
                check_rrule(rrule or "")
            except ValueError as exc:
                reader.problem(entries["rrule"][1], f"{sub}.rrule",
                               f"not an RFC 5545 RRULE (e.g. FREQ=MONTHLY;BYDAY=2TU): {exc}")
                ok = False
        if ok and name is not None and start is not None and duration is not None:
            found.append(ChangeEntry(name=name, start=start, duration=dt.timedelta(seconds=duration), rrule=rrule))
    return tuple(found) if ok else None


_MODULE_KEYS = ("protocol", "port", "tls", "ca_file", "server_name", "auth", "timeout", "hosts", "helo_name",
                "mail_from", "rcpt_to", "mailbox", "quota_warning")
MODULE_PROTOCOLS = ("smtp", "imap", "pop3")
_MODULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _load_modules(reader: YamlReader, node: yaml.Node, interval: float, timeout: float,
                  environ: dict[str, str]) -> dict[str, Module]:
    """`modules:` — NAME: {protocol, port, tls, ca_file, server_name, auth, timeout, hosts, ...} (blackbox-style)."""
    if not isinstance(node, yaml.MappingNode) or not node.value:
        reader.problem(node, "modules", "must be a mapping of module names to {protocol, port, tls, ...}")
        return {}
    modules: dict[str, Module] = {}
    for key_node, item in node.value:
        name = reader.string(key_node, "modules", _MODULE_NAME, "a module name (letters, digits, _ . -)")
        if name is None:
            continue
        path = f"modules.{name}"
        if name in modules:
            reader.problem(key_node, path, "duplicate module name")
            continue
        entries = reader.mapping(item, path, _MODULE_KEYS)
        if not isinstance(item, yaml.MappingNode):
            continue
        if "protocol" not in entries:
            reader.problem(item, path, f"protocol is required (one of {', '.join(MODULE_PROTOCOLS)})")
            continue
        protocol = reader.choice(entries["protocol"][1], f"{path}.protocol", MODULE_PROTOCOLS)
        if protocol is None:
            continue
        auth = _load_auth(reader, entries["auth"][1], f"{path}.auth", environ) if "auth" in entries else None
        tls = TlsSettings()
        if "ca_file" in entries or "server_name" in entries:
            tls_entries = {k: v for k, v in entries.items() if k in ("ca_file", "server_name")}
            tls = _load_tls_entries(reader, tls_entries, path)
        hosts: list[re.Pattern[str]] = []
        if "hosts" in entries:
            no_hosts: tuple[str, ...] = ()
            for index, text in enumerate(_get(reader, entries, "hosts", path, reader.string_list, no_hosts)):
                try:
                    hosts.append(re.compile(text))
                except re.error as exc:
                    reader.problem(entries["hosts"][1], f"{path}.hosts[{index}]", f"{text!r} is not a regex: {exc}")
        if "auth" in entries and "hosts" not in entries:
            reader.problem(item, path, "a module that logs in needs hosts: [regex, ...], the hosts its credentials "
                                       "may be sent to (GET /probe takes the host from the URL)")
        module_timeout = _get(reader, entries, "timeout", path, reader.duration, timeout)
        # The check's own keys, read as a target's check block would be (interval: the module's timeout at most).
        plain = {k: v for k, v in entries.items() if k in _CHECK_KEYS[protocol] and k not in ("auth", "timeout")}
        check = _load_check(reader, protocol, item, path, max(interval, module_timeout), module_timeout,
                            "auth" in entries, entries=plain)
        if check is None:
            continue
        if auth is not None and auth.oauth2 is not None:
            check = replace(check, uses_token=True)
        modules[name] = Module(name=name, check=check, tls=tls, auth=auth, hosts=tuple(hosts))
    return modules


def _load_tls_entries(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], path: str) -> TlsSettings:
    """ca_file and server_name given beside other keys (a module's), checked as a target's `tls` block is."""
    ca_file = _get(reader, entries, "ca_file", path, reader.string, None)
    if ca_file is not None:
        if ca_file not in reader.ca_files:
            reader.ca_files[ca_file] = _ca_file_problem(ca_file)
        problem = reader.ca_files[ca_file]
        if problem is not None:
            reader.problem(entries["ca_file"][1], f"{path}.ca_file", problem)
    return TlsSettings(ca_file=ca_file, server_name=_get(reader, entries, "server_name", path, reader.string, None))


def _load_targets_from(reader: YamlReader, node: yaml.Node, source: str) -> tuple[str, ...]:
    """`targets_from: [glob, ...]`: Prometheus file_sd files (JSON or YAML), relative to this config file."""
    patterns = reader.string_list(node, "targets_from")
    if patterns is None:
        return ()
    base = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    return tuple(p if os.path.isabs(p) else os.path.join(base, p) for p in patterns)
