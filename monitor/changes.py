"""Change calendars: when planned changes (client update days, certificate renewals, provider maintenance) are open.

Faults cluster around changes. Support looking at a fault should see "a client update window is open" beside it,
so every view (metrics, status page, history, verdict summaries, alerts) can name the windows open at a moment.

A calendar is an iCalendar file (RFC 5545, as Outlook, Google Calendar and change-management tools export it) or
inline entries in the config. Both become one `icalendar.Calendar`, and recurrences (RRULE, RDATE, EXDATE, moved
occurrences) are expanded by `recurring_ical_events`: recurrence maths across time zones and DST is exactly what
we should not write again. Files are re-read when they change; a file that turns bad keeps the last good copy.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events

__all__ = ["ChangeCalendars", "ChangeEntry", "ChangeSource", "IcsError", "Window", "check_rrule", "entries_calendar",
           "parse_ics"]

log = logging.getLogger(__name__)

_UTC = dt.UTC
# How far ahead the next start of a change is looked for: a yearly change still has a next start.
_HORIZON = 400 * 86400.0
# Label values per calendar: a calendar with thousands of one-off events must not become thousands of series.
MAX_CHANGES_PER_CALENDAR = 100


@dataclass(frozen=True)
class ChangeEntry:
    """One inline change: a name, a start (aware), how long it lasts, and an optional RFC 5545 RRULE."""

    name: str
    start: dt.datetime
    duration: dt.timedelta
    rrule: str | None = None


@dataclass(frozen=True)
class ChangeSource:
    """One configured calendar: its `calendar` label and either an .ics file or inline entries."""

    calendar: str
    file: str | None = None
    entries: tuple[ChangeEntry, ...] = ()


@dataclass(frozen=True, order=True)
class Window:
    """One occurrence of a change: open from `start` to `end` (Unix seconds)."""

    start: float
    end: float
    calendar: str
    change: str

    def as_json(self) -> dict[str, object]:
        return {"calendar": self.calendar, "change": self.change, "start": self.start, "end": self.end}


class IcsError(ValueError):
    """An iCalendar file that cannot be used; `problems` are `file:line: what` sentences."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_ics(text: str, source: str) -> icalendar.Calendar:
    """A calendar from iCalendar text, or IcsError naming the file and line of the first problem."""
    problems = _content_line_problems(text, source)
    if problems:
        raise IcsError(problems)
    try:
        calendar = icalendar.Calendar.from_ical(text)
    except (ValueError, KeyError, IndexError) as exc:
        raise IcsError([f"{source}: not a valid iCalendar file: {exc}"]) from None
    if not isinstance(calendar, icalendar.Calendar):
        raise IcsError([f"{source}:1: not a calendar: the file must start with BEGIN:VCALENDAR"])
    problems = _event_problems(calendar, text, source)
    if problems:
        raise IcsError(problems)
    return calendar


def _content_line_problems(text: str, source: str) -> list[str]:
    """RFC 5545 §3.1 content lines, unfolded, each checked; BEGIN/END must nest. The first problem, with its line."""
    stack: list[tuple[str, int]] = []
    for number, line in _unfolded(text):
        if not line.strip():
            continue
        try:
            name, _params, value = icalendar.parser.Contentline(line).parts()  # type: ignore[no-untyped-call]
        except ValueError as exc:
            return [f"{source}:{number}: not an iCalendar content line ({_first_sentence(exc)}): {line[:60]!r}"]
        if name.upper() == "BEGIN":
            stack.append((value.upper(), number))
        elif name.upper() == "END":
            if not stack or stack[-1][0] != value.upper():
                opened = f"{stack[-1][0]} opened on line {stack[-1][1]}" if stack else "nothing is open"
                return [f"{source}:{number}: END:{value} does not close anything ({opened})"]
            stack.pop()
        elif not stack:
            return [f"{source}:{number}: {name} outside BEGIN:VCALENDAR ... END:VCALENDAR"]
    if stack:
        return [f"{source}:{stack[-1][1]}: BEGIN:{stack[-1][0]} is never closed"]
    if not any(line.strip() for _, line in _unfolded(text)):
        return [f"{source}:1: the calendar file is empty"]
    return []


def _unfolded(text: str) -> Iterable[tuple[int, str]]:
    """(line number where a logical line starts, the logical line): RFC 5545 folds long lines with CRLF + space."""
    current: list[str] = []
    start = 1
    for number, raw in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        if raw[:1] in (" ", "\t") and current:
            current.append(raw[1:])
            continue
        if current:
            yield start, "".join(current)
        current, start = [raw], number
    if current:
        yield start, "".join(current)


def _event_problems(calendar: icalendar.Calendar, text: str, source: str) -> list[str]:
    """Each VEVENT needs a start, and its recurrence must expand: errors name the line where the event begins."""
    begins = [number for number, line in _unfolded(text) if line.strip().upper() == "BEGIN:VEVENT"]
    problems = []
    for index, event in enumerate(calendar.walk("VEVENT")):
        where = f"{source}:{begins[index]}" if index < len(begins) else source
        if event.get("DTSTART") is None:
            problems.append(f"{where}: the event has no DTSTART")
            continue
        errors = getattr(event, "errors", None)
        if errors:
            line = _property_line(text, begins[index] if index < len(begins) else 1, str(errors[0][0]))
            problems.append(f"{source}:{line}: {errors[0][0]}: {errors[0][1]}")
            continue
        single = icalendar.Calendar()
        single.add_component(event)
        try:
            recurring_ical_events.of(single).between(dt.datetime(1970, 1, 2, tzinfo=_UTC),
                                                     dt.datetime(1970, 1, 3, tzinfo=_UTC))
        except Exception as exc:  # the library raises many kinds for a bad RRULE or date
            problems.append(f"{where}: the event's dates or recurrence cannot be expanded: {_first_sentence(exc)}")
    return problems


def _property_line(text: str, begin: int, name: str) -> int:
    """The line of property `name` in the component that begins on line `begin` (`begin` if not found)."""
    for number, line in _unfolded(text):
        if number > begin and line.upper().startswith((f"{name.upper()}:", f"{name.upper()};")):
            return number
        if number > begin and line.strip().upper().startswith("END:VEVENT"):
            break
    return begin


def _first_sentence(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def entries_calendar(entries: Iterable[ChangeEntry]) -> icalendar.Calendar:
    """Inline entries as an iCalendar calendar, so that they expand exactly as a file would."""
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//mailmon//change calendar//EN")
    calendar.add("version", "2.0")
    for index, entry in enumerate(entries):
        event = icalendar.Event()
        event.add("uid", f"entry-{index}@mailmon")
        event.add("summary", entry.name)
        event.add("dtstart", entry.start)
        event.add("duration", entry.duration)
        if entry.rrule:
            event.add("rrule", icalendar.vRecur.from_ical(entry.rrule))
        calendar.add_component(event)
    return calendar


def check_rrule(text: str) -> None:
    """ValueError unless `text` is an RFC 5545 RRULE value (e.g. FREQ=MONTHLY;BYDAY=2TU)."""
    icalendar.vRecur.from_ical(text)


def change_name(event: icalendar.cal.Component) -> str:
    """What a change is called: its SUMMARY, else its UID."""
    return str(event.get("SUMMARY") or event.get("UID") or "unnamed change").strip()


def _seconds(value: dt.date | dt.datetime, zone: dt.tzinfo) -> float:
    """Unix seconds; an all-day date starts at local midnight and a floating time is local (RFC 5545 §3.3.5)."""
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.timestamp()


class ChangeCalendars:
    """The configured change calendars: which windows are open, when the next ones start."""

    def __init__(self, sources: Iterable[ChangeSource], local_zone: dt.tzinfo | None = None) -> None:
        self.sources = tuple(sources)
        # Floating times and all-day dates are the monitor's local time, as a calendar program shows them.
        self.zone = local_zone or _local_zone()
        self._calendars: dict[str, list[icalendar.Calendar]] = {}
        self._mtimes: dict[str, float] = {}
        self._files: dict[str, icalendar.Calendar] = {}  # the last good copy of each file
        self._inline = [(s.calendar, entries_calendar(s.entries)) for s in self.sources if s.file is None]
        self.refresh()

    def refresh(self) -> list[str]:
        """Re-read every file that changed since the last read. A bad or missing file keeps its last good copy;
        the problems are returned (and logged) so that the caller can say so."""
        problems = []
        by_calendar: dict[str, list[icalendar.Calendar]] = {}
        for source in self.sources:
            if source.file is None:
                continue
            try:
                mtime = os.stat(source.file).st_mtime
                if self._mtimes.get(source.file) != mtime:
                    with open(source.file, encoding="utf-8") as handle:
                        parsed = parse_ics(handle.read(), source.file)
                    self._files[source.file] = parsed
                    self._mtimes[source.file] = mtime
            except (OSError, UnicodeDecodeError, IcsError) as exc:
                problem = str(exc) if isinstance(exc, IcsError) else f"{source.file}: cannot read: {exc}"
                problems.append(problem)
                log.warning("a change calendar could not be re-read; keeping its last good copy",
                            extra={"fields": {"calendar": source.calendar, "error": problem}})
            if source.file in self._files:
                by_calendar.setdefault(source.calendar, []).append(self._files[source.file])
        for calendar, parsed in self._inline:
            by_calendar.setdefault(calendar, []).append(parsed)
        self._calendars = by_calendar
        return problems

    def windows(self, start: float, end: float) -> list[Window]:
        """Every occurrence that overlaps [start, end), sorted by start."""
        low = dt.datetime.fromtimestamp(start, _UTC)
        high = dt.datetime.fromtimestamp(end, _UTC)
        found: set[Window] = set()
        for name, calendars in self._calendars.items():
            for calendar in calendars:
                for event in recurring_ical_events.of(calendar).between(low, high):
                    opens = _seconds(event["DTSTART"].dt, self.zone)
                    closes = _seconds(event["DTEND"].dt, self.zone) if "DTEND" in event else opens
                    if closes == opens and not isinstance(event["DTSTART"].dt, dt.datetime):
                        closes = opens + 86400.0  # an all-day event without an end lasts its day
                    if opens < end and closes > start:
                        found.add(Window(opens, closes, name, change_name(event)))
        return sorted(found)

    def active(self, now: float) -> list[Window]:
        """The windows open at `now`."""
        return [w for w in self.windows(now, now + 1.0) if w.start <= now < w.end]

    def changes(self) -> dict[str, list[str]]:
        """Every change name per calendar (at most MAX_CHANGES_PER_CALENDAR each): the label values to export."""
        names: dict[str, list[str]] = {}
        for calendar, calendars in self._calendars.items():
            seen = names.setdefault(calendar, [])
            for parsed in calendars:
                for event in parsed.walk("VEVENT"):
                    name = change_name(event)
                    if name not in seen and len(seen) < MAX_CHANGES_PER_CALENDAR:
                        seen.append(name)
        return names

    def next_starts(self, now: float) -> dict[tuple[str, str], float]:
        """(calendar, change) → the start of its next occurrence after `now`, within about a year."""
        starts: dict[tuple[str, str], float] = {}
        for window in self.windows(now, now + _HORIZON):
            key = (window.calendar, window.change)
            if window.start > now and key not in starts:
                starts[key] = window.start
        return starts


def _local_zone() -> dt.tzinfo:
    """The monitor's own zone: TZ when set to an IANA name, else the system's."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ValueError, OSError):
            pass
    local = dt.datetime.now().astimezone().tzinfo
    return local if local is not None else _UTC
