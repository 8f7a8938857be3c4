"""The HTTP side's duty cycle: bulk jobs run one at a time and leave the rest of the time to the probes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from monitor.web.budget import DutyCycle


class FakeTime:
    """A clock that only moves when a job says it worked or the duty cycle sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _job(time: FakeTime, seconds: float, log: list[float]) -> Callable[[], Awaitable[float]]:
    async def work() -> float:
        log.append(time.now)
        time.now += seconds
        return seconds
    return work


def test_a_job_after_a_job_waits_for_the_rest_of_its_cycle() -> None:
    time = FakeTime()
    cycle = DutyCycle(share=0.25, clock=time.clock, sleep=time.sleep)
    starts: list[float] = []

    async def main() -> None:
        await cycle.run(_job(time, 0.1, starts))
        await cycle.run(_job(time, 0.1, starts))

    asyncio.run(main())
    # 0.1 s of work at a 25 % share leaves 0.3 s to everyone else before the next job.
    assert starts[1] - starts[0] == pytest.approx(0.4)
    assert time.slept == [pytest.approx(0.3)]


def test_the_first_job_starts_at_once() -> None:
    time = FakeTime()
    cycle = DutyCycle(share=0.25, clock=time.clock, sleep=time.sleep)
    starts: list[float] = []
    asyncio.run(cycle.run(_job(time, 0.05, starts)))
    assert starts == [100.0] and time.slept == []


def test_concurrent_callers_never_overlap_and_share_is_kept() -> None:
    time = FakeTime()
    cycle = DutyCycle(share=0.5, clock=time.clock, sleep=time.sleep)
    starts: list[float] = []

    async def main() -> list[float]:
        return await asyncio.gather(*(cycle.run(_job(time, 0.2, starts)) for _ in range(5)))

    assert asyncio.run(main()) == [0.2] * 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [pytest.approx(0.4)] * 4  # 0.2 s of work + 0.2 s of rest: half the time


def test_a_failing_job_still_costs_its_time() -> None:
    time = FakeTime()
    cycle = DutyCycle(share=0.25, clock=time.clock, sleep=time.sleep)

    async def fails() -> None:
        time.now += 0.1
        raise RuntimeError("boom")

    async def main() -> None:
        with pytest.raises(RuntimeError):
            await cycle.run(fails)
        await cycle.run(_job(time, 0.0, []))

    asyncio.run(main())
    assert time.slept == [pytest.approx(0.3)]


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        DutyCycle(share=share)
