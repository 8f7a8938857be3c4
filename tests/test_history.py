"""The SQLite probe history: round trip, filters and pages, redaction, kill -9 durability, retention, back-pressure.

Everything runs on real SQLite files in tmp_path; the kill test runs tests/history_writer.py as a real process.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing, suppress
from pathlib import Path

import pytest

from monitor.errors import MailmonError
from monitor.history import SCHEMA_VERSION, History, HistoryError, latest, query, redact, redact_lines, row_from_result
from monitor.history.db import sqlite_problem
from monitor.result import Result, TlsFacts
from tests import builders

WRITER = Path(__file__).resolve().parent / "history_writer.py"
DAY = 86400.0
# Start times are recent: rows older than the retention age (30 days by default) would be deleted on sight.
BASE = float(int(time.time()) - DAY)


def make_result(seq: int = 0, *, target: str = "lab", check: str = "smtp", ok: bool = True,
                started_at: float | None = None, via: str | None = None,
                transcript: list[str] | None = None) -> Result:
    return builders.result(
        target, check, ok=ok, started_at=time.time() if started_at is None else started_at, duration=0.125,
        phases={"dns": 0.001, "connect": 0.002}, stage="rcpt", reason="reply_5xx",
        detail=f"seq {seq}", transcript=transcript if transcript is not None else [f"C: NOOP {seq}"], via=via,
    )


def seq_of(row: dict[str, object]) -> int:
    return int(str(row["detail"]).split()[1])


def file_size(path: Path) -> int:
    """Main file + WAL, as the retention limit counts it."""
    total = 0
    for name in (str(path), str(path) + "-wal"):
        with suppress(FileNotFoundError):
            total += os.stat(name).st_size
    return total


# ------------------------------------------------------------------------------------------------ round trip

def test_a_result_round_trips_with_every_field(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    result = Result(
        target="lab", check="smtp", vantage="office-lan", ok=False, started_at=BASE + 0.123456,
        duration_seconds=1.23456789, phases={"dns": 0.0012345678, "connect": 0.02, "tls": 0.1, "banner": 0.05},
        stage="rcpt", reason="reply_5xx", detail="550 5.1.1 <nobody@lab.test>: Recipient address rejected",
        smtp_code=550, smtp_reply="550 5.1.1 <nobody@lab.test>: Recipient address rejected",
        tls=TlsFacts(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", cert_not_after=1_900_000_000.0),
        transcript=["-- TLS established: TLSv1.3 TLS_AES_256_GCM_SHA384", "S: 220 mail.lab.test ESMTP Postfix",
                    "C: EHLO probe.lab.test", "S: 250 mail.lab.test", "C: RCPT TO:<nobody@lab.test>",
                    "S: 550 5.1.1 <nobody@lab.test>: Recipient address rejected ✗"],
        via="relay-eu", queue_id="4XyZ1q2w3e", message_id="<probe.1700000000@mailmon.invalid>",
    )
    # The history reads `verdict` with getattr: it works whether or not Result has the field yet.
    setattr(result, "verdict", "bounced")  # noqa: B010
    second = make_result(1, started_at=BASE + 100.0)

    history = History.open(str(db))
    history.submit(result)
    history.submit(second, verdict="delivered")  # the argument wins over (and stands in for) the attribute
    history.close()
    assert history.dropped == 0 and history.written == 2

    newest, oldest = query(str(db))
    expected = result.as_json()
    for key, value in expected.items():
        assert oldest[key] == value, key
    assert oldest["ok"] is False
    assert oldest["queue_id"] == "4XyZ1q2w3e"
    assert oldest["message_id"] == "<probe.1700000000@mailmon.invalid>"
    assert oldest["verdict"] == "bounced"
    assert oldest["transcript"] == result.transcript
    assert isinstance(oldest["id"], int)
    assert set(oldest) == set(expected) | {"id", "queue_id", "message_id", "verdict", "transcript"}
    assert newest["verdict"] == "delivered" and newest["ok"] is True and newest["via"] is None
    assert newest["id"] > oldest["id"]


def test_schema_is_created_once_and_reopening_keeps_rows(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    for round_ in range(3):
        with History.open(str(db)) as history:
            history.submit(make_result(round_))
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
        assert {"results_time", "results_target_check_time", "results_ok_time"} <= indexes
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 3


# ------------------------------------------------------------------------------------------------ queries

@pytest.fixture
def filled(tmp_path: Path) -> tuple[str, list[dict[str, object]]]:
    """120 rows: 3 targets x 2 checks x 20 times (some times shared), every 4th failed; and what went in."""
    db = tmp_path / "history.db"
    history = History.open(str(db))
    rows = []
    expected: list[dict[str, object]] = []
    seq = 0
    for step in range(20):
        for target in ("a", "b", "c"):
            for check in ("smtp", "imap"):
                started = BASE + step * 10  # the six rows of a step share their start time
                result = make_result(seq, target=target, check=check, ok=seq % 4 != 0, started_at=started)
                rows.append(row_from_result(result))
                expected.append({"seq": seq, "target": target, "check": check, "ok": seq % 4 != 0,
                                 "started_at": started})
                seq += 1
    random.Random(7).shuffle(rows)  # insertion order differs from time order
    history.write_now(rows[:60])
    history.write_now(rows[60:])
    history.close()
    return str(db), expected


def _expected_seqs(expected: list[dict[str, object]], **conditions: object) -> set[int]:
    since = conditions.pop("since", None)
    until = conditions.pop("until", None)
    failed_only = conditions.pop("failed_only", False)
    out = set()
    for row in expected:
        started = float(row["started_at"])  # type: ignore[arg-type]
        if since is not None and started < since:  # type: ignore[operator]
            continue
        if until is not None and started >= until:  # type: ignore[operator]
            continue
        if failed_only and row["ok"]:
            continue
        if any(row[k] != v for k, v in conditions.items()):
            continue
        out.add(int(row["seq"]))  # type: ignore[call-overload]
    return out


def _assert_newest_first(rows: list[dict[str, object]]) -> None:
    keys = [(float(r["started_at"]), int(r["id"])) for r in rows]  # type: ignore[arg-type,call-overload]
    assert keys == sorted(keys, reverse=True)


@pytest.mark.parametrize("conditions", [
    {},
    {"since": 50.0},
    {"until": 50.0},
    {"since": 50.0, "until": 120.0},
    {"target": "b"},
    {"check": "imap"},
    {"target": "c", "check": "smtp"},
    {"failed_only": True},
    {"failed_only": True, "target": "a", "since": 100.0},
    {"target": "nobody"},
])
def test_filters(filled: tuple[str, list[dict[str, object]]], conditions: dict[str, object]) -> None:
    db, expected = filled
    conditions = {k: BASE + v if k in ("since", "until") else v  # type: ignore[operator]
                  for k, v in conditions.items()}
    rows = query(db, **conditions)  # type: ignore[arg-type]
    assert {seq_of(r) for r in rows} == _expected_seqs(expected, **dict(conditions))
    assert len(rows) == len({r["id"] for r in rows})
    _assert_newest_first(rows)
    if conditions.get("failed_only"):
        assert all(r["ok"] is False for r in rows)


@pytest.mark.parametrize("page_size", [1, 7, 50, 119, 120, 500])
def test_pages_by_cursor_and_by_offset_have_no_gaps_or_duplicates(
        filled: tuple[str, list[dict[str, object]]], page_size: int) -> None:
    db, _ = filled
    everything = query(db, limit=10_000)
    assert len(everything) == 120
    _assert_newest_first(everything)

    by_cursor: list[dict[str, object]] = []
    cursor = None
    while True:
        page = query(db, limit=page_size, before_id=cursor)
        if not page:
            break
        assert len(page) <= page_size
        by_cursor += page
        cursor = int(page[-1]["id"])
    assert [r["id"] for r in by_cursor] == [r["id"] for r in everything]

    by_offset: list[dict[str, object]] = []
    while page := query(db, limit=page_size, offset=len(by_offset)):
        by_offset += page
    assert [r["id"] for r in by_offset] == [r["id"] for r in everything]


def test_cursor_pages_stay_consistent_while_rows_are_added(filled: tuple[str, list[dict[str, object]]]) -> None:
    db, _ = filled
    first = query(db, target="a", limit=10)
    with History.open(db) as history:  # newer rows arrive between the pages
        history.write_now([row_from_result(make_result(999, target="a", started_at=BASE + 10_000.0))])
    rest = query(db, target="a", limit=1000, before_id=int(first[-1]["id"]))
    before = {r["id"] for r in first}
    assert not before & {r["id"] for r in rest}
    assert len(first) + len(rest) == 40


def test_latest_is_the_newest_row_per_target_check_via(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with History.open(str(db)) as history:
        history.submit(make_result(1, target="a", started_at=BASE + 100.0))
        history.submit(make_result(2, target="a", started_at=BASE + 200.0))
        history.submit(make_result(3, target="a", started_at=BASE + 150.0))  # started earlier, recorded later
        history.submit(make_result(4, target="a", started_at=BASE + 120.0, via="relay"))
        history.submit(make_result(5, target="a", check="imap", started_at=BASE + 90.0, ok=False))
        history.submit(make_result(6, target="b", started_at=BASE + 50.0))
        history.flush()
        rows = history.latest()
    got = {(r["target"], r["check"], r["via"]): seq_of(r) for r in rows}
    assert got == {("a", "smtp", None): 2, ("a", "smtp", "relay"): 4, ("a", "imap", None): 5, ("b", "smtp", None): 6}
    assert latest(str(db)) == rows


def test_query_works_while_the_writer_writes(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    history = History.open(str(db), flush_interval=0.01)
    seen = []
    try:
        for seq in range(2000):
            history.submit(make_result(seq, started_at=BASE + seq))
            if seq % 200 == 0:
                seen.append(len(query(str(db), limit=5000)))
    finally:
        history.close()
    assert seen == sorted(seen)
    assert len(query(str(db), limit=5000)) == 2000


# ------------------------------------------------------------------------------------------------ redaction

def test_transcript_secrets_are_not_stored(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    transcript = [
        "S: 220 mail.lab.test ESMTP", "C: EHLO probe", "S: 250 AUTH PLAIN LOGIN",
        "C: AUTH PLAIN AHByb2JlAHNlY3JldA==", "S: 235 2.7.0 ok",
        "C: AUTH LOGIN", "S: 334 VXNlcm5hbWU6", "C: cHJvYmVAbGFiLnRlc3Q=", "S: 334 UGFzc3dvcmQ6",
        "-- a note between the challenge and the answer", "C: c3VwZXJzZWNyZXQ=", "S: 235 2.7.0 ok",
        "S: +OK POP3 ready", "C: USER probe", "S: +OK", "C: PASS hunter2", "S: +OK logged in",
        "S: * OK IMAP4rev1", "C: a1 LOGIN user hunter2", 'C: a2 LOGIN "probe@lab.test" "hunter 2"',
        "C: MAIL FROM:<probe@lab.test>", "S: 250 2.1.0 Ok",
    ]
    with History.open(str(db)) as history:
        history.submit(make_result(transcript=transcript))
    (row,) = query(str(db))
    stored = json.dumps(row)
    for secret in ("AHByb2JlAHNlY3JldA==", "hunter2", "hunter 2", "cHJvYmVAbGFiLnRlc3Q=", "c3VwZXJzZWNyZXQ="):
        assert secret not in stored
    with closing(sqlite3.connect(db)) as conn:  # and not in the file's raw column either
        raw = conn.execute("SELECT transcript FROM results").fetchone()[0]
    assert "hunter2" not in raw and "AHByb2JlAHNlY3JldA==" not in raw
    assert row["transcript"] == [
        "S: 220 mail.lab.test ESMTP", "C: EHLO probe", "S: 250 AUTH PLAIN LOGIN",
        "C: AUTH PLAIN ********", "S: 235 2.7.0 ok",
        "C: AUTH LOGIN", "S: 334 VXNlcm5hbWU6", "C: ********", "S: 334 UGFzc3dvcmQ6",
        "-- a note between the challenge and the answer", "C: ********", "S: 235 2.7.0 ok",
        "S: +OK POP3 ready", "C: USER probe", "S: +OK", "C: PASS ********", "S: +OK logged in",
        "S: * OK IMAP4rev1", "C: a1 LOGIN user ********", 'C: a2 LOGIN "probe@lab.test" ********',
        "C: MAIL FROM:<probe@lab.test>", "S: 250 2.1.0 Ok",
    ]


def test_redaction_leaves_ordinary_lines_and_probe_redactions_alone() -> None:
    lines = ["C: EHLO probe", "S: 250-PIPELINING", "C: AUTH PLAIN ********", "C: PASS ********",
             "C: LOGIN probe@lab.test ********", "S: 334 ", "C: *", "S: 250 ok", "C: RSET", "C: QUIT"]
    assert redact_lines(lines) == lines
    assert redact("C: AUTH PLAIN abc\nS: 235 ok") == "C: AUTH PLAIN ********\nS: 235 ok"
    assert redact("no client line here") == "no client line here"


# ------------------------------------------------------------------------------------------------ kill -9

def _read_until_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """Raw stdout of `proc` up to and including its first complete line (no buffering between us and the pipe)."""
    assert proc.stdout is not None
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the writer printed no commit in time"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    return data


def _read_rest(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stdout is not None
    data = b""
    while chunk := os.read(proc.stdout.fileno(), 65536):
        data += chunk
    return data


def _run_and_kill(db: Path, tag: str, rng: random.Random, log: Path, *extra: str) -> tuple[int, int]:
    """Start the writer, SIGKILL it at a random moment after its first commit; (last id, rows) it reported."""
    with log.open("ab") as stderr:
        proc = subprocess.Popen([sys.executable, str(WRITER), str(db), tag, *extra], stdout=subprocess.PIPE,
                                stderr=stderr)
    try:
        out = _read_until_line(proc, time.monotonic() + 30)
        assert out.endswith(b"\n") or b"\n" in out, f"the writer exited early: {log.read_text()}"
        time.sleep(rng.uniform(0.0, 0.2))
    finally:
        proc.send_signal(signal.SIGKILL)
    out += _read_rest(proc)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    lines = out.split(b"\n")[:-1]  # only complete lines (each was one write(2), so none is cut anyway)
    last_id, total = (int(x) for x in lines[-1].split())
    return last_id, total


@pytest.mark.slow
def test_kill_9_during_heavy_writing_loses_no_committed_row(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    committed = 0
    for iteration in range(20):
        tag = f"run{iteration}"
        last_id, total = _run_and_kill(db, tag, rng, tmp_path / "writer.log")
        assert total > 0
        committed += total
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"seed {seed}"
            # Every row the writer saw committed is there: exactly `total` rows of this run up to last_id.
            present = conn.execute("SELECT count(*) FROM results WHERE target = ? AND id <= ?",
                                   (tag, last_id)).fetchone()[0]
            assert present == total, f"iteration {iteration}, seed {seed}"
            rows = conn.execute("SELECT count(*) FROM results").fetchone()[0]
            assert rows >= committed
            transcript = conn.execute("SELECT transcript FROM results WHERE id = ?", (last_id,)).fetchone()[0]
            assert json.loads(transcript)[0] == "S: 220 mail.lab.test ESMTP"
    assert len(query(str(db), limit=5)) == 5  # and the file still opens as a history


@pytest.mark.slow
def test_kill_9_during_size_retention_leaves_a_sound_file(tmp_path: Path) -> None:
    """With a 1 MB limit the writer deletes, checkpoints and vacuums constantly: kill it in the middle of that."""
    db = tmp_path / "history.db"
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    for iteration in range(8):
        tag = f"run{iteration}"
        last_id, _ = _run_and_kill(db, tag, rng, tmp_path / "writer.log", "1000000")
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"seed {seed}"
            # Retention deletes the oldest rows only, so the newest committed row is still there.
            assert conn.execute("SELECT target FROM results WHERE id = ?", (last_id,)).fetchone() == (tag,)
        assert file_size(db) <= 1_000_000


# ------------------------------------------------------------------------------------------------ retention

@pytest.mark.slow
def test_size_retention_keeps_the_file_under_the_limit_and_the_newest_rows(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    limit = 1_000_000
    total = 20_000
    history = History.open(str(db), max_bytes=limit)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(file_size(db))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    transcript = [f"S: 250-{'x' * 200}" for _ in range(10)]  # about 2 KB per row
    started = time.monotonic()
    try:
        for seq in range(total):
            history.submit(make_result(seq, started_at=BASE + seq, transcript=transcript))
            while history.pending > 2000:  # keep pace with the writer instead of dropping
                time.sleep(0.001)
        assert history.flush(timeout=120)
    finally:
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
        history.close()
    print(f"\nsize retention: {total} rows of ~2 KB in {elapsed:.1f}s ({total / elapsed:.0f} rows/s), "
          f"{len(samples)} samples, largest main+WAL {max(samples)} bytes ({max(samples) / limit:.0%} of the limit)")
    assert history.dropped == 0 and history.written == total
    assert len(samples) > 100
    # No margin needed: the writer plans for the next commit and checkpoint to stay under 85% of the limit.
    assert max(samples) <= limit
    assert file_size(db) <= limit
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    kept = sorted(seq_of(r) for r in query(str(db), limit=total))
    # The newest rows, and only those: a contiguous run ending with the last one written.
    assert kept == list(range(total - len(kept), total))
    assert len(kept) >= 40  # the low-water mark keeps at least 10% of the limit for data (~100 KB)


def test_age_retention_deletes_old_rows_only(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    now = time.time()
    ages = {"old-40d": 40 * DAY, "old-31d": 31 * DAY, "kept-29d": 29 * DAY, "kept-1d": DAY, "kept-now": 0.0}
    with History.open(str(db), retention_seconds=30 * DAY) as history:
        assert history.retain(timeout=30)  # the pass every open starts with is over: the rows below stay for now
        history.write_now([row_from_result(make_result(n, target=name, started_at=now - age))
                           for name, age in ages.items() for n in range(3)])
        assert {r["target"] for r in history.latest()} == set(ages)
        assert history.retain(timeout=30)
        remaining = history.query()
        assert {r["target"] for r in remaining} == {"kept-29d", "kept-1d", "kept-now"}
        assert len(remaining) == 9
        assert {r["target"] for r in history.latest()} == {"kept-29d", "kept-1d", "kept-now"}


# ------------------------------------------------------------------------------------------------ back-pressure

@pytest.mark.slow
def test_submit_never_blocks_while_the_writer_is_stalled(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    history = History.open(str(db), queue_size=1000)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # the database write lock: the writer thread cannot commit anything
    try:
        for seq in range(10_000):
            history.submit(make_result(seq, started_at=BASE + seq))
        # All 10,000 calls returned while the lock was still held, so none of them waited for the writer.
        assert locker.in_transaction
        assert history.written == 0
        in_flight = 10_000 - history.pending - history.dropped  # taken by the writer into its stuck batch
        assert history.pending == 1000
        assert 0 <= in_flight <= history.batch_rows
        assert history.dropped == 9000 - in_flight
        deadline = time.monotonic() + 30
        while history.write_errors == 0:  # and the writer really was stuck on the lock meanwhile
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert history.written == 0
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    history.close()
    stored = {seq_of(r) for r in query(str(db), limit=20_000)}
    assert len(stored) + history.dropped == 10_000
    assert set(range(9000, 10_000)) <= stored  # the oldest pending results were the ones dropped


def test_a_result_sqlite_cannot_store_is_dropped_and_the_rest_written(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    huge_code = make_result(1)
    huge_code.smtp_code = 2**70  # SQLite integers are 64-bit: the insert of this row fails
    bad_phase = make_result(2)
    bad_phase.phases = {"dns": "soon"}  # type: ignore[dict-item]  # not a number: the row cannot even be built
    with History.open(str(db)) as history:
        for result in (make_result(0), huge_code, bad_phase, make_result(3)):
            history.submit(result)
        assert history.flush(timeout=30)
        history.submit(bad_phase)  # unusable and last: flush() must not wait for it forever
        assert history.flush(timeout=30)
    assert history.dropped == 3 and history.written == 2
    assert sorted(seq_of(r) for r in query(str(db))) == [0, 3]


def test_submit_after_close_is_counted_not_raised(tmp_path: Path) -> None:
    history = History.open(str(tmp_path / "history.db"))
    history.close()
    history.submit(make_result())
    assert history.dropped == 1


# ------------------------------------------------------------------------------------------------ bad files

def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(HistoryError) as opened:
        History.open(str(bad))
    assert str(bad) in str(opened.value) and "not a SQLite database" in str(opened.value)
    assert isinstance(opened.value, MailmonError)
    with pytest.raises(HistoryError, match="not a SQLite database"):
        query(str(bad))
    assert bad.read_text().startswith("these are my notes")  # left untouched


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        conn.commit()
    with pytest.raises(HistoryError, match=r"not a mailmon history.*invoices") as opened:
        History.open(str(other))
    assert str(other) in str(opened.value)


def test_a_corrupt_history_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with History.open(str(db)) as history:
        history.write_now([row_from_result(make_result(n, transcript=[f"S: 250 {'y' * 500}"] * 4))
                           for n in range(300)])
    size = db.stat().st_size
    with db.open("r+b") as f:  # keep the header page, scramble the rest
        f.seek(4096)
        f.write(random.Random(1).randbytes(size - 4096))
    with pytest.raises(HistoryError) as opened:
        History.open(str(db))
    assert str(db) in str(opened.value) and "corrupt" in str(opened.value)


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "history.db"
    with pytest.raises(HistoryError) as opened:
        History.open(str(path))
    assert str(path) in str(opened.value)


def test_a_problem_is_named_from_the_sqlite_result_code_not_its_message() -> None:
    """An extended code (SQLITE_CORRUPT_INDEX) names its primary problem whatever SQLite's words say."""
    error = sqlite3.DatabaseError("database is locked")
    error.sqlite_errorname = "SQLITE_CORRUPT_INDEX"
    problem = sqlite_problem("/x/h.db", error)
    assert str(problem) == "history database /x/h.db: the SQLite file is corrupt: database is locked"
