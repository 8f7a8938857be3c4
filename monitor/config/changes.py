"""The `changes` block: change calendars (an iCalendar file, or entries written inline) shown beside faults."""

from __future__ import annotations

import datetime as dt
import os
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from monitor.changes import ChangeEntry, ChangeSource, IcsError, check_rrule, parse_ics
from monitor.config.reader import YamlReader, get

__all__ = ["load_changes"]


_CALENDAR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@ -]{0,63}$")


def load_changes(reader: YamlReader, node: yaml.Node, source: str) -> tuple[ChangeSource, ...]:
    """`changes:` — a list of calendars, each `{calendar: NAME, file: F.ics}` or `{calendar: NAME, entries: [...]}`."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.problem(node, "changes", "must be a non-empty list of calendars ({calendar: NAME, file: F.ics} or "
                                        "{calendar: NAME, entries: [...]})")
        return ()
    sources = []
    for index, item in enumerate(node.value):
        path = f"changes[{index}]"
        entries = reader.mapping(item, path, ("calendar", "file", "entries"))
        if not isinstance(item, yaml.MappingNode):
            continue
        name = get(reader, entries, "calendar", path,
                   lambda n, p: reader.string(n, p, _CALENDAR_NAME, "a calendar name (letters, digits, _ . : @ - "
                                                                     "and spaces, at most 64)"), None)
        if "calendar" not in entries:
            reader.problem(item, path, "calendar is required (it names the calendar on every view)")
        if ("file" in entries) == ("entries" in entries):
            reader.problem(item, path, "give exactly one of file (an iCalendar .ics file) or entries")
            continue
        if "file" in entries:
            changes_file = _load_ics_file(reader, entries["file"][1], f"{path}.file", source)
            if name is not None and changes_file is not None:
                sources.append(ChangeSource(calendar=name, file=changes_file))
        else:
            inline = _load_change_entries(reader, entries["entries"][1], f"{path}.entries")
            if name is not None and inline is not None:
                sources.append(ChangeSource(calendar=name, entries=inline))
    return tuple(sources)


def _load_ics_file(reader: YamlReader, node: yaml.Node, path: str, source: str) -> str | None:
    """The .ics file's absolute path (relative ones are relative to the config file), parsed once to prove it."""
    name = reader.string(node, path)
    if name is None:
        return None
    if not os.path.isabs(name) and source:
        name = os.path.join(os.path.dirname(os.path.abspath(source)), name)
    try:
        with open(name, encoding="utf-8") as handle:
            parse_ics(handle.read(), name)
    except OSError as exc:
        reader.problem(node, path, f"cannot read calendar file {name!r}: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        reader.problem(node, path, f"calendar file {name!r} is not UTF-8 text (RFC 5545 files are UTF-8)")
        return None
    except IcsError as exc:
        # The calendar's own file and line say more than the config's: report those, naming the config entry.
        for problem in exc.problems:
            reader.problem(node, path, f"bad calendar: {problem}")
        return None
    return name


_CHANGE_START = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)$")


def _load_change_entries(reader: YamlReader, node: yaml.Node, path: str) -> tuple[ChangeEntry, ...] | None:
    """Inline changes: `{name, start: "2026-01-13 10:00", timezone: Asia/Tokyo, duration: 3d, rrule: ...}`."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.problem(node, path, "must be a non-empty list of {name, start, duration[, timezone][, rrule]}")
        return None
    found: list[ChangeEntry] = []
    ok = True
    for index, item in enumerate(node.value):
        sub = f"{path}[{index}]"
        entries = reader.mapping(item, sub, ("name", "start", "timezone", "duration", "rrule"))
        if not isinstance(item, yaml.MappingNode):
            ok = False
            continue
        for key in ("name", "start", "duration"):
            if key not in entries:
                reader.problem(item, sub, f"{key} is required")
                ok = False
        name = get(reader, entries, "name", sub, reader.string, None)
        duration = get(reader, entries, "duration", sub, reader.duration, None)
        zone: dt.tzinfo = dt.UTC
        if "timezone" in entries:
            zone_name = reader.string(entries["timezone"][1], f"{sub}.timezone")
            try:
                zone = ZoneInfo(zone_name) if zone_name is not None else zone
            except (ZoneInfoNotFoundError, ValueError):
                reader.problem(entries["timezone"][1], f"{sub}.timezone",
                               f"{zone_name!r} is not a known IANA time zone (e.g. Asia/Tokyo, Europe/Berlin, UTC)")
                ok = False
        start = None
        if "start" in entries:
            text = reader.scalar(entries["start"][1], f"{sub}.start")
            match = _CHANGE_START.match(text.strip()) if text is not None else None
            if match is None:
                reader.problem(entries["start"][1], f"{sub}.start",
                               f"{text!r} is not a local date and time: write e.g. \"2026-01-13 10:00\" (the zone "
                               "goes in timezone)")
                ok = False
            else:
                try:
                    start = dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}").replace(tzinfo=zone)
                except ValueError as exc:
                    reader.problem(entries["start"][1], f"{sub}.start", f"not a real date and time: {exc}")
                    ok = False
        rrule = None
        if "rrule" in entries:
            rrule = reader.string(entries["rrule"][1], f"{sub}.rrule")
            try:
                check_rrule(rrule or "")
            except ValueError as exc:
                reader.problem(entries["rrule"][1], f"{sub}.rrule",
                               f"not an RFC 5545 RRULE (e.g. FREQ=MONTHLY;BYDAY=2TU): {exc}")
                ok = False
        if ok and name is not None and start is not None and duration is not None:
            found.append(ChangeEntry(name=name, start=start, duration=dt.timedelta(seconds=duration), rrule=rrule))
    return tuple(found) if ok else None
