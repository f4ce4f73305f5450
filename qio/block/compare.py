"""Finding where two byte buffers differ, at C speed.

Equal stretches are skipped with slice comparisons (memcmp); inside a block known to differ,
the first or last differing byte falls out of the XOR of the two blocks read as big integers.
"""

from __future__ import annotations

from collections.abc import Iterator

BLOCK = 64 << 10
SECTOR = 512

Bytes = bytes | bytearray | memoryview


def _comparable(x: Bytes) -> Bytes:
    """The object itself for a view of a whole bytes/bytearray.

    ``==`` between two memoryviews unpacks them byte by byte (about 100 times slower than
    memcmp); bytes and bytearray compare with memcmp.
    """
    if isinstance(x, memoryview):
        obj = x.obj
        if isinstance(obj, bytes | bytearray) and len(obj) == x.nbytes:
            return obj
    return x


def equal(a: Bytes, b: Bytes) -> bool:
    """``a == b`` at memcmp speed whatever the buffer types."""
    a, b = _comparable(a), _comparable(b)
    if isinstance(a, bytearray):
        return a == b  # (a bytearray compares with any buffer through memcmp)
    if isinstance(b, bytearray):
        return b == a
    if isinstance(a, memoryview) or isinstance(b, memoryview):
        n = len(a)
        step = 1 << 20  # bounded copies of the views
        return len(b) == n and all(
            bytes(a[pos : pos + step]) == bytes(b[pos : pos + step]) for pos in range(0, n, step)
        )
    return a == b


def first_difference(a: Bytes, b: Bytes) -> int | None:
    """Index of the first byte where ``a`` and ``b`` (equal lengths) differ; None if equal."""
    if equal(a, b):
        return None
    n = len(a)
    pos = 0
    while pos < n:
        end = min(n, pos + BLOCK)
        if not equal(a[pos:end], b[pos:end]):
            return pos + _first_in(a[pos:end], b[pos:end])
        pos = end
    return None


def _xor(a: Bytes, b: Bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def _first_in(a: Bytes, b: Bytes) -> int:
    """First differing index of two blocks known to differ."""
    return len(a) - 1 - (_xor(a, b).bit_length() - 1) // 8


def _last_in(a: Bytes, b: Bytes) -> int:
    """Last differing index of two blocks known to differ."""
    x = _xor(a, b)
    return len(a) - 1 - ((x & -x).bit_length() - 1) // 8


def differing_sectors(a: Bytes, b: Bytes, offset: int) -> Iterator[tuple[int, int, int]]:
    """(sector, first, last) for every 512-byte sector where ``a`` and ``b`` differ.

    ``a`` and ``b`` hold the bytes at image offset ``offset``; sectors are counted from the
    start of the image and ``first``/``last`` are the image offsets of the first and last
    differing byte inside the sector (clipped to the buffers).
    """
    n = len(a)
    pos = 0
    while pos < n:
        end = min(n, pos + BLOCK)
        if not equal(a[pos:end], b[pos:end]):
            yield from _sectors_in(a, b, offset, pos, end)
        pos = end


def _sectors_in(
    a: Bytes, b: Bytes, offset: int, pos: int, end: int
) -> Iterator[tuple[int, int, int]]:
    while pos < end:
        sector = (offset + pos) // SECTOR
        stop = min(end, (sector + 1) * SECTOR - offset)
        sa, sb = a[pos:stop], b[pos:stop]
        if not equal(sa, sb):
            yield sector, offset + pos + _first_in(sa, sb), offset + pos + _last_in(sa, sb)
        pos = stop


def sector_runs(a: bytes | bytearray, b: bytes | bytearray) -> list[tuple[int, int, bool]]:
    """qemu-img's compare_buffers, repeated to the end of the buffers: the maximal runs of
    512-byte sectors (from the buffer start) that all differ, or all match, as
    (start, length, differ).

    Equal buffers and equal 64 KiB blocks are recognised by whole comparisons (memcmp);
    only blocks that differ are looked at sector by sector.
    """
    n = len(a)
    if a == b:
        return [(0, n, False)] if n else []
    runs: list[tuple[int, int, bool]] = []

    def add(start: int, end: int, differ: bool) -> None:
        if runs and runs[-1][2] == differ and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end - runs[-1][0], differ)
        else:
            runs.append((start, end - start, differ))

    pos = 0
    while pos < n:
        end = min(n, pos + BLOCK)
        if a[pos:end] == b[pos:end]:
            add(pos, end, False)
            pos = end
            continue
        while pos < end:
            stop = min(end, pos + SECTOR)
            add(pos, stop, a[pos:stop] != b[pos:stop])
            pos = stop
    return runs
