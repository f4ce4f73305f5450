"""Request tracking, padding and serialisation for nodes with a request alignment.

A node whose ``request_alignment`` is larger than one byte pads unaligned requests to whole
aligned blocks, as QEMU's block/io.c does: a read simply reads more, a write first reads the
partial head and tail blocks (read-modify-write) and writes whole blocks.  While a padded write
is between its read and its write, another request touching the same blocks must not slip in,
so such a write is *serialising*: it waits for the overlapping requests in flight, and requests
that overlap it wait for it.  Only nodes with an alignment track their requests; at the others
no request can ever be padded, so there is nothing to serialise.
"""

from __future__ import annotations

from dataclasses import dataclass

from qio.block.coroutine import Future


@dataclass(eq=False, slots=True)
class TrackedRequest:
    """One request in flight at a node (QEMU's BdrvTrackedRequest)."""

    offset: int
    length: int
    overlap_offset: int
    overlap_end: int
    serialising: bool = False
    waiting_for: TrackedRequest | None = None
    finished: Future | None = None  # created when another request waits for this one

    def overlaps(self, offset: int, end: int) -> bool:
        return offset < self.overlap_end and self.overlap_offset < end


@dataclass(frozen=True, slots=True)
class Padding:
    """How an unaligned request is widened to whole blocks (QEMU's BdrvRequestPadding).

    ``merge_reads``: the padded request is exactly one read buffer (one block, or two blocks
    with both a head and a tail), so head and tail are read in one request.
    """

    start: int  # aligned start of the padded request
    end: int  # aligned end
    head: int  # bytes added in front
    tail: int  # bytes added behind
    align: int
    buf_len: int
    merge_reads: bool

    @classmethod
    def of(cls, offset: int, length: int, align: int) -> Padding | None:
        head = offset % align
        tail = -(offset + length) % align
        if not head and not tail:
            return None
        total = head + length + tail
        buf_len = 2 * align if total > align and head and tail else align
        return cls(
            offset - head, offset + length + tail, head, tail, align, buf_len, total == buf_len
        )


class RequestTracker:
    """The requests in flight at one node, and the waiting that serialisation implies."""

    __slots__ = ("requests", "serialising_in_flight")

    def __init__(self) -> None:
        self.requests: list[TrackedRequest] = []
        self.serialising_in_flight = 0

    def begin(self, offset: int, length: int) -> TrackedRequest:
        req = TrackedRequest(offset, length, offset, offset + length)
        self.requests.append(req)
        return req

    def end(self, req: TrackedRequest) -> None:
        self.requests.remove(req)
        if req.serialising:
            self.serialising_in_flight -= 1
        if req.finished is not None:
            req.finished.set_result()

    async def make_serialising(self, req: TrackedRequest, align: int) -> None:
        if not req.serialising:
            req.serialising = True
            self.serialising_in_flight += 1
        start = req.offset - req.offset % align
        end = -(-(req.offset + req.length) // align) * align
        req.overlap_offset = min(req.overlap_offset, start)
        req.overlap_end = max(req.overlap_end, end)
        await self._wait_conflicts(req)

    async def wait_serialising(self, req: TrackedRequest) -> None:
        if self.serialising_in_flight:
            await self._wait_conflicts(req)

    async def _wait_conflicts(self, req: TrackedRequest) -> None:
        while True:
            other = self._conflicting(req)
            if other is None:
                return
            if other.finished is None:
                other.finished = Future()
            req.waiting_for = other
            await other.finished
            req.waiting_for = None

    def _conflicting(self, req: TrackedRequest) -> TrackedRequest | None:
        for other in self.requests:
            if other is req or (not other.serialising and not req.serialising):
                continue
            if not other.overlaps(req.overlap_offset, req.overlap_end):
                continue
            # A request already waiting (directly or not) for us would deadlock with us.
            if other.waiting_for is None:
                return other
        return None
