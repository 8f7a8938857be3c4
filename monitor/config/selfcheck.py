"""The `selfcheck` block: the vantage's own health check, on by default."""

from __future__ import annotations

import yaml

from monitor.config.model import SelfcheckSettings, Target
from monitor.config.reader import YamlReader, check_timing, get
from monitor.net import is_address, parse_listen

__all__ = ["load_selfcheck"]


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
    names = tuple(dict.fromkeys(t.host for t in targets if not is_address(t.host)))
    resolve = get(reader, entries, "resolve", "selfcheck", reader.string_list, names)
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
