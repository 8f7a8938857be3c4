"""The `selfcheck` block: the vantage's own health check, on by default."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import yaml

from monitor.config.model import Config, SelfcheckSettings, Target
from monitor.config.reader import YamlReader, check_timing, get
from monitor.net import is_address, parse_listen

__all__ = ["load_selfcheck", "target_names", "with_targets"]


_SELFCHECK_INTERVAL = 30.0
_SELFCHECK_TIMEOUT = 5.0


def load_selfcheck(reader: YamlReader, node: yaml.Node | None, interval: float,
                   targets: list[Target]) -> SelfcheckSettings:
    """The vantage's own health check; on by default, resolving the target host names the probes need."""
    entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    if node is not None and not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        entries = reader.mapping(node, "selfcheck", ("interval", "timeout", "resolve", "reference"))
    # Never slower than the checks it vouches for: a broken vantage must show before its failures mislead.
    check_interval = get(reader, entries, "interval", "selfcheck", reader.duration,
                         min(interval, _SELFCHECK_INTERVAL))
    check_timeout = get(reader, entries, "timeout", "selfcheck", reader.duration,
                        min(_SELFCHECK_TIMEOUT, check_interval))
    check_timing(reader, entries, "selfcheck", check_interval, check_timeout)
    resolve = get(reader, entries, "resolve", "selfcheck", reader.string_list, target_names(targets))
    reference: tuple[str, int] | None = None
    if "reference" in entries:
        text = reader.string(entries["reference"][1], "selfcheck.reference")
        if text is not None:
            try:
                reference = parse_listen(text)
            except ValueError:
                reader.problem(entries["reference"][1], "selfcheck.reference",
                               f"{text!r} is not HOST:PORT (a TCP endpoint this vantage should always reach)")
    return SelfcheckSettings(interval=check_interval, timeout=check_timeout, resolve=resolve, reference=reference,
                             resolve_given="resolve" in entries)


def target_names(targets: Iterable[Target]) -> tuple[str, ...]:
    """The host names (not addresses) the probes of `targets` resolve, each once: the selfcheck's default list."""
    return tuple(dict.fromkeys(t.host for t in targets if not is_address(t.host)))


def with_targets(config: Config, added: Iterable[Target]) -> Config:
    """`config` with `added` targets (from `targets_from`), its selfcheck resolving their names too unless the
    config lists the names to resolve. Otherwise a monitor whose targets all come from files would check no name:
    its resolver could fail and every target's DNS failure would read as the servers', not as `vantage_fault`."""
    targets = config.targets + tuple(added)
    selfcheck = config.selfcheck
    if not selfcheck.resolve_given:
        selfcheck = dataclasses.replace(selfcheck, resolve=target_names(targets))
    return dataclasses.replace(config, targets=targets, selfcheck=selfcheck)
