"""A tiny coroutine scheduler for block requests: a discrete-event model of QEMU's event loop.

Every driver method is an ``async def``.  A request that never waits completes on its first
``send(None)``, so the ordinary synchronous path costs a generator step and nothing more.  A
request can suspend on a ``Future``: a blkdebug breakpoint parks it until ``resume``, a qcow2
request waits for a lock another request holds or for an allocation in flight.  asyncio is
deliberately not used: we decide exactly when a suspended request runs again, the way QEMU
re-enters a coroutine.

What asynchronous requests (``aio_read``/``aio_write``) print, and in which order, depends on
how they interleave, so the scheduler keeps a *virtual clock*.  In QEMU every host I/O of the
file driver goes to a thread pool and the request coroutine yields until it completes.  Here a
driver performs the I/O immediately and then calls ``await scheduler.io(cost)``:

* while asynchronous requests are alive, that suspends the request until the virtual clock
  reaches now + cost, and other requests run meanwhile (earliest completion first) — so an
  ``aio_read`` issued behind an ``aio_write`` still in flight sees what QEMU's would see;
* otherwise (plain synchronous commands, the common case) nothing suspends: the cost is only
  added up, and costs nothing but an addition.

A request that completed without ever suspending is reported from a last-in-first-out list of
"bottom halves" at the next poll, as QEMU's one-shot BHs are; one that suspended is reported
the moment it completes.  With a flush (fdatasync) costing far more than a read, this
reproduces what qemu-io prints in practice.

A request may also give way to the event loop without waiting for anything (``reschedule``,
QEMU's ``aio_co_schedule(self)`` + yield, what blkdebug does before failing a request): it
continues at the next poll, first in first out among such requests, from one bottom half that
takes its place among the others (QEMU's co_schedule_bh).

A ``FatalError`` (qemu-io's exit() inside a driver, e.g. a blkverify mismatch) ends the program
at once when a synchronous request raises it; an asynchronous request's ends it when its
completion is processed, the moment QEMU's coroutine would have reached the exit().
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

# Virtual costs in microseconds (only their ratios matter).
COST_READ = 20.0
COST_WRITE = 25.0
COST_FLUSH = 2000.0
COST_PER_MIB = 250.0


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


_DONE = Future()
_DONE.done = True


class Task:
    """One request in flight."""

    __slots__ = (
        "coro",
        "scheduler",
        "on_done",
        "clock",
        "charged",
        "suspended",
        "done",
        "result",
        "error",
        "waiting_on",
        "name",
        "is_aio",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        scheduler: Scheduler,
        on_done: Callable[[Task], None] | None,
        name: str = "",
        is_aio: bool = False,
    ) -> None:
        self.coro = coro
        self.scheduler = scheduler
        self.on_done = on_done
        self.clock = scheduler.now  # this request's own clock on the synchronous path
        self.charged = False  # did host I/O (so qemu-io would have polled the event loop)
        self.suspended = False  # ever yielded to the scheduler
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.waiting_on: Future | None = None
        self.name = name
        self.is_aio = is_aio

    def step(self) -> None:
        sched = self.scheduler
        outer = sched.current
        sched.current = self
        try:
            future = self.coro.send(None)
        except StopIteration as stop:
            self.done = True
            self.result = stop.value
        except FatalError as exc:
            if self.on_done is None:
                raise  # a synchronous request: the program ends now
            self.done = True  # an asynchronous one: when its completion is processed
            self.error = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the completion callback
            self.done = True
            self.error = exc
        else:
            self.suspended = True
            self.waiting_on = future
            future.waiters.append(self)
        finally:
            sched.current = outer
        if self.done:
            sched.task_finished(self)


class FatalError(Exception):
    """An error that ends the program (qemu-io calls exit() from inside the driver)."""

    def __init__(self, message: str, status: int = 1, abort: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.abort = abort  # QEMU aborts (assertion, &error_abort): SIGABRT, stdout lost


class Deadlock(Exception):
    """A synchronous request is suspended and nothing left can ever resume it."""


class _CoScheduleBH:
    """The bottom half that wakes rescheduled coroutines (QEMU's co_schedule_bh)."""

    __slots__ = ()


_CO_SCHEDULE_BH = _CoScheduleBH()


class _PoolRequest:
    """A host I/O handed to the (modelled) worker-thread pool."""

    __slots__ = ("seq", "done_at", "future")

    def __init__(self, seq: int, done_at: float, future: Future) -> None:
        self.seq = seq
        self.done_at = done_at
        self.future = future


class Scheduler:
    """QEMU's AioContext in miniature: ready coroutines, bottom halves, a worker pool.

    Virtual time advances while the "main thread" works (``COMMAND_COST`` per command) and
    when it blocks waiting for I/O.  A poll first runs the bottom halves, newest first, as
    aio_bh_poll does; the worker pool's completion handler is one of them, scheduled when its
    first request finished, and it reports the finished requests newest-submitted first (the
    pool keeps them on a list it inserts at the head of).
    """

    COMMAND_COST = 100.0
    SUBMIT_COST = 1.0

    def __init__(self) -> None:
        self.now = 0.0
        self.current: Task | None = None
        self._ready: deque[Task] = deque()
        # (scheduled at, seq, what): a completed task, None for the pool's completion handler,
        # or the co_schedule bottom half.
        self._bottom_halves: list[tuple[float, int, Task | _CoScheduleBH | None]] = []
        self._rescheduled: deque[Future] = deque()  # waiting for the co_schedule bottom half
        self._co_schedule_pending = False
        self._pool: list[_PoolRequest] = []
        self._pool_bh_scheduled = False
        self._seq = itertools.count()
        self.in_flight: set[Task] = set()  # asynchronous requests not yet reported
        self._aio_alive = 0  # asynchronous requests still running

    # -- host I/O ----------------------------------------------------------------------------
    def io(self, cost: float) -> Future:
        """Account for a host I/O the caller just did; await the result."""
        task = self.current
        if task is None:
            return _DONE
        task.charged = True
        if task.is_aio or self._aio_alive:
            # Submitting takes the main thread a moment, so requests submitted one after
            # the other also finish one after the other.
            self.now += self.SUBMIT_COST
            fut = Future()
            self._pool.append(_PoolRequest(next(self._seq), self.now + cost, fut))
            return fut
        self.now += cost
        return _DONE

    def charge(self, cost: float) -> None:
        """For callers that cannot suspend: count the cost only."""
        task = self.current
        if task is not None:
            task.charged = True
            self.now += cost

    def command_started(self) -> None:
        """The main thread spends time on every command."""
        self.now += self.COMMAND_COST

    # -- running ---------------------------------------------------------------------------
    def make_ready(self, task: Task) -> None:
        task.waiting_on = None
        self._ready.append(task)

    def run_ready(self) -> None:
        while self._ready:
            self._ready.popleft().step()

    def _schedule_pool_bh(self) -> None:
        if self._pool_bh_scheduled:
            return
        done = [r.done_at for r in self._pool if r.done_at <= self.now]
        if done:
            self._pool_bh_scheduled = True
            self._bottom_halves.append((min(done), next(self._seq), None))

    def _run_pool(self) -> None:
        """thread_pool_completion_bh: finished requests, newest submitted first."""
        self._pool_bh_scheduled = False
        while True:
            finished = [r for r in self._pool if r.done_at <= self.now]
            if not finished:
                return
            request = max(finished, key=lambda r: r.seq)
            self._pool.remove(request)
            request.future.set_result()
            self.run_ready()

    def poll(self, blocking: bool = False) -> bool:
        """One aio_poll: True if anything happened."""
        progress = False
        while True:
            if self._ready:
                self.run_ready()
                progress = True
            self._schedule_pool_bh()
            if self._bottom_halves:
                batch = sorted(self._bottom_halves, key=lambda b: (b[0], b[1]), reverse=True)
                self._bottom_halves = []
                for _when, _seq, task in batch:
                    if task is None:
                        self._run_pool()
                    elif isinstance(task, _CoScheduleBH):
                        self._wake_rescheduled()
                    else:
                        self._complete(task)
                    self.run_ready()
                return True
            if progress or not blocking:
                return progress
            if not self._pool:
                return False
            self.now = max(self.now, min(r.done_at for r in self._pool))

    def reschedule(self) -> Future:
        """Await this to give way to the event loop and continue at its next iteration."""
        fut = Future()
        self._rescheduled.append(fut)
        if not self._co_schedule_pending:
            self._co_schedule_pending = True
            self._bottom_halves.append((self.now, next(self._seq), _CO_SCHEDULE_BH))
        return fut

    def _wake_rescheduled(self) -> None:
        self._co_schedule_pending = False
        waiting, self._rescheduled = self._rescheduled, deque()
        for fut in waiting:
            fut.set_result()

    def run_until(self, condition: Callable[[], bool]) -> bool:
        """Poll (blocking) until ``condition()`` holds; False if it never can."""
        while not condition():
            if not self.poll(blocking=True):
                return False
        return True

    def run_sync(self, coro: Coroutine[Any, Any, Any], always_poll: bool = False) -> Any:
        """Run a request to completion, like a qemu-io synchronous command.

        ``always_poll``: the command submits an asynchronous request and runs the main loop
        until it completes (qemu-io's readv/writev), so pending completions are reported
        even when the request itself finished at once.
        """
        task = Task(coro, self, None, "sync")
        task.step()
        if not task.done:
            if not self.run_until(lambda: task.done):
                task.coro.close()
                raise Deadlock()
        elif task.charged or always_poll:
            # The request waited for host I/O: qemu-io's event loop ran meanwhile.
            self.poll()
        if task.error is not None:
            raise task.error
        return task.result

    def spawn(
        self, coro: Coroutine[Any, Any, Any], on_done: Callable[[Task], None], name: str = ""
    ) -> Task:
        """Start an asynchronous request; ``on_done`` runs when it is reported complete."""
        task = Task(coro, self, on_done, name, is_aio=True)
        self.in_flight.add(task)
        self._aio_alive += 1
        task.step()
        return task

    def task_finished(self, task: Task) -> None:
        if task.is_aio:
            self._aio_alive -= 1
        if task.on_done is None:
            return
        if task.suspended:
            self._complete(task)
        else:
            self._bottom_halves.append((self.now, next(self._seq), task))

    def _complete(self, task: Task) -> None:
        self.in_flight.discard(task)
        if isinstance(task.error, FatalError):
            raise task.error
        assert task.on_done is not None
        task.on_done(task)

    def advance(self, microseconds: float) -> None:
        """Let virtual time pass (``sleep``): everything due by then completes."""
        target = self.now + microseconds
        while True:
            self.poll()
            due = [r.done_at for r in self._pool if r.done_at <= target]
            if not due:
                break
            self.now = max(self.now, min(due))
        self.now = max(self.now, target)
        self.poll()

    def drain(self) -> bool:
        """Complete everything that can complete (``aio_flush``, close, exit).

        Returns False when requests remain suspended (at breakpoints) forever.
        """
        while self.poll(blocking=True):
            pass
        return not self.suspended()

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
