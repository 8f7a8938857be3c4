"""The configuration's model: frozen dataclasses (Config, Target, the check settings, Auth, Secret, ...) and the
defaults the loaders fill in. Nothing here reads YAML; the loaders beside this module build these values."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from monitor.changes import ChangeSource
from monitor.config.kinds import CheckBase, CheckSettings, ImapSettings, Pop3Settings, SmtpSettings
from monitor.errors import MailmonError
from monitor.mx import MxSpec

if TYPE_CHECKING:
    from monitor.signin.settings import OAuth2Settings

C = TypeVar("C", bound=CheckBase)

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
LABEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")


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

    def first(self, kind: type[C]) -> C | None:
        """The target's first check of the settings type `kind` (e.g. its `SmtpSettings`), or None."""
        return next((c for c in self.checks if isinstance(c, kind)), None)


@dataclass(frozen=True)
class SelfcheckSettings:
    """The vantage's own health check: names to resolve, an optional TCP reference endpoint."""

    interval: float = 30.0
    timeout: float = 5.0
    resolve: tuple[str, ...] = ()
    reference: tuple[str, int] | None = None
    # False when `resolve` is the default (every target host name): targets added later (`targets_from`) join it.
    resolve_given: bool = False


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
    check: SmtpSettings | ImapSettings | Pop3Settings
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
