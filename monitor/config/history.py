"""The `history` block: where the probe history journal lives and how much of it to keep."""

from __future__ import annotations

import os
import re

import yaml

from monitor.config.model import HistorySettings
from monitor.config.reader import YamlReader, get
from monitor.history import MIN_MAX_BYTES

__all__ = ["load_history", "state_directory"]


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


def load_history(reader: YamlReader, node: yaml.Node, source: str,
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
    retention = get(reader, entries, "retention", "history", reader.duration, HistorySettings.retention)
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
