"""`targets_from`: scheduled targets from Prometheus file_sd files, for inventories kept outside mailmon's config.

Each file is a list of groups in Prometheus's file_sd format (JSON, or YAML for .yml/.yaml):

    [{"targets": ["mx1.example.net:25", "mx2.example.net"], "labels": {"module": "smtp_relay"}}]

Labels mailmon reads (others are ignored, as Prometheus's own `__meta_*` would be): `module` (required: the
`modules:` entry whose check runs against each host), `name` (the target name, default the target string; only
for a group of one target) and `interval` (default `defaults.interval`). A module's `hosts` allow-list applies as
it does to GET /probe. A file that cannot be read or has a bad entry keeps its last good targets (like a failed
reload keeps the running configuration); the problems are returned for the log.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from monitor.config import Config, Target
from monitor.durations import parse_duration
from monitor.ondemand import split_host_port

__all__ = ["Discovery"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")
# Files bigger than this are refused (a file_sd file of 100,000 targets is ~5 MB).
_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class _File:
    stamp: tuple[float, int]
    targets: list[Target] = field(default_factory=list)


class Discovery:
    """Follows the files matching `targets_from` globs; `refresh()` re-reads what changed."""

    def __init__(self) -> None:
        self._files: dict[str, _File] = {}

    def refresh(self, config: Config, force: bool = False) -> tuple[list[Target], list[str]]:
        """(every discovered target, problems); files whose size and mtime did not change are not re-read unless
        `force` (a reload: the modules they name may have changed)."""
        problems: list[str] = []
        paths = sorted({path for pattern in config.targets_from for path in glob.glob(pattern)})
        changed = force or set(self._files) != set(paths)
        for gone in set(self._files) - set(paths):
            del self._files[gone]
        for path in paths:
            try:
                info = os.stat(path)
            except OSError as exc:
                problems.append(f"{path}: cannot read: {exc.strerror}")
                continue
            stamp = (info.st_mtime, info.st_size)
            known = self._files.get(path)
            if known is not None and known.stamp == stamp and not force:
                continue
            changed = True
            try:
                targets = _read(path, config)
            except ValueError as exc:
                problems.append(str(exc))
                # Keep the last good copy (none yet: no targets); the bad one is reported once, not at every look.
                self._files[path] = _File(stamp, known.targets if known is not None else [])
                continue
            self._files[path] = _File(stamp, targets)
        found: dict[str, Target] = {t.name: t for t in config.targets}
        discovered: list[Target] = []
        for path in paths:
            entry = self._files.get(path)
            for target in entry.targets if entry is not None else ():
                if target.name in found:
                    if changed:  # said once per change, not at every look at unchanged files
                        problems.append(f"{path}: target {target.name!r} is already defined (in the config or "
                                        "another file): the first definition stays")
                    continue
                found[target.name] = target
                discovered.append(target)
        return discovered, problems


def _read(path: str, config: Config) -> list[Target]:
    """The targets of one file_sd file; ValueError naming the file and entry on any problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(_MAX_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(text) > _MAX_BYTES:
        raise ValueError(f"{path}: larger than {_MAX_BYTES // 1024 // 1024} MiB")
    try:
        groups: Any = (yaml.safe_load(text) if path.endswith((".yml", ".yaml")) else json.loads(text)) or []
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{path}: not a file_sd file: {str(exc).splitlines()[0]}") from None
    if not isinstance(groups, list):
        raise ValueError(f"{path}: must be a list of {{targets: [...], labels: {{...}}}} groups")
    targets: list[Target] = []
    problems: list[str] = []
    for index, group in enumerate(groups):
        where = f"{path}: group {index + 1}"
        if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
            problems.append(f"{where}: needs targets: [HOST[:PORT], ...]")
            continue
        labels = group.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            problems.append(f"{where}: labels must map names to strings")
            continue
        module = config.modules.get(str(labels.get("module", "")))
        if module is None:
            problems.append(f"{where}: label module must name one of the config's modules "
                            f"({', '.join(config.modules) or 'none configured'})")
            continue
        interval = config.interval
        if "interval" in labels:
            try:
                interval = parse_duration(labels["interval"])
            except ValueError as exc:
                problems.append(f"{where}: interval: {exc}")
                continue
        if "name" in labels and len(group["targets"]) != 1:
            problems.append(f"{where}: label name needs a group of exactly one target")
            continue
        for text_target in group["targets"]:
            try:
                host, port = split_host_port(str(text_target))
            except ValueError as exc:
                problems.append(f"{where}: {text_target!r}: {exc}")
                continue
            name = labels.get("name", str(text_target))
            if not _NAME.match(name):
                problems.append(f"{where}: {name!r} is not a valid target name (letters, digits, _ . : @ -)")
                continue
            if not module.allows(host):
                problems.append(f"{where}: host {host!r} is not in module {module.name!r}'s hosts allow-list")
                continue
            target = module.target(name, host, port)
            check = replace(target.checks[0], interval=interval, timeout=min(target.checks[0].timeout, interval))
            targets.append(replace(target, checks=(check,)))
    if problems:
        raise ValueError("; ".join(problems))
    return targets
