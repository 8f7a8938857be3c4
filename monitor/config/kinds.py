"""The settings of each kind of check: one frozen type per kind (smtp, imap, pop3, round trip) on a common base.

A kind's fields exist only on its own type, so a combination that makes no sense (a round trip without a
recipient, an IMAP check with SMTP submission fields) cannot be built, and each probe takes its own type
(mypy proves it). Code that handles any check takes `CheckSettings`, the union of the four (and of the
vantage's selfcheck as the runner runs it); its `name` (a
`Literal` class variable) narrows it: after `if check.name == "imap":` mypy knows an `ImapSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

__all__ = ["DEFAULT_QUOTA_WARNING", "KINDS", "PROTOCOL_KINDS", "CheckBase", "CheckSettings", "ImapSettings",
           "Pop3Settings", "RoundTripSettings", "SelfcheckRun", "SmtpSettings"]

# The share of the mailbox quota (any resource) above which a mailbox counts as nearly full, unless set.
DEFAULT_QUOTA_WARNING = 0.9


@dataclass(frozen=True, kw_only=True)
class CheckBase:
    """What every check has: where it connects, how often and how long it may take, and how it signs in."""

    # The check kind (`smtp`, `imap`, `pop3`, `roundtrip`): fixed by the type, not a field.
    name: ClassVar[str]
    port: int
    tls_mode: str
    interval: float
    timeout: float
    use_auth: bool = True
    # The target signs in with OAuth2: the check gets a token (a timed `token` step) before AUTH/LOGIN.
    uses_token: bool = False
    # The address family this check connects over (ipv4, ipv6; `both` while loading only, see monitor/families.py);
    # None: whatever the host name resolves to, as before.
    ip_family: str | None = None

    @property
    def label(self) -> str:
        """The `check` label: `smtp`, `imap`, ..., or `smtp:<profile>` for an SMTP client profile."""
        return self.name

    @property
    def key(self) -> str:
        """Unique among a target's checks: the label, or `roundtrip:imap` for a round trip read back over IMAP;
        `@ipv6` follows for a check bound to an address family (`imap@ipv6`)."""
        return f"{self._key_stem}@{self.ip_family}" if self.ip_family else self._key_stem

    @property
    def _key_stem(self) -> str:
        return self.label


@dataclass(frozen=True, kw_only=True)
class SmtpSettings(CheckBase):
    """The `smtp` check (and each SMTP client profile, `smtp:<profile>`): submission, optionally a MAIL/RCPT dry run."""

    name: ClassVar[Literal["smtp"]] = "smtp"
    via: ClassVar[None] = None  # only a round trip reads back
    helo_name: str | None = None
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    # SMTP client profile only: the kind of client this check imitates (TLS versions, AUTH mechanism).
    profile: str | None = None
    tls_min: str | None = None
    tls_max: str | None = None
    auth_mechanism: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.profile}" if self.profile else self.name


@dataclass(frozen=True, kw_only=True)
class ImapSettings(CheckBase):
    """The `imap` check: log in, look at a mailbox and its quota."""

    name: ClassVar[Literal["imap"]] = "imap"
    via: ClassVar[None] = None
    mailbox: str = "INBOX"
    # The share of the mailbox quota (any resource) above which the mailbox counts as nearly full.
    quota_warning: float = DEFAULT_QUOTA_WARNING


@dataclass(frozen=True, kw_only=True)
class Pop3Settings(CheckBase):
    """The `pop3` check: log in and look at the maildrop."""

    name: ClassVar[Literal["pop3"]] = "pop3"
    via: ClassVar[None] = None


@dataclass(frozen=True, kw_only=True)
class RoundTripSettings(CheckBase):
    """A round trip read back over one protocol (`via`): submit a signed probe message to `recipient` (from
    `sender`) and wait for it over IMAP or POP3. Port and TLS are those of the target's block for `via`."""

    name: ClassVar[Literal["roundtrip"]] = "roundtrip"
    via: str  # imap or pop3
    recipient: str
    # None: the recipient sends to itself.
    sender: str | None = None
    junk_folders: tuple[str, ...] = ()
    mailbox: str = "INBOX"
    # The target whose smtp block (host, port, credentials) submits the probe; None: this one.
    submit_via: str | None = None
    # The read-back mailbox's quota is looked at too; its nearly-full share is not configurable here.
    quota_warning: ClassVar[float] = DEFAULT_QUOTA_WARNING

    @property
    def _key_stem(self) -> str:
        return f"{self.label}:{self.via}"


@dataclass(frozen=True, kw_only=True)
class SelfcheckRun(CheckBase):
    """The vantage's own health check as the runner runs it (the one check of the `selfcheck` target, see
    App.run_selfcheck); never read from a config file: its settings are `Config.selfcheck`."""

    name: ClassVar[Literal["selfcheck"]] = "selfcheck"
    via: ClassVar[None] = None


CheckSettings: TypeAlias = SmtpSettings | ImapSettings | Pop3Settings | RoundTripSettings | SelfcheckRun
# The kinds a config file can name, by name (the selfcheck is not one); PROTOCOL_KINDS: those a target's (or a
# module's) protocol block describes, built from the common fields alone.
PROTOCOL_KINDS: dict[str, type[SmtpSettings | ImapSettings | Pop3Settings]] = {
    kind.name: kind for kind in (SmtpSettings, ImapSettings, Pop3Settings)}
KINDS: dict[str, type[SmtpSettings | ImapSettings | Pop3Settings | RoundTripSettings]] = {
    **PROTOCOL_KINDS, RoundTripSettings.name: RoundTripSettings}
