"""The protocol checks of a target: `smtp`, `imap`, `pop3`, the SMTP client profiles (`smtp_profiles`) and the
`roundtrip`, each read into its settings with the target's defaults (interval, timeout, credentials) filled in."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import TypedDict

import yaml

from monitor.config.kinds import (
    DEFAULT_QUOTA_WARNING,
    CheckSettings,
    ImapSettings,
    Pop3Settings,
    RoundTripSettings,
    SmtpSettings,
)
from monitor.config.model import (
    DEFAULT_JUNK_FOLDERS,
    DEFAULT_PORTS,
    DEFAULT_ROUNDTRIP_TIMEOUT,
    DEFAULT_TLS_MODE,
    READBACK_NAMES,
    TLS_MODES,
)
from monitor.config.reader import YamlReader, check_timing, get
from monitor.families import IP_FAMILY_CHOICES

__all__ = ["AUTH_MECHANISMS", "CHECK_KEYS", "TLS_VERSIONS", "load_check", "load_profiles", "load_roundtrip",
           "load_smtp"]


CHECK_KEYS = {
    "smtp": ("port", "tls", "interval", "timeout", "auth", "helo_name", "mail_from", "rcpt_to", "ip_family"),
    "imap": ("port", "tls", "interval", "timeout", "auth", "mailbox", "quota_warning", "ip_family"),
    "pop3": ("port", "tls", "interval", "timeout", "auth", "ip_family"),
}
_PROFILE_KEYS = ("name", "tls_min", "tls_max", "auth_mechanism", *CHECK_KEYS["smtp"])
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
AUTH_MECHANISMS = ("plain", "login")
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def load_profiles(reader: YamlReader, node: yaml.Node, path: str, interval: float, timeout: float,
                  has_auth: bool) -> list[SmtpSettings]:
    """SMTP client profiles: each an extra `smtp:<name>` check imitating one kind of mail client."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.problem(node, path, "must be a non-empty list of profiles ({name, port, tls, tls_min, tls_max, "
                                   "auth_mechanism})")
        return []
    profiles: list[SmtpSettings] = []
    for index, item in enumerate(node.value):
        where = f"{path}[{index}]"
        entries = reader.mapping(item, where, _PROFILE_KEYS)
        if not isinstance(item, yaml.MappingNode):
            continue
        name = get(reader, entries, "name", where,
                   lambda n, p: reader.string(n, p, _PROFILE_NAME, "a profile name (lower-case letters, digits, _ -)"),
                   None)
        if "name" not in entries:
            reader.problem(item, where, "name is required (it becomes the check label smtp:<name>)")
        elif name is not None and any(p.profile == name for p in profiles):
            reader.problem(entries["name"][1], f"{where}.name", f"duplicate profile name {name!r}")
            name = None
        versions = [get(reader, entries, key, where, lambda n, p: reader.choice(n, p, TLS_VERSIONS), None)
                    for key in ("tls_min", "tls_max")]
        if None not in versions and TLS_VERSIONS.index(versions[0]) > TLS_VERSIONS.index(versions[1]):
            reader.problem(item, where, f"tls_min {versions[0]} is above tls_max {versions[1]}")
        mechanism = get(reader, entries, "auth_mechanism", where,
                        lambda n, p: reader.choice(n, p, AUTH_MECHANISMS), None)
        plain = {key: value for key, value in entries.items() if key in CHECK_KEYS["smtp"]}
        check = load_smtp(reader, item, where, interval, timeout, has_auth, entries=plain)
        if name is None:
            continue
        if mechanism is not None and not check.use_auth:
            reader.problem(entries["auth_mechanism"][1], f"{where}.auth_mechanism", "needs auth (credentials)")
        profiles.append(replace(check, profile=name, tls_min=versions[0], tls_max=versions[1],
                                auth_mechanism=mechanism))
    return profiles


class _Common(TypedDict):
    """What every kind of check reads the same way (ip_family apart: it is read last, as it always was)."""

    port: int
    tls_mode: str
    interval: float
    timeout: float
    use_auth: bool


def load_check(reader: YamlReader, name: str, node: yaml.Node, path: str, interval: float, timeout: float,
               has_auth: bool, entries: dict[str, tuple[yaml.Node, yaml.Node]] | None = None,
               ) -> SmtpSettings | ImapSettings | Pop3Settings:
    """A target's (or a module's) `smtp`, `imap` or `pop3` block."""
    if name == "smtp":
        return load_smtp(reader, node, path, interval, timeout, has_auth, entries)
    entries = _entries(reader, name, node, path, entries)
    common = _load_common(reader, name, node, path, interval, timeout, has_auth, entries)
    if name == "imap":
        return ImapSettings(**common, mailbox=get(reader, entries, "mailbox", path, reader.string, "INBOX"),
                            quota_warning=get(reader, entries, "quota_warning", path, _ratio(reader),
                                              DEFAULT_QUOTA_WARNING),
                            ip_family=_ip_family(reader, entries, path))
    return Pop3Settings(**common, ip_family=_ip_family(reader, entries, path))


def load_smtp(reader: YamlReader, node: yaml.Node, path: str, interval: float, timeout: float, has_auth: bool,
              entries: dict[str, tuple[yaml.Node, yaml.Node]] | None = None) -> SmtpSettings:
    """An `smtp` block, or the SMTP keys of a client profile (`entries`, already read by the caller)."""
    entries = _entries(reader, "smtp", node, path, entries)
    common = _load_common(reader, "smtp", node, path, interval, timeout, has_auth, entries)
    mail_from = get(reader, entries, "mail_from", path, reader.string, None)
    no_recipients: tuple[str, ...] = ()
    rcpt_to = get(reader, entries, "rcpt_to", path, reader.string_list, no_recipients)
    if (mail_from is None) != (not rcpt_to):
        reader.problem(node, path, "mail_from and rcpt_to go together (the MAIL/RCPT dry run needs both)")
    return SmtpSettings(**common, helo_name=get(reader, entries, "helo_name", path, reader.string, None),
                        mail_from=mail_from, rcpt_to=rcpt_to, ip_family=_ip_family(reader, entries, path))


def _entries(reader: YamlReader, name: str, node: yaml.Node, path: str,
             entries: dict[str, tuple[yaml.Node, yaml.Node]] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if entries is not None:
        return entries  # already read by the caller (a client profile, a module)
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return {}  # `smtp:` alone turns the check on with defaults
    return reader.mapping(node, path, CHECK_KEYS[name])


def _load_common(reader: YamlReader, name: str, node: yaml.Node, path: str, interval: float, timeout: float,
                 has_auth: bool, entries: dict[str, tuple[yaml.Node, yaml.Node]]) -> _Common:
    tls_mode = get(reader, entries, "tls", path, lambda n, p: reader.choice(n, p, TLS_MODES), DEFAULT_TLS_MODE[name])
    port = get(reader, entries, "port", path, lambda n, p: reader.integer(n, p, 1, 65535),
               DEFAULT_PORTS[(name, tls_mode)])
    check_interval = get(reader, entries, "interval", path, reader.duration, interval)
    check_timeout = get(reader, entries, "timeout", path, reader.duration, timeout)
    check_timing(reader, entries, path, check_interval, check_timeout)
    use_auth = get(reader, entries, "auth", path, reader.boolean, has_auth)
    if use_auth and not has_auth:
        reader.problem(entries["auth"][1], f"{path}.auth", "auth is on but the target has no auth block")
    if name in ("imap", "pop3") and not has_auth:
        reader.problem(node, path, f"{name} needs credentials: add an auth block to the target")
    elif name in ("imap", "pop3") and not use_auth and "auth" in entries:
        reader.problem(entries["auth"][1], f"{path}.auth", f"the {name} check always logs in: auth cannot be off")
    return _Common(port=port, tls_mode=tls_mode, interval=check_interval, timeout=check_timeout,
                   use_auth=use_auth and has_auth)


def _ip_family(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], path: str) -> str | None:
    return get(reader, entries, "ip_family", path, lambda n, p: reader.choice(n, p, IP_FAMILY_CHOICES), None)


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


def load_roundtrip(reader: YamlReader, node: yaml.Node, path: str, interval: float,
                   checks: dict[str, CheckSettings], auth_user: str | None,
                   has_auth: bool = False) -> list[RoundTripSettings]:
    """One RoundTripSettings per read-back protocol; submission and read-back reuse the target's own blocks."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}  # `roundtrip:` alone: every default
    else:
        entries = reader.mapping(node, path, _ROUNDTRIP_KEYS)
    default_via = tuple(name for name in READBACK_NAMES if name in checks) or ("imap",)
    via = get(reader, entries, "via", path, reader.string_list, default_via)
    for name in via:
        if name not in READBACK_NAMES:
            reader.problem(entries["via"][1], f"{path}.via", f"{name!r} cannot read mail back: use imap or pop3")
        elif name not in checks:
            reader.problem(node, path, f"via {name} needs the target's {name} block (its port, tls and credentials)")
    if "smtp" not in checks and "submit_via" not in entries:
        reader.problem(node, path, "a round trip submits over SMTP: the target needs an smtp block (or submit_via)")
    if len(set(via)) != len(via):
        reader.problem(entries["via"][1], f"{path}.via", "lists a protocol twice")
    check_interval = get(reader, entries, "interval", path, reader.duration, interval)
    # The default deadline shrinks to fit a shorter interval; one set explicitly must fit by itself.
    check_timeout = get(reader, entries, "timeout", path, reader.duration,
                        min(DEFAULT_ROUNDTRIP_TIMEOUT, check_interval))
    check_timing(reader, entries, path, check_interval, check_timeout)
    recipient = get(reader, entries, "recipient", path, reader.string, auth_user)
    # An auth block that failed (an unreadable password file) has its own problem: one cause, one error.
    if recipient is None and not has_auth:
        reader.problem(node, path, "recipient is required when the target has no auth block")
    submit_via = get(reader, entries, "submit_via", path, reader.string, None)
    # Submitted through another target, the probe comes from that target's user (settled in link_submitters).
    sender = get(reader, entries, "sender", path, reader.string, None if submit_via else recipient)
    default_junk: tuple[str, ...] = DEFAULT_JUNK_FOLDERS
    junk = get(reader, entries, "junk_folders", path, reader.string_list, default_junk)
    mailbox = get(reader, entries, "mailbox", path, reader.string, "INBOX")
    ip_family = _ip_family(reader, entries, path)
    result = []
    for name in via:
        readback = checks.get(name)
        if name not in READBACK_NAMES or readback is None or recipient is None:
            continue
        result.append(RoundTripSettings(
            port=readback.port, tls_mode=readback.tls_mode, interval=check_interval, timeout=check_timeout,
            use_auth=True, via=name, recipient=recipient, sender=sender, junk_folders=junk, mailbox=mailbox,
            ip_family=ip_family, submit_via=submit_via))
    return result
