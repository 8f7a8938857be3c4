"""Duration strings: `500ms`, `15s`, `2m`, `1h`, `30d` and nothing looser."""

from __future__ import annotations

import pytest

from monitor.durations import format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5),
    ("15s", 15.0),
    ("2m", 120.0),
    ("1h", 3600.0),
    ("30d", 2_592_000.0),
    ("1.5s", 1.5),
    ("0.25h", 900.0),
    (" 15s ", 15.0),
])
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    """A number followed directly by a unit gives that many seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["15", "15 s", "-1s", "abc", "", "1.5", "15S", "1e3s", ".5s", "15sec", "1h30m"])
def test_parse_duration_rejects(text: str) -> None:
    """Anything but a plain number and one unit raises ValueError that quotes the text and shows examples."""
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == f"{text!r} is not a duration: write a number and a unit, e.g. 500ms, 15s, 2m, 1h"


@pytest.mark.parametrize(("seconds", "text"), [
    (0.5, "500ms"),
    (1.5, "1500ms"),
    (15.0, "15s"),
    (90.0, "90s"),
    (120.0, "2m"),
    (3600.0, "1h"),
    (5400.0, "90m"),
    (2_592_000.0, "30d"),
])
def test_format_duration_uses_the_largest_exact_unit(seconds: float, text: str) -> None:
    """format_duration picks the largest unit that divides the value exactly."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["500ms", "15s", "2m", "1h", "30d", "1.5s", "90s", "0.25h", "1500ms", "7d"])
def test_format_duration_round_trips(text: str) -> None:
    """Formatting a parsed duration and parsing it again gives the same number of seconds."""
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
