"""Write data that repeats with a period, carried through the block layer without being built.

``write -P 0xab 0 256M`` is one request in qemu-io, which fills a 256 MiB buffer for it.  qio
sends the same single request, but its data is a ``RepeatedBytes``: a length, a phase and one
prebuilt block of the pattern (a few MiB).  Slicing it is free, and the file driver hands the
kernel a list of iovecs that all point at that one block, so a write of any length moves at
page-cache speed in bounded memory.  Drivers that need real bytes (compression, NBD, a
copy-on-write merge) call ``bytes()`` on the (small) piece they handle.
"""

from __future__ import annotations

BLOCK = 4 << 20  # bytes of the prebuilt block (a whole number of periods)
IOV_LIMIT = 512  # iovecs per host call (below IOV_MAX, 1024)


class RepeatedBytes:
    """``length`` bytes of ``period`` repeated, starting ``phase`` bytes into a period."""

    __slots__ = ("block", "period", "phase", "length")

    def __init__(self, block: bytes, period: int, length: int, phase: int = 0) -> None:
        self.block = block  # a whole number of periods
        self.period = period
        self.phase = phase % period
        self.length = length

    @classmethod
    def of(cls, period: bytes, length: int, phase: int = 0) -> RepeatedBytes:
        reps = max(1, BLOCK // len(period))
        return cls(period * reps, len(period), length, phase)

    def __len__(self) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        return self.length

    def __getitem__(self, index: slice) -> RepeatedBytes:
        start, stop, step = index.indices(self.length)
        if step != 1:
            raise ValueError("RepeatedBytes slices have a step of 1")
        return RepeatedBytes(self.block, self.period, max(0, stop - start), self.phase + start)

    def iovecs(self, limit: int = IOV_LIMIT) -> list[memoryview]:
        """Views of the block covering the first bytes of the data (all of it unless more
        than ``limit`` views would be needed)."""
        view = memoryview(self.block)
        out: list[memoryview] = []
        pos = 0
        phase = self.phase
        while pos < self.length and len(out) < limit:
            n = min(len(view) - phase, self.length - pos)
            out.append(view[phase : phase + n])
            pos += n
            phase = 0
        return out

    def __bytes__(self) -> bytes:
        return b"".join(self.iovecs(limit=self.length))

    def tobytes(self) -> bytes:
        return bytes(self)

    def copy_into(self, dst: memoryview) -> None:
        """dst[:] = the data, without building it first."""
        pos = 0
        for piece in self.iovecs(limit=self.length):
            dst[pos : pos + len(piece)] = piece
            pos += len(piece)


WriteData = memoryview | RepeatedBytes


def iovecs(data: WriteData) -> list[memoryview]:
    """What ``os.pwritev`` takes for the data (or its first part when it is very long)."""
    if isinstance(data, RepeatedBytes):
        return data.iovecs()
    return [data]


def copy_into(dst: memoryview, data: WriteData) -> None:
    if isinstance(data, RepeatedBytes):
        data.copy_into(dst)
    else:
        dst[:] = data
