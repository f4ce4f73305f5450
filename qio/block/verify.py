"""Comparing the two children of a blkverify node over a range (the ``verify`` command).

Memory stays bounded (one chunk of each child at a time) and sparse images are fast: where
block status says both children read as zeros, nothing is read.  Differences are reported as
extents: runs of consecutive 512-byte sectors that differ, from the first differing byte of the
first sector to the last differing byte of the last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qio.block.compare import differing_sectors
from qio.block.node import BlockNode
from qio.results import MismatchExtent, VerifyResult

CHUNK = 4 << 20


class ExtentBuilder:
    """Merges differing sectors, fed in offset order, into extents."""

    def __init__(self) -> None:
        self.extents: list[MismatchExtent] = []
        self._start = -1
        self._end = -1  # one past the last differing byte
        self._sector = -2  # the last differing sector

    def add(self, sector: int, first: int, last: int) -> None:
        if sector == self._sector + 1 and self._start >= 0:
            self._end = last + 1
        else:
            self.close()
            self._start, self._end = first, last + 1
        self._sector = sector

    def close(self) -> None:
        if self._start >= 0:
            self.extents.append(MismatchExtent(self._start, self._end - self._start))
        self._start = self._end = -1
        self._sector = -2


async def _zero_run(node: BlockNode, offset: int, length: int) -> tuple[bool, int]:
    """(reads as zeros, for how many bytes) from block status; past the end: zeros."""
    status = await node.block_status(offset, length, want_zero=True)
    if status.length == 0:
        return True, length
    return status.zero, status.length


async def compare_children(
    raw: BlockNode,
    test: BlockNode,
    offset: int,
    length: int,
    stop: Callable[[], bool] = lambda: False,
) -> VerifyResult:
    """Compare ``raw`` and ``test`` over the range; ``stop()`` is asked between chunks (the
    shell's Ctrl-C), and a stopped comparison reports what it covered."""
    result = VerifyResult(offset, length)
    builder = ExtentBuilder()
    t0 = time.perf_counter()
    raw_buf = bytearray(min(CHUNK, length))
    test_buf = bytearray(min(CHUNK, length))
    pos, end = offset, offset + length
    while pos < end:
        if stop():
            result.cancelled = True
            result.length = pos - offset
            break
        want = min(CHUNK, end - pos)
        raw_zero, raw_n = await _zero_run(raw, pos, want)
        test_zero, test_n = await _zero_run(test, pos, want)
        n = max(1, min(want, raw_n, test_n))
        if raw_zero and test_zero:
            result.bytes_skipped += n
            pos += n
            continue
        rv, tv = memoryview(raw_buf)[:n], memoryview(test_buf)[:n]
        await raw.preadv(pos, rv)
        await test.preadv(pos, tv)
        for sector, first, last in differing_sectors(rv, tv, pos):
            builder.add(sector, first, last)
        result.bytes_compared += n
        pos += n
    builder.close()
    result.extents = builder.extents
    result.seconds = time.perf_counter() - t0
    return result
