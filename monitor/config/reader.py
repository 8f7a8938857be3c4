"""The YAML node walker shared by every config file mailmon reads (the main config, the web config): it converts
values and records each problem as "file:line: path: what is wrong", so that all of them are reported at once.

It walks PyYAML's node tree rather than plain dicts so that each error can name the line it comes from, duplicate
keys are caught (plain `yaml.safe_load` silently keeps the last one), and unknown keys are errors rather than
silently ignored typos.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import yaml

from monitor.config.model import ConfigError
from monitor.durations import format_duration, parse_duration

__all__ = ["YamlReader", "check_timing", "compose", "get", "read_text"]

T = TypeVar("T")


class YamlReader:
    """Walks YAML nodes, converting values and collecting every problem with its line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self._lines: list[int] = []
        self.ca_files: dict[str, str | None] = {}  # CA file -> why it cannot be used (None: it can)

    def problem(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        where = f" {path}:" if path else ""
        self.problems.append(f"{self.source}{line}:{where} {message}")
        self._lines.append(node.start_mark.line if node is not None else -1)

    def sorted_problems(self) -> list[str]:
        """The problems in file order (the loader finds them in its own order)."""
        order = sorted(range(len(self.problems)), key=lambda i: self._lines[i])
        return [self.problems[i] for i in order]

    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The mapping's entries by key; unknown and duplicate keys are reported."""
        if not isinstance(node, yaml.MappingNode):
            what = "must be a mapping" if path else "the top level must be a mapping"
            self.problem(node, path, f"{what} with keys {', '.join(allowed)}")
            return {}
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                self.problem(key_node, path, "keys must be plain strings")
            elif key in entries:
                self.problem(key_node, sub, "duplicate key")
            elif key not in allowed:
                self.problem(key_node, sub, f"unknown key (allowed here: {', '.join(allowed)})")
            else:
                entries[key] = (key_node, value_node)
        return entries

    def scalar(self, node: yaml.Node, path: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.problem(node, path, "must be a single value, not a list, mapping or empty")
            return None
        return str(node.value)

    def string(self, node: yaml.Node, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        if value == "":
            self.problem(node, path, "must not be empty")
            return None
        if pattern is not None and not pattern.match(value):
            self.problem(node, path, f"{value!r} is not {what}")
            return None
        return value

    def integer(self, node: yaml.Node, path: str, low: int, high: int) -> int | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        if node.tag != "tag:yaml.org,2002:int" or not re.fullmatch(r"[0-9]+", value) or not low <= int(value) <= high:
            quoted = node.tag == "tag:yaml.org,2002:str" and re.fullmatch(r"[0-9]+", value) is not None
            hint = " (a quoted string: remove the quotes)" if quoted else ""
            self.problem(node, path, f"must be an integer between {low} and {high}, got {value!r}{hint}")
            return None
        return int(value)

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        if node.tag != "tag:yaml.org,2002:bool":
            self.problem(node, path, f"must be true or false, got {value!r}")
            return None
        return value.lower() in ("true", "yes", "on")

    def duration(self, node: yaml.Node, path: str) -> float | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return None
        if seconds <= 0:
            self.problem(node, path, "must be longer than zero")
            return None
        return seconds

    def choice(self, node: yaml.Node, path: str, choices: tuple[str, ...]) -> str | None:
        value = self.scalar(node, path)
        if value is None:
            return None
        if value not in choices:
            self.problem(node, path, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def string_list(self, node: yaml.Node, path: str) -> tuple[str, ...] | None:
        if isinstance(node, yaml.ScalarNode):
            single = self.string(node, path)
            return (single,) if single is not None else None
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, path, "must be an address or a non-empty list of addresses")
            return None
        items = [self.string(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if any(item is None for item in items):
            return None
        return tuple(item for item in items if item is not None)


def get(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], key: str, path: str,
        convert: Callable[[yaml.Node, str], T | None], default: T) -> T:
    """The converted value of `key`, or `default` when absent or invalid (the problem is already recorded)."""
    if key not in entries:
        return default
    value = convert(entries[key][1], f"{path}.{key}" if path else key)
    return default if value is None else value


def check_timing(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], path: str, interval: float,
                 timeout: float) -> None:
    """Report timeout > interval once, at the level that sets one of them (levels below inherit both)."""
    if timeout <= interval or not ("interval" in entries or "timeout" in entries):
        return
    key = "timeout" if "timeout" in entries else "interval"
    reader.problem(entries[key][1], f"{path}.{key}" if path else key,
                   f"timeout ({format_duration(timeout)}) must not be longer than "
                   f"interval ({format_duration(interval)})")


def compose(text: str, source: str) -> yaml.Node | None:
    """The YAML node tree of `text` (None for an empty document); ConfigError naming `source`:line otherwise."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:
        at = text.count("\n", 0, exc.position) + 1
        raise ConfigError([f"{source}:{at}: not valid YAML: character #x{exc.character:04x}: {exc.reason}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: not valid YAML: nested too deeply"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        message = exc.problem or exc.context or "unreadable"
        if exc.problem and exc.context and exc.context_mark is not None:
            message += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise ConfigError([f"{source}{line}: not valid YAML: {message}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None


def read_text(path: str, what: str) -> str:
    """The text of the `what` (e.g. "config file") at `path`; ConfigError if it cannot be read or is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the {what}: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the {what} is not UTF-8 text"]) from None
