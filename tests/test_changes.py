"""Change calendars: recurrence expansion across zones and DST, realistic .ics files, file:line errors, re-reads."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor.changes import ChangeCalendars, ChangeEntry, ChangeSource, IcsError, parse_ics
from monitor.config import ConfigError, load_text

DATA = Path(__file__).parent / "data" / "calendars"
TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp()


def patch_tuesday(local_zone: dt.tzinfo = NEW_YORK) -> ChangeCalendars:
    """Second Tuesday of every month, 10:00 Asia/Tokyo, for 3 days; the monitor itself runs in New York."""
    entry = ChangeEntry(name="Patch Tuesday", start=dt.datetime(2026, 1, 13, 10, 0, tzinfo=TOKYO),
                        duration=dt.timedelta(days=3), rrule="FREQ=MONTHLY;BYDAY=2TU")
    return ChangeCalendars([ChangeSource("client-updates", entries=(entry,))], local_zone=local_zone)


# 2026-03-10 is the second Tuesday of March, two days after New York's switch to daylight time (2026-03-08):
# 10:00 JST is 01:00 UTC whatever New York does.
MARCH_OPENS = _utc(2026, 3, 10, 1, 0)
MARCH_CLOSES = _utc(2026, 3, 13, 1, 0)


@pytest.mark.parametrize(("now", "open_"), [
    (MARCH_OPENS - 1, False),
    (MARCH_OPENS, True),
    (MARCH_OPENS + 86400, True),
    (MARCH_CLOSES - 1, True),
    (MARCH_CLOSES, False),
    (_utc(2026, 3, 20, 12, 0), False),
    (_utc(2026, 4, 14, 1, 0), True),  # second Tuesday of April
    (_utc(2026, 4, 7, 1, 0), False),  # first Tuesday of April
])
def test_window_is_open_exactly_inside_each_occurrence(now: float, open_: bool) -> None:
    """The window metric's source is 1 exactly inside the expanded occurrences, across a DST change elsewhere."""
    active = patch_tuesday().active(now)
    assert [(w.calendar, w.change) for w in active] == ([("client-updates", "Patch Tuesday")] if open_ else [])


def test_next_start_is_the_next_occurrence() -> None:
    """Between occurrences, the next start is the next second Tuesday at 10:00 JST."""
    starts = patch_tuesday().next_starts(_utc(2026, 3, 20, 0, 0))
    assert starts == {("client-updates", "Patch Tuesday"): _utc(2026, 4, 14, 1, 0)}


def test_the_monitors_own_zone_does_not_move_zoned_windows() -> None:
    """The same calendar read by monitors in different zones opens at the same instant."""
    assert patch_tuesday(NEW_YORK).windows(MARCH_OPENS - 3600, MARCH_OPENS + 3600) == \
        patch_tuesday(BERLIN).windows(MARCH_OPENS - 3600, MARCH_OPENS + 3600)


def outlook_calendar(zone: dt.tzinfo = BERLIN) -> ChangeCalendars:
    return ChangeCalendars([ChangeSource("it", file=str(DATA / "outlook-export.ics"))], local_zone=zone)


def test_outlook_export_with_vtimezone_parses() -> None:
    """A realistic Outlook export (Windows zone names in VTIMEZONE, folded lines, X- properties) expands."""
    changes = outlook_calendar().changes()
    assert changes == {"it": ["Patch Tuesday client updates", "Certificate renewal", "Provider maintenance"]}
    january = outlook_calendar().active(_utc(2026, 1, 13, 2, 0))
    assert [w.change for w in january] == ["Patch Tuesday client updates"]
    assert january[0].start == _utc(2026, 1, 13, 1, 0) and january[0].end == _utc(2026, 1, 15, 1, 0)


def test_exdate_removes_one_occurrence() -> None:
    """EXDATE skips February's Patch Tuesday; March's still happens."""
    calendar = outlook_calendar()
    assert calendar.active(_utc(2026, 2, 10, 2, 0)) == []
    assert [w.change for w in calendar.active(_utc(2026, 3, 10, 2, 0))] == ["Patch Tuesday client updates"]


def test_all_day_event_covers_the_monitors_local_day() -> None:
    """An all-day event lasts from local midnight to local midnight of the monitor's zone (RFC 5545 floating)."""
    tokyo = outlook_calendar(TOKYO).windows(_utc(2026, 3, 19), _utc(2026, 3, 22))
    renewal = [w for w in tokyo if w.change == "Certificate renewal"]
    assert [(w.start, w.end) for w in renewal] == [(_utc(2026, 3, 19, 15, 0), _utc(2026, 3, 20, 15, 0))]


def test_event_across_a_dst_change_has_its_real_length() -> None:
    """01:30 CET to 04:30 CEST on the night Europe changes to summer time is two real hours."""
    window = [w for w in outlook_calendar().windows(_utc(2026, 3, 28), _utc(2026, 3, 30))
              if w.change == "Provider maintenance"]
    assert [(w.start, w.end) for w in window] == [(_utc(2026, 3, 29, 0, 30), _utc(2026, 3, 29, 2, 30))]


BROKEN = [
    ("BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VEVENT\nSUMMARY:x\nEND:VEVENT\nEND:VCALENDAR\n",
     "x.ics:3: the event has no DTSTART"),
    ("BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VEVENT\nSUMMARY:x\nDTSTART:20260101T000000Z\nRRULE:FREQ=SOMETIMES\n"
     "END:VEVENT\nEND:VCALENDAR\n", "x.ics:6: RRULE: Expected frequency, got: SOMETIMES"),
    ("BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VEVENT\nDTSTART:2026-01-01\nEND:VEVENT\nEND:VCALENDAR\n",
     "x.ics:4: DTSTART: Expected datetime, date, or time. Got: '2026-01-01'"),
    ("BEGIN:VCALENDAR\nthis is not ical\nEND:VCALENDAR\n", "x.ics:2: not an iCalendar content line"),
    ("BEGIN:VCALENDAR\nBEGIN:VEVENT\nEND:VCALENDAR\n",
     "x.ics:3: END:VCALENDAR does not close anything (VEVENT opened on line 2)"),
    ("BEGIN:VCALENDAR\nVERSION:2.0\n", "x.ics:1: BEGIN:VCALENDAR is never closed"),
    ("", "x.ics:1: the calendar file is empty"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN)
def test_broken_calendar_names_file_and_line(text: str, message: str) -> None:
    """Each kind of broken .ics gives one problem that starts with file:line."""
    with pytest.raises(IcsError) as raised:
        parse_ics(text, "x.ics")
    assert raised.value.problems[0].startswith(message), raised.value.problems


def test_broken_calendar_file_is_a_config_error_with_both_lines(tmp_path: Path) -> None:
    """A config naming a broken .ics reports the config's line and the calendar's own line."""
    (tmp_path / "bad.ics").write_text(BROKEN[0][0])
    config = "vantage: v\ntargets:\n  - {name: t, host: 127.0.0.2, smtp: {port: 25, tls: none}}\n" \
             "changes:\n  - calendar: it\n    file: bad.ics\n"
    with pytest.raises(ConfigError) as raised:
        load_text(config, str(tmp_path / "mailmon.yaml"))
    assert raised.value.problems == [f"{tmp_path}/mailmon.yaml:6: changes[0].file: bad calendar: "
                                     f"{tmp_path}/bad.ics:3: the event has no DTSTART"]


INLINE_ERRORS = [
    ("{name: x, start: '2026-13-13 10:00', duration: 3d}", "changes[0].entries[0].start: not a real date and time"),
    ("{name: x, start: 'Tuesday', duration: 3d}", "changes[0].entries[0].start: 'Tuesday' is not a local date"),
    ("{name: x, start: '2026-01-13 10:00', duration: 3x}", "changes[0].entries[0].duration: '3x' is not a duration"),
    ("{name: x, start: '2026-01-13 10:00', duration: 1d, timezone: Mars/Base}",
     "changes[0].entries[0].timezone: 'Mars/Base' is not a known IANA time zone"),
    ("{name: x, start: '2026-01-13 10:00', duration: 1d, rrule: 'FREQ=SOMETIMES'}",
     "changes[0].entries[0].rrule: not an RFC 5545 RRULE"),
    ("{start: '2026-01-13 10:00', duration: 1d}", "changes[0].entries[0]: name is required"),
]


@pytest.mark.parametrize(("entry", "message"), INLINE_ERRORS)
def test_bad_inline_entry_is_a_config_error_with_line(entry: str, message: str) -> None:
    """Each bad inline change entry is reported on its line."""
    config = ("vantage: v\ntargets:\n  - {name: t, host: 127.0.0.2, smtp: {port: 25, tls: none}}\n"
              f"changes:\n  - calendar: c\n    entries:\n      - {entry}\n")
    with pytest.raises(ConfigError) as raised:
        load_text(config, "m.yaml")
    assert any(p.startswith(f"m.yaml:7: {message}") for p in raised.value.problems), raised.value.problems


def test_edited_file_is_reread_and_a_bad_edit_keeps_the_last_good_copy(tmp_path: Path) -> None:
    """refresh() picks up an edit; a broken edit is reported and the last good calendar stays in force."""
    path = tmp_path / "c.ics"
    event = "BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VEVENT\nUID:1\nSUMMARY:{name}\nDTSTART:20260101T000000Z\n" \
            "DTEND:20260102T000000Z\nEND:VEVENT\nEND:VCALENDAR\n"
    path.write_text(event.format(name="first"))
    calendars = ChangeCalendars([ChangeSource("c", file=str(path))], local_zone=dt.UTC)
    assert calendars.changes() == {"c": ["first"]}
    path.write_text(event.format(name="second"))
    os.utime(path, (1, 1))  # a different mtime even within the file system's timestamp resolution
    assert calendars.refresh() == []
    assert calendars.changes() == {"c": ["second"]}
    path.write_text("BEGIN:VCALENDAR\n")
    os.utime(path, (2, 2))
    problems = calendars.refresh()
    assert problems and problems[0].startswith(f"{path}:1:")
    assert calendars.changes() == {"c": ["second"]}
