"""The `targets` list: each target's host (or `{mx: DOMAIN}`), tls, auth and checks, and the round trips that
submit through another target (`submit_via`), linked once every target is read."""

from __future__ import annotations

from dataclasses import replace

import yaml

from monitor.config.auth import load_auth
from monitor.config.checks import load_check, load_profiles, load_roundtrip
from monitor.config.kinds import CheckSettings, RoundTripSettings, SmtpSettings
from monitor.config.model import CHECK_NAMES, LABEL_NAME, Target, TlsSettings
from monitor.config.reader import YamlReader, check_timing, get
from monitor.config.tls import load_tls
from monitor.families import IP_FAMILY_CHOICES
from monitor.families import expand as expand_families
from monitor.mx import MxSpec
from monitor.net import is_address

__all__ = ["link_submitters", "load_target", "load_targets"]


def load_targets(reader: YamlReader, node: yaml.Node, interval: float, timeout: float,
                 environ: dict[str, str]) -> list[Target]:
    """`targets:` — a non-empty list of targets with unique names; round trips' `submit_via` linked at the end."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.problem(node, "targets", "must be a non-empty list of targets")
        return []
    targets: list[Target] = []
    seen: dict[str, int] = {}
    for index, target_node in enumerate(node.value):
        target = load_target(reader, target_node, f"targets[{index}]", interval, timeout, environ)
        if target is None:
            continue
        if target.name in seen:
            reader.problem(target_node, f"targets[{index}].name",
                           f"duplicate target name {target.name!r} (first at targets[{seen[target.name]}])")
            continue
        seen[target.name] = index
        targets.append(target)
    return link_submitters(reader, targets, {name: node.value[i] for name, i in seen.items()},
                           {name: f"targets[{i}]" for name, i in seen.items()})


def load_target(reader: YamlReader, node: yaml.Node, path: str, interval: float, timeout: float,
                environ: dict[str, str]) -> Target | None:
    entries = reader.mapping(node, path, ("name", "host", "tls", "auth", "interval", "timeout", *CHECK_NAMES,
                                          "smtp_profiles", "ip_family"))
    if not isinstance(node, yaml.MappingNode):
        return None
    for required in ("name", "host"):
        if required not in entries:
            reader.problem(node, path, f"{required} is required")
    name = get(reader, entries, "name", path,
               lambda n, p: reader.string(n, p, LABEL_NAME, "a valid target name (letters, digits, _ . : @ -)"), None)
    mx: MxSpec | None = None
    if "host" in entries and isinstance(entries["host"][1], yaml.MappingNode):
        mx = _load_mx_host(reader, entries["host"][1], f"{path}.host")
        host = mx.domain if mx is not None else None
    else:
        host = get(reader, entries, "host", path, reader.string, None)
    tls = load_tls(reader, entries["tls"][1], f"{path}.tls") if "tls" in entries else TlsSettings()
    auth = load_auth(reader, entries["auth"][1], f"{path}.auth", environ) if "auth" in entries else None
    interval = get(reader, entries, "interval", path, reader.duration, interval)
    timeout = get(reader, entries, "timeout", path, reader.duration, timeout)
    check_timing(reader, entries, path, interval, timeout)
    checks: list[CheckSettings] = []
    for check_name in CHECK_NAMES:
        if check_name in entries and check_name != "roundtrip":
            checks.append(load_check(reader, check_name, entries[check_name][1], f"{path}.{check_name}",
                                     interval, timeout, "auth" in entries))
    if "smtp_profiles" in entries:
        checks.extend(load_profiles(reader, entries["smtp_profiles"][1], f"{path}.smtp_profiles", interval, timeout,
                                    "auth" in entries))
    if "roundtrip" in entries:
        by_name: dict[str, CheckSettings] = {c.name: c for c in checks
                                             if not isinstance(c, SmtpSettings) or c.profile is None}
        checks.extend(load_roundtrip(reader, entries["roundtrip"][1], f"{path}.roundtrip", interval, by_name,
                                     auth.username if auth is not None else None, "auth" in entries))
    if not any(c in entries for c in (*CHECK_NAMES, "smtp_profiles")):
        reader.problem(node, path, f"no checks: add at least one of {', '.join(CHECK_NAMES)}")
    if auth is not None and auth.oauth2 is not None:
        if any(isinstance(c, SmtpSettings) and c.auth_mechanism for c in checks):
            reader.problem(entries["smtp_profiles"][1], f"{path}.smtp_profiles",
                           "auth_mechanism (plain, login) needs a password; with oauth2 set auth.mechanism")
        checks = [replace(c, uses_token=True) if c.use_auth else c for c in checks]
    target_family = get(reader, entries, "ip_family", path, lambda n, p: reader.choice(n, p, IP_FAMILY_CHOICES),
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


def link_submitters(reader: YamlReader, targets: list[Target], nodes: dict[str, yaml.Node],
                    paths: dict[str, str]) -> list[Target]:
    """Round trips with `submit_via`: the named target must exist and submit over SMTP; without `sender`, the probe
    comes from that target's user (a loop from one provider to another)."""
    by_name = {t.name: t for t in targets}
    linked = []
    for target in targets:
        checks = []
        for check in target.checks:
            if isinstance(check, RoundTripSettings) and check.submit_via is not None:
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
    domain = get(reader, entries, "mx", path, reader.string, None)
    if domain is None:
        if "mx" not in entries:
            reader.problem(node, path, "mx is required: the domain whose MX records to check")
        return None
    resolver: tuple[str, int] | None = None
    text = get(reader, entries, "resolver", path, reader.string, None)
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
