"""A tiny coroutine scheduler for block requests.

Every driver method is an ``async def``.  A request that never waits completes on its first
``send(None)``, so the ordinary synchronous path costs a generator step and nothing more.  A
request can suspend on a ``Future``: a blkdebug breakpoint parks it until ``resume``, a qcow2
request waits for a lock another request holds.  asyncio is deliberately not used: we need to
decide exactly when a suspended request runs again, the way QEMU re-enters a coroutine.

Completion order of asynchronous requests (``aio_read``/``aio_write``) is observable in
qemu-io's output, so the scheduler keeps a *virtual clock*.  Drivers charge each host I/O to the
running task (``charge``); an asynchronous request completes at its start time plus what it was
charged, and its completion callback runs only when someone polls past that time: a later
synchronous request that had to wait for I/O, ``aio_flush``, ``sleep``, or the end of the
program.  A request that completed without any I/O is reported from a last-in-first-out list of
"bottom halves" at the next poll, as QEMU's one-shot BHs are.  With a flush (fdatasync) costing
far more than a read, this reproduces what qemu-io prints in practice, e.g. a writethrough
``aio_write`` finishing after a later ``aio_read``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

# Virtual costs in microseconds (only their ratios matter).
COST_READ = 20.0
COST_WRITE = 25.0
COST_FLUSH = 2000.0
COST_PER_MIB = 250.0
# I/O finishing within this much virtual time of each other completes in one pass of the
# thread pool's completion handler.
POOL_PASS_WINDOW = 100.0


class Future:
    """Something a coroutine can wait for; ``set_result`` makes its waiters runnable."""

    __slots__ = ("done", "value", "waiters")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.waiters: list[Task] = []

    def __await__(self) -> Generator[Future, None, Any]:
        if not self.done:
            yield self
        return self.value

    def set_result(self, value: Any = None) -> None:
        self.done = True
        self.value = value
        waiters, self.waiters = self.waiters, []
        for task in waiters:
            task.scheduler.make_ready(task)


class Task:
    """One request in flight: a coroutine plus what it has cost so far."""

    __slots__ = (
        "coro",
        "scheduler",
        "on_done",
        "clock",
        "charged",
        "done",
        "result",
        "error",
        "waiting_on",
        "name",
        "seq",
    )

    _ids = itertools.count()

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        scheduler: Scheduler,
        on_done: Callable[[Task], None] | None,
        name: str = "",
    ) -> None:
        self.coro = coro
        self.scheduler = scheduler
        self.on_done = on_done
        self.clock = scheduler.now
        self.charged = False
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.waiting_on: Future | None = None
        self.name = name
        self.seq = next(Task._ids)

    def step(self) -> None:
        sched = self.scheduler
        outer = sched.current
        sched.current = self
        self.clock = max(self.clock, sched.now)
        try:
            future = self.coro.send(None)
        except StopIteration as stop:
            self.done = True
            self.result = stop.value
        except FatalError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the completion callback
            self.done = True
            self.error = exc
        else:
            self.waiting_on = future
            future.waiters.append(self)
        finally:
            sched.current = outer
        if self.done:
            sched.task_finished(self)


class FatalError(Exception):
    """An error that ends the program (qemu-io calls exit() from inside the driver)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Deadlock(Exception):
    """A synchronous request is suspended and nothing left can ever resume it."""


class Scheduler:
    def __init__(self) -> None:
        self.now = 0.0
        self.current: Task | None = None
        self._ready: deque[Task] = deque()
        self._bottom_halves: list[Task] = []  # completed without I/O; run LIFO
        self._completions: list[tuple[float, int, Task]] = []  # heap by virtual time
        self.in_flight: set[Task] = set()

    # -- accounting -------------------------------------------------------------------
    def charge(self, cost: float) -> None:
        task = self.current
        if task is not None:
            task.clock += cost
            task.charged = True

    # -- running ----------------------------------------------------------------------
    def make_ready(self, task: Task) -> None:
        task.waiting_on = None
        self._ready.append(task)

    def run_ready(self) -> None:
        while self._ready:
            self._ready.popleft().step()

    def run_sync(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a request to completion, like a qemu-io synchronous command."""
        task = Task(coro, self, None, "sync")
        task.step()
        if not task.done:
            self.run_ready()
            if not task.done:
                task.coro.close()
                raise Deadlock()
        if task.charged:
            # The request had to wait for I/O: the event loop ran meanwhile.
            self.now = max(self.now, task.clock)
            self.poll()
        if task.error is not None:
            raise task.error
        return task.result

    def spawn(
        self, coro: Coroutine[Any, Any, Any], on_done: Callable[[Task], None], name: str = ""
    ) -> Task:
        """Start an asynchronous request; ``on_done`` runs when it is reported complete."""
        task = Task(coro, self, on_done, name)
        self.in_flight.add(task)
        task.step()
        return task

    def task_finished(self, task: Task) -> None:
        if task.on_done is None:
            return
        if task.charged:
            heapq.heappush(self._completions, (task.clock, task.seq, task))
        else:
            self._bottom_halves.append(task)

    def _complete(self, task: Task) -> None:
        self.in_flight.discard(task)
        assert task.on_done is not None
        task.on_done(task)

    def poll(self) -> None:
        """Report every request that has completed by the current virtual time."""
        self.run_ready()
        while self._bottom_halves:
            self._complete(self._bottom_halves.pop())
        self._report_passes(self.now + POOL_PASS_WINDOW)

    def _report_passes(self, limit: float | None) -> None:
        """Report completions up to ``limit`` (all when None) the way QEMU's thread pool does.

        Requests whose I/O ends within POOL_PASS_WINDOW of the earliest one are finished in
        one pass of the pool's completion handler, which walks its list newest request first:
        in practice qemu-io usually reports a burst of small aio requests in reverse order of
        submission (the real order depends on thread timing and varies between runs).
        """
        while self._completions and (limit is None or self._completions[0][0] <= limit):
            edge = self._completions[0][0] + POOL_PASS_WINDOW
            batch: list[tuple[float, int, Task]] = []
            while self._completions and self._completions[0][0] <= edge:
                batch.append(heapq.heappop(self._completions))
            self.now = max(self.now, batch[-1][0]) if limit is None else self.now
            for _clock, _seq, task in sorted(batch, key=lambda entry: -entry[1]):
                self._complete(task)

    def advance(self, microseconds: float) -> None:
        self.now += microseconds
        self.poll()

    def drain(self) -> bool:
        """Complete everything that can complete (``aio_flush``, close, exit).

        Returns False when requests remain suspended (at breakpoints) forever.
        """
        self.run_ready()
        while self._bottom_halves or self._completions:
            self.run_ready()
            while self._bottom_halves:
                self._complete(self._bottom_halves.pop())
            self._report_passes(None)
        return not any(not t.done for t in self.in_flight)

    def suspended(self) -> list[Task]:
        return [t for t in self.in_flight if not t.done]


class CoMutex:
    """A coroutine lock; waiters get it in FIFO order."""

    __slots__ = ("locked", "_waiters")

    def __init__(self) -> None:
        self.locked = False
        self._waiters: deque[Future] = deque()

    async def acquire(self) -> None:
        if not self.locked:
            self.locked = True
            return
        fut = Future()
        self._waiters.append(fut)
        await fut  # ownership is handed over by release()

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set_result()
        else:
            self.locked = False

    async def __aenter__(self) -> CoMutex:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


# One scheduler per process: qemu-io (and qio) run a single event loop.
scheduler = Scheduler()
