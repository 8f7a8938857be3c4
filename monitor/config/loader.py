"""`load` and `load_text`: a whole config file into a Config, every problem reported at once (file:line: what),
sorted by line. Each section has its own loader module beside this one."""

from __future__ import annotations

import os

import yaml

from monitor.config.auth import load_probe_key
from monitor.config.changes import load_changes
from monitor.config.history import load_history
from monitor.config.model import (
    DEFAULT_CONCURRENCY,
    DEFAULT_INTERVAL,
    DEFAULT_LISTEN,
    DEFAULT_TIMEOUT,
    FAILURE_SERIES,
    LABEL_NAME,
    Config,
    ConfigError,
    Target,
)
from monitor.config.modules import load_modules, load_targets_from
from monitor.config.reader import YamlReader, check_timing, compose, get, read_text
from monitor.config.selfcheck import load_selfcheck
from monitor.config.targets import load_targets
from monitor.net import parse_listen

__all__ = ["load", "load_text"]


def load(path: str, environ: dict[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError (also for an unreadable file)."""
    return load_text(read_text(path, "config file"), path, environ)

def load_text(text: str, source: str, environ: dict[str, str] | None = None) -> Config:
    """Build a Config from YAML text; raises ConfigError listing every problem."""
    environ = dict(os.environ) if environ is None else environ
    reader = YamlReader(source)
    root = compose(text, source)
    if root is None:
        raise ConfigError([f"{source}: the file is empty"])
    entries = reader.mapping(root, "", ("vantage", "listen", "defaults", "concurrency", "probe_key", "selfcheck",
                                        "history", "metrics", "targets", "changes", "modules", "targets_from"))
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(reader.sorted_problems())

    vantage = get(reader, entries, "vantage", "",
                  lambda n, p: reader.string(n, p, LABEL_NAME, "a valid vantage name (letters, digits, _ . : @ -)"), "")
    if "vantage" not in entries:
        reader.problem(root, "vantage", "is required (it labels every series of this monitor)")
    listen = get(reader, entries, "listen", "", reader.string, DEFAULT_LISTEN)
    try:
        parse_listen(listen)
    except ValueError as exc:
        reader.problem(entries["listen"][1], "listen", str(exc))
    interval, timeout = DEFAULT_INTERVAL, DEFAULT_TIMEOUT
    if "defaults" in entries:
        defaults = reader.mapping(entries["defaults"][1], "defaults", ("interval", "timeout"))
        interval = get(reader, defaults, "interval", "defaults", reader.duration, interval)
        timeout = get(reader, defaults, "timeout", "defaults", reader.duration, timeout)
        check_timing(reader, defaults, "defaults", interval, timeout)
    concurrency = get(reader, entries, "concurrency", "", lambda n, p: reader.integer(n, p, 1, 100000),
                      DEFAULT_CONCURRENCY)

    failure_series = "on_failure"
    if "metrics" in entries:
        metrics = reader.mapping(entries["metrics"][1], "metrics", ("failure_series",))
        failure_series = get(reader, metrics, "failure_series", "metrics",
                             lambda n, p: reader.choice(n, p, FAILURE_SERIES), failure_series)
    probe_key = load_probe_key(reader, entries["probe_key"][1], environ) if "probe_key" in entries else None
    targets: list[Target] = []
    modules = load_modules(reader, entries["modules"][1], interval, timeout, environ) if "modules" in entries else {}
    targets_from = load_targets_from(reader, entries["targets_from"][1], source) if "targets_from" in entries else ()
    if "targets" not in entries:
        if not modules and not targets_from:
            # (Or none, with modules for GET /probe or targets_from: docs/scaling.md.)
            reader.problem(root, "targets", "is required: list at least one target")
    else:
        targets = load_targets(reader, entries["targets"][1], interval, timeout, environ)
    if probe_key is None and "probe_key" not in entries and any(c.via for t in targets for c in t.checks):
        reader.problem(root, "probe_key", "is required for round trips: {file: PATH} or {env: NAME} holding a "
                                          "secret of at least 16 characters that signs probe messages")
    if reader.problems:
        raise ConfigError(reader.sorted_problems())
    selfcheck = load_selfcheck(reader, entries["selfcheck"][1] if "selfcheck" in entries else None, interval,
                               targets)
    history = load_history(reader, entries["history"][1], source, environ) if "history" in entries else None
    changes = load_changes(reader, entries["changes"][1], source) if "changes" in entries else ()
    if reader.problems:
        raise ConfigError(reader.sorted_problems())
    return Config(vantage=vantage, listen=listen, interval=interval, timeout=timeout, concurrency=concurrency,
                  targets=tuple(targets), source=source, probe_key=probe_key, selfcheck=selfcheck, history=history,
                  failure_series=failure_series, changes=changes, modules=modules, targets_from=targets_from)
