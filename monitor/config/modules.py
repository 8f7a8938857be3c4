"""`modules` (checks described once, run against hosts from a URL or a file_sd file) and `targets_from`."""

from __future__ import annotations

import os
import re
from dataclasses import replace

import yaml

from monitor.config.auth import load_auth
from monitor.config.checks import CHECK_KEYS, load_check
from monitor.config.model import Module, TlsSettings
from monitor.config.reader import YamlReader, get
from monitor.config.tls import load_tls_entries

__all__ = ["MODULE_PROTOCOLS", "load_modules", "load_targets_from"]


_MODULE_KEYS = ("protocol", "port", "tls", "ca_file", "server_name", "auth", "timeout", "hosts", "helo_name",
                "mail_from", "rcpt_to", "mailbox", "quota_warning")
MODULE_PROTOCOLS = ("smtp", "imap", "pop3")
_MODULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def load_modules(reader: YamlReader, node: yaml.Node, interval: float, timeout: float,
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
        auth = load_auth(reader, entries["auth"][1], f"{path}.auth", environ) if "auth" in entries else None
        tls = TlsSettings()
        if "ca_file" in entries or "server_name" in entries:
            tls_entries = {k: v for k, v in entries.items() if k in ("ca_file", "server_name")}
            tls = load_tls_entries(reader, tls_entries, path)
        hosts: list[re.Pattern[str]] = []
        if "hosts" in entries:
            no_hosts: tuple[str, ...] = ()
            for index, text in enumerate(get(reader, entries, "hosts", path, reader.string_list, no_hosts)):
                try:
                    hosts.append(re.compile(text))
                except re.error as exc:
                    reader.problem(entries["hosts"][1], f"{path}.hosts[{index}]", f"{text!r} is not a regex: {exc}")
        if "auth" in entries and "hosts" not in entries:
            reader.problem(item, path, "a module that logs in needs hosts: [regex, ...], the hosts its credentials "
                                       "may be sent to (GET /probe takes the host from the URL)")
        module_timeout = get(reader, entries, "timeout", path, reader.duration, timeout)
        # The check's own keys, read as a target's check block would be (interval: the module's timeout at most).
        plain = {k: v for k, v in entries.items() if k in CHECK_KEYS[protocol] and k not in ("auth", "timeout")}
        check = load_check(reader, protocol, item, path, max(interval, module_timeout), module_timeout,
                           "auth" in entries, entries=plain)
        if check is None:
            continue
        if auth is not None and auth.oauth2 is not None:
            check = replace(check, uses_token=True)
        modules[name] = Module(name=name, check=check, tls=tls, auth=auth, hosts=tuple(hosts))
    return modules


def load_targets_from(reader: YamlReader, node: yaml.Node, source: str) -> tuple[str, ...]:
    """`targets_from: [glob, ...]`: Prometheus file_sd files (JSON or YAML), relative to this config file."""
    patterns = reader.string_list(node, "targets_from")
    if patterns is None:
        return ()
    base = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    return tuple(p if os.path.isabs(p) else os.path.join(base, p) for p in patterns)
