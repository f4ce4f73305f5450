"""The request scheduler's model of qemu-io's thread pool and event loop."""

from __future__ import annotations

from qio.block.coroutine import COST_FLUSH, COST_READ, Scheduler, Task
from qio.commands.misc import sleep_duration_ns


def _request(sched: Scheduler, cost: float):  # type: ignore[no-untyped-def]
    async def body() -> None:
        if cost:
            sched.charge(cost)

    return body()


def run_burst(costs: list[float]) -> list[int]:
    sched = Scheduler()
    order: list[int] = []
    for index, cost in enumerate(costs):

        def done(task: Task, index: int = index) -> None:
            order.append(index)

        sched.spawn(_request(sched, cost), done)
    sched.drain()
    return order


def test_a_burst_of_small_requests_completes_newest_first() -> None:
    assert run_burst([COST_READ, COST_READ, COST_READ]) == [2, 1, 0]


def test_requests_needing_a_flush_complete_after_plain_reads() -> None:
    assert run_burst([COST_READ + COST_FLUSH, COST_READ]) == [1, 0]


def test_requests_without_io_complete_first_newest_first() -> None:
    assert run_burst([COST_READ, 0, 0]) == [2, 1, 0]


def test_sleep_waits_like_qemu_io_timer() -> None:
    assert sleep_duration_ns(10, 1_700_000_000_000_000_000) == 10_000_000
    # ms * 1000000 overflows int64 and wraps into the past: the timer fires at once
    assert sleep_duration_ns((1 << 63) - 1, 1_700_000_000_000_000_000) == 0
