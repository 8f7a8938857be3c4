"""History rows as JSON built by SQLite (`query_json`, what /api/history serves): the same rows as `query`."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from monitor.changes import ChangeCalendars, ChangeEntry, ChangeSource
from monitor.history import History, query, row_from_result
from monitor.history.reading import query_json
from monitor.result import Result, TlsFacts
from monitor.web.routes import _history_page
from tests import builders

# Recent start times: rows older than the retention age would be deleted on sight. A third of a second is a float
# whose shortest form needs all 17 significant digits: SQLite's own JSON would keep 15 of them.
BASE = float(int(time.time()) - 86400) + 1 / 3

# Text SQLite must escape as JSON does: quotes, backslashes, control characters, non-ASCII, a NUL.
AWKWARD = 'say "hi"\\ \t\r\n\x00\x01\x1f\x7f é ✗ 𝄞 </script>'


def _results() -> list[Result]:
    full = Result(
        target="lab", check="smtp", vantage="office-lan", ok=False, started_at=BASE + 0.123456789,
        duration_seconds=1.23456789, phases={"dns": 0.0012345678, "connect": 0.02}, stage="rcpt",
        reason="reply_5xx", detail=AWKWARD, smtp_code=550, smtp_reply="550 5.1.1 " + AWKWARD,
        tls=TlsFacts(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", cert_not_after=1_900_000_000.0),
        transcript=["S: 220 mail.lab.test ESMTP", "C: RCPT TO:<a@lab.test>", "S: 550 " + AWKWARD],
        via="relay-eu", queue_id="4XyZ1q2w3e", message_id="<probe.1@mailmon.invalid>",
    )
    rows = [full]
    for seq in range(40):
        rows.append(builders.result(
            f"t{seq % 3}", ("smtp", "imap", "pop3")[seq % 3], ok=seq % 4 != 0, started_at=BASE + seq * 7.000001,
            duration=0.000123 * seq, phases={} if seq % 2 else {"connect": 0.5}, detail=f"seq {seq}",
            transcript=[] if seq % 5 == 0 else [f"C: NOOP {seq}"]))
    return rows


@pytest.fixture
def history(tmp_path: Path) -> History:
    journal = History.open(str(tmp_path / "history.db"))
    journal.write_now([row_from_result(result, verdict="ok" if result.ok else None) for result in _results()])
    return journal


@pytest.mark.parametrize("conditions", [
    {},
    {"failed_only": True},
    {"target": "t1", "check": "imap"},
    {"since": BASE + 70.0, "until": BASE + 200.0},
    {"limit": 5, "offset": 3},
    {"target": "nobody"},
])
def test_json_rows_are_the_query_rows(history: History, conditions: dict[str, object]) -> None:
    expected = query(history.path, **conditions)  # type: ignore[arg-type]
    page = query_json(history.path, **conditions)  # type: ignore[arg-type]
    assert json.loads(page.body) == expected
    assert page.count == len(expected)


def test_every_field_and_every_digit_survives(history: History) -> None:
    """The full row (escapes, NULLs, nested JSON, booleans) and start times needing 17 digits read back equal."""
    rows = json.loads(query_json(history.path, limit=1000).body)
    full = next(row for row in rows if row["via"] == "relay-eu")
    assert full["detail"] == AWKWARD and full["transcript"][-1] == "S: 550 " + AWKWARD
    assert full["ok"] is False and full["phases"] == {"dns": 0.001235, "connect": 0.02}  # stored to the microsecond
    assert full["started_at"] == BASE + 0.123456789
    assert full["tls_cert_not_after"] == 1_900_000_000.0 and full["smtp_code"] == 550
    assert {row["started_at"] for row in rows} == {result.started_at for result in _results()}
    assert all(row["ok"] is True for row in rows if row["verdict"] == "ok")


def test_the_page_knows_its_last_id_and_time_span(history: History) -> None:
    expected = query(history.path, limit=7, before_id=query(history.path, limit=3)[-1]["id"])
    page = query_json(history.path, limit=7, before_id=query(history.path, limit=3)[-1]["id"])
    assert page.last_id == expected[-1]["id"]
    assert (page.earliest, page.latest) == (min(r["started_at"] for r in expected),
                                            max(r["started_at"] for r in expected))


def test_an_empty_page_is_an_empty_array(history: History) -> None:
    page = query_json(history.path, target="nobody")
    assert (page.body, page.count, page.last_id, page.earliest, page.latest) == (b"[]", 0, None, None, None)


def test_api_history_page_pages_on_and_lists_the_windows_of_its_span(history: History) -> None:
    """/api/history's body: the rows, `next_before_id` while pages are full, the change windows of the span."""
    window = ChangeEntry(name="client update", start=dt.datetime.fromtimestamp(int(BASE) + 10, tz=dt.UTC),
                         duration=dt.timedelta(seconds=60))
    calendars = ChangeCalendars([ChangeSource("it", entries=(window,))])
    params = {"since": None, "until": None, "target": None, "check": None, "failed_only": False, "limit": 10,
              "before_id": None}
    seen: list[dict[str, object]] = []
    while True:
        body = json.loads(_history_page(history, calendars, params).body)
        seen += body["rows"]
        if body["next_before_id"] is None:
            break
        assert body["next_before_id"] == body["rows"][-1]["id"]
        params["before_id"] = body["next_before_id"]
    assert seen == query(history.path, limit=1000)
    first = json.loads(_history_page(history, calendars, {**params, "before_id": None, "limit": 1000}).body)
    assert [w["change"] for w in first["change_windows"]] == ["client update"]

