"""Typed, immutable configuration, loaded from YAML with every problem reported at once (file, line, what).

A package by job: `model` (the frozen dataclasses), `kinds` (the settings of each check kind: `SmtpSettings`,
`ImapSettings`, `Pop3Settings`, `RoundTripSettings`; `CheckSettings` is their union), `reader` (the YAML node
walker, shared with the web config), `loader` (`load`, `load_text`), and one loader module per section
(`targets`, `checks`, `auth`, `tls`, `history`, `selfcheck`, `changes`, `modules`). Everything is imported from
here, as before the split; the network helpers (`is_address`, `parse_listen`, `default_helo_name`) live in
monitor/net.py and are re-exported for the callers that still import them from here.
"""

from __future__ import annotations

from monitor.config.auth import AUTH_KEYS, OAUTH2_MECHANISMS
from monitor.config.auth import read_secret as _read_secret
from monitor.config.checks import AUTH_MECHANISMS, TLS_VERSIONS
from monitor.config.history import state_directory
from monitor.config.kinds import (
    DEFAULT_QUOTA_WARNING,
    KINDS,
    PROTOCOL_KINDS,
    CheckBase,
    CheckSettings,
    ImapSettings,
    Pop3Settings,
    RoundTripSettings,
    SelfcheckRun,
    SmtpSettings,
)
from monitor.config.loader import load, load_text
from monitor.config.model import (
    CHECK_NAMES,
    DEFAULT_CONCURRENCY,
    DEFAULT_INTERVAL,
    DEFAULT_JUNK_FOLDERS,
    DEFAULT_LISTEN,
    DEFAULT_PORTS,
    DEFAULT_ROUNDTRIP_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_TLS_MODE,
    FAILURE_SERIES,
    READBACK_NAMES,
    TLS_MODES,
    Auth,
    Config,
    ConfigError,
    HistorySettings,
    Module,
    Secret,
    SelfcheckSettings,
    Target,
    TlsSettings,
)
from monitor.config.modules import MODULE_PROTOCOLS
from monitor.config.reader import YamlReader
from monitor.config.tls import ca_file_problem as _ca_file_problem
from monitor.net import default_helo_name, is_address, parse_listen

__all__ = [
    "AUTH_KEYS",
    "AUTH_MECHANISMS",
    "CHECK_NAMES",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_INTERVAL",
    "DEFAULT_JUNK_FOLDERS",
    "DEFAULT_LISTEN",
    "DEFAULT_PORTS",
    "DEFAULT_QUOTA_WARNING",
    "DEFAULT_ROUNDTRIP_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TLS_MODE",
    "FAILURE_SERIES",
    "KINDS",
    "MODULE_PROTOCOLS",
    "OAUTH2_MECHANISMS",
    "PROTOCOL_KINDS",
    "READBACK_NAMES",
    "TLS_MODES",
    "TLS_VERSIONS",
    "Auth",
    "CheckBase",
    "CheckSettings",
    "Config",
    "ConfigError",
    "HistorySettings",
    "ImapSettings",
    "Module",
    "Pop3Settings",
    "RoundTripSettings",
    "Secret",
    "SelfcheckRun",
    "SelfcheckSettings",
    "SmtpSettings",
    "Target",
    "TlsSettings",
    "YamlReader",
    "_ca_file_problem",
    "_read_secret",
    "default_helo_name",
    "is_address",
    "load",
    "load_text",
    "parse_listen",
    "state_directory",
]
