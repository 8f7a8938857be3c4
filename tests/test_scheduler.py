"""The scheduler with a fake run function: fixed rate, overrun skips, the concurrency bound, remove and stop.

The tests run on fake loop time (looptime): a sleep takes no real time and the loop's clock moves in exact
steps, so counts and gaps are asserted exactly rather than as ranges that a loaded machine might still miss.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import looptime
import pytest

from monitor.config import CheckSettings, Target
from monitor.scheduler import Scheduler
from tests import builders

pytestmark = pytest.mark.looptime

INTERVAL = 0.05


def make_target(name: str, checks: tuple[str, ...] = ("smtp",), interval: float = INTERVAL) -> Target:
    settings = (builders.check(check, tls_mode="none", interval=interval, timeout=interval, use_auth=False)
                for check in checks)
    return builders.target(name, *settings, host="127.0.0.1", auth=None)


class FakeRun:
    """A run function that sleeps `seconds`, counting calls and how many runs overlap, overall and per check."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: Counter[tuple[str, str]] = Counter()
        self.starts: list[tuple[tuple[str, str], float]] = []
        self.active: Counter[tuple[str, str]] = Counter()
        self.max_active_per_check = 0
        self.max_active = 0
        self.cancelled = 0

    async def __call__(self, target: Target, check: CheckSettings) -> None:
        key = (target.name, check.name)
        self.calls[key] += 1
        self.starts.append((key, asyncio.get_running_loop().time()))
        self.active[key] += 1
        self.max_active_per_check = max(self.max_active_per_check, self.active[key])
        self.max_active = max(self.max_active, sum(self.active.values()))
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active[key] -= 1


def fake_time() -> bool:
    """Whether this loop runs on looptime's fake time: it does on asyncio's loop; uvloop's (the image's, tested in
    a pass of its own by scripts/test) cannot be patched, so there the tests keep real-time ranges."""
    loop = asyncio.get_running_loop()
    return isinstance(loop, looptime.LoopTimeEventLoop) and loop.looptime_on


async def wait_until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll until `condition` holds; fail the test after `limit` seconds (a hang guard, not a speed check)."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), limit)


async def running(scheduler: Scheduler, body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` and always stop the scheduler afterwards."""
    try:
        await body()
    finally:
        await scheduler.stop()


async def test_runs_repeat_at_the_interval() -> None:
    """With spread=0 the first run is immediate and further runs follow every interval, without bursts."""
    run = FakeRun()
    scheduler = Scheduler(run, concurrency=4, spread=0)
    scheduler.add(make_target("a"))

    async def body() -> None:
        await asyncio.sleep(0.3)
    await running(scheduler, body)
    # Due at 0, 0.05, ... 0.25 s: six runs before the body ends at 0.3 s (the one due at 0.3 s is not started
    # before the scheduler stops). On real time a slow machine may run fewer, never more than the schedule allows.
    calls = run.calls[("a", "smtp")]
    assert calls == 6 if fake_time() else 3 <= calls <= 8


async def test_fixed_rate_does_not_drift_by_run_time() -> None:
    """Runs taking most of the interval still start once per interval, not once per interval plus run time."""
    run = FakeRun(seconds=0.04)
    scheduler = Scheduler(run, concurrency=4, spread=0)
    scheduler.add(make_target("a"))

    async def body() -> None:
        await asyncio.sleep(0.52)
    await running(scheduler, body)
    # Fixed rate: 11 starts (0, 0.05, ... 0.5 s). Scheduling after each run ends (0.09 s apart) would give 6.
    assert run.calls[("a", "smtp")] == 11 if fake_time() else run.calls[("a", "smtp")] >= 8


async def test_overrun_is_skipped_and_never_runs_concurrently() -> None:
    """A run longer than the interval turns the next due times into counted skips, never a second concurrent run."""
    run = FakeRun(seconds=0.18)
    skips: list[tuple[str, str]] = []
    scheduler = Scheduler(run, concurrency=4, spread=0, on_skip=lambda t, c: skips.append((t, c.name)))
    scheduler.add(make_target("slow", checks=("smtp", "imap")))

    async def body() -> None:
        await wait_until(lambda: len(skips) >= 4 and min(run.calls.values(), default=0) >= 2)
    await running(scheduler, body)
    assert run.max_active_per_check == 1
    assert set(skips) == {("slow", "smtp"), ("slow", "imap")}


async def test_concurrency_bound_holds_with_many_checks() -> None:
    """With far more due checks than slots, exactly `concurrency` runs are in progress at the peak."""
    run = FakeRun(seconds=0.03)
    scheduler = Scheduler(run, concurrency=3, spread=0)
    for i in range(20):
        scheduler.add(make_target(f"t{i}"))

    async def body() -> None:
        await wait_until(lambda: len(run.calls) == 20)  # every check got a slot at least once
    await running(scheduler, body)
    assert run.max_active == 3


async def test_lag_is_reported_for_runs_waiting_for_a_slot() -> None:
    """on_lag gets the delay between due time and start; runs queued behind a full bound report a real delay."""
    lags: list[float] = []
    run = FakeRun(seconds=0.03)
    scheduler = Scheduler(run, concurrency=1, spread=0, on_lag=lags.append)
    for i in range(4):
        scheduler.add(make_target(f"t{i}", interval=10.0))

    async def body() -> None:
        await wait_until(lambda: len(lags) == 4)
    await running(scheduler, body)
    # All four were due at once with one slot: the last one waited behind three runs of 0.03 s.
    if fake_time():
        assert sorted(lags) == pytest.approx([0.0, 0.03, 0.06, 0.09], abs=1e-5)
    assert all(lag >= 0 for lag in lags) and max(lags) >= 0.06


async def test_remove_stops_only_that_target() -> None:
    """remove(name) ends every check of that target and leaves the other targets running."""
    run = FakeRun()
    scheduler = Scheduler(run, concurrency=4, spread=0)
    scheduler.add(make_target("gone", checks=("smtp", "imap")))
    scheduler.add(make_target("kept"))

    async def body() -> None:
        await wait_until(lambda: run.calls[("gone", "imap")] >= 2 and run.calls[("kept", "smtp")] >= 2)
        await scheduler.remove("gone")
        assert scheduler.keys == {("kept", "smtp")}
        frozen = {key: run.calls[key] for key in (("gone", "smtp"), ("gone", "imap"))}
        kept_before = run.calls[("kept", "smtp")]
        await wait_until(lambda: run.calls[("kept", "smtp")] >= kept_before + 3)
        assert {key: run.calls[key] for key in frozen} == frozen
    await running(scheduler, body)


async def test_remove_lets_a_run_in_flight_finish() -> None:
    """A run already going when its target is removed completes instead of being cancelled."""
    run = FakeRun(seconds=0.1)
    scheduler = Scheduler(run, concurrency=4, spread=0)
    scheduler.add(make_target("gone", interval=10.0))

    async def body() -> None:
        await wait_until(lambda: run.active[("gone", "smtp")] == 1)
        await scheduler.remove("gone")
        await wait_until(lambda: run.active[("gone", "smtp")] == 0)
    await running(scheduler, body)
    assert run.cancelled == 0


async def test_stop_leaves_no_task_running() -> None:
    """stop() cancels every loop and every run in flight and waits for them: no task outlives it."""
    before = asyncio.all_tasks()
    run = FakeRun(seconds=10.0)
    scheduler = Scheduler(run, concurrency=2, spread=0)
    for i in range(5):
        scheduler.add(make_target(f"t{i}", checks=("smtp", "pop3")))
    await wait_until(lambda: sum(run.active.values()) == 2)
    assert len(asyncio.all_tasks() - before) > 2
    await scheduler.stop()
    assert asyncio.all_tasks() == before
    assert run.cancelled == 2
    assert scheduler.keys == set()


async def test_a_failing_run_does_not_end_the_schedule() -> None:
    """A run function that raises is logged and the check keeps being scheduled."""
    calls = 0

    async def broken(target: Target, check: CheckSettings) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    scheduler = Scheduler(broken, concurrency=1, spread=0)
    scheduler.add(make_target("a"))

    async def body() -> None:
        await wait_until(lambda: calls >= 3)
    await running(scheduler, body)
    assert scheduler.keys == set()


async def test_adding_a_target_twice_does_not_double_its_checks() -> None:
    """add() of an already scheduled target keeps one schedule per check: one run per interval, not two."""
    run = FakeRun()
    scheduler = Scheduler(run, concurrency=4, spread=0)
    target = make_target("a", interval=10.0)
    scheduler.add(target)
    scheduler.add(target)

    async def body() -> None:
        await wait_until(lambda: run.calls[("a", "smtp")] == 1)
        assert scheduler.keys == {("a", "smtp")}
        await asyncio.sleep(0.05)
    await running(scheduler, body)
    assert run.calls[("a", "smtp")] == 1


async def test_default_spread_scatters_first_runs_over_the_interval() -> None:
    """Without `spread` the first runs of many checks start at different moments within the first interval."""
    run = FakeRun()
    scheduler = Scheduler(run, concurrency=50)
    start = asyncio.get_running_loop().time()
    for i in range(20):
        scheduler.add(make_target(f"t{i}", interval=0.2))

    async def body() -> None:
        await wait_until(lambda: len(run.calls) == 20)
    await running(scheduler, body)
    firsts: dict[tuple[str, str], float] = {}
    for key, at in run.starts:
        firsts.setdefault(key, at - start)
    assert len(firsts) == 20
    # 20 uniform draws over 0.2 s all landing within 0.02 s of each other has a chance below 1e-18.
    assert max(firsts.values()) - min(firsts.values()) > 0.02


async def test_spread_caps_the_start_window() -> None:
    """`spread` shorter than the interval puts every first run within that window, not across the interval."""
    run = FakeRun()
    scheduler = Scheduler(run, concurrency=50, spread=0.05)
    start = asyncio.get_running_loop().time()
    for i in range(20):
        scheduler.add(make_target(f"t{i}", interval=30.0))

    async def body() -> None:
        await wait_until(lambda: len(run.calls) == 20)
    await running(scheduler, body)
    assert all(calls == 1 for calls in run.calls.values())
    # Spread over the whole 30 s interval instead, 20 first runs all inside 0.05 s would have a chance of 1e-57.
    # (uvloop's timers have millisecond resolution.)
    assert max(at - start for _, at in run.starts) <= 0.05 + (1e-6 if fake_time() else 0.005)


async def test_a_target_removed_and_added_again_keeps_one_schedule() -> None:
    """Reload removes a changed target and adds it back: its old due time must not run it a second time."""
    run = FakeRun()
    scheduler = Scheduler(run, concurrency=4, spread=0)
    scheduler.add(make_target("a", interval=0.2))

    async def body() -> None:
        await wait_until(lambda: run.calls[("a", "smtp")] == 1)
        await scheduler.remove("a")
        scheduler.add(make_target("a", interval=0.2))
        await asyncio.sleep(0.3)  # the old schedule's next slot (0.2 s) and the new one's first two runs pass
    await running(scheduler, body)
    starts = [at for key, at in run.starts if key == ("a", "smtp")]
    # Runs of one check are never closer than an interval apart, except the re-added schedule's first run.
    assert len(starts) == 3
    assert starts[2] - starts[1] == pytest.approx(0.2, abs=1e-5) if fake_time() else starts[2] - starts[1] > 0.15


@pytest.mark.looptime(False)  # a real stall: fake loop time does not move while the loop is blocked
async def test_a_stalled_loop_skips_missed_slots_without_a_burst() -> None:
    """After the event loop was blocked for several intervals, a check runs once, not once per missed slot."""
    import time

    run = FakeRun()
    scheduler = Scheduler(run, concurrency=4, spread=0)
    scheduler.add(make_target("a", interval=0.05))

    async def body() -> None:
        await wait_until(lambda: run.calls[("a", "smtp")] == 1)
        time.sleep(0.3)  # blocks the loop: six slots pass
        await asyncio.sleep(0.03)
        # One catch-up run (a second if the next slot came round meanwhile on a slow machine), not a burst of six.
        assert 2 <= run.calls[("a", "smtp")] <= 3
    await running(scheduler, body)
