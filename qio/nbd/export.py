"""One exported block graph: NBD commands executed on a qio BlockBackend.

Every command runs to completion through ``scheduler.run_sync`` before the next one starts,
so requests from several clients are serialised on the stack exactly as qemu-io's own
commands are.  Reads always go through the stack's ``preadv``: holes in a structured read
reply are found in the data that was read, never from block status, so a blkverify export
compares both children for every byte a client reads.  For the same reason an export whose
graph holds a blkverify node answers block status with "all data": a client such as
``qemu-img convert`` must not skip reading a range because block status called it zero.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass, field

from qio.block.backend import BlockBackend
from qio.block.coroutine import Deadlock, FatalError, scheduler
from qio.block.node import BlockNode, ReqFlags
from qio.errors import BlockError, OpenError
from qio.nbd import protocol as p
from qio.nbd.mismatch import MismatchRecorder

# Reads are scanned for zero runs of at least this size (aligned) to send as holes.
HOLE_GRANULE = 4096
MAX_EXTENTS = 1024  # block status extents in one reply without REQ_ONE


class CommandError(Exception):
    """A command failed: ``errno`` is the host errno, ``message`` goes into error chunks."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


@dataclass
class Export:
    name: str
    blk: BlockBackend
    description: str = ""
    read_only: bool = False
    multi_conn: bool = False
    recorder: MismatchRecorder = field(default_factory=MismatchRecorder)

    def __post_init__(self) -> None:
        self.verifying = any(n.format_name == "blkverify" for n in self.blk.root.walk())

    # -- what the handshake tells clients --------------------------------------------------
    @property
    def size(self) -> int:
        return self.blk.getlength()

    def transmission_flags(self, structured: bool) -> int:
        flags = p.FLAG_HAS_FLAGS | p.FLAG_SEND_FLUSH | p.FLAG_SEND_FUA | p.FLAG_SEND_CACHE
        if self.read_only:
            flags |= p.FLAG_READ_ONLY
        else:
            flags |= p.FLAG_SEND_TRIM | p.FLAG_SEND_WRITE_ZEROES | p.FLAG_SEND_FAST_ZERO
        if self.multi_conn:
            flags |= p.FLAG_CAN_MULTI_CONN
        if structured:
            flags |= p.FLAG_SEND_DF
        return flags

    def block_sizes(self, client_obeys: bool) -> tuple[int, int, int]:
        root = self.blk.root
        minimum = max(1, root.request_alignment) if client_obeys else 1
        maximum = min(root.max_transfer or p.MAX_BUFFER_SIZE, p.MAX_BUFFER_SIZE)
        return minimum, max(4096, minimum), max(maximum, minimum)

    @property
    def request_alignment(self) -> int:
        return max(1, self.blk.root.request_alignment)

    # -- commands -------------------------------------------------------------------------
    def _run(self, coro, what: str):  # type: ignore[no-untyped-def]
        """Run one request on the stack; every failure becomes a CommandError."""
        try:
            return scheduler.run_sync(coro)
        except BlockError as exc:
            raise CommandError(exc.errno, f"{what} failed: {exc.strerror}") from None
        except OpenError as exc:
            raise CommandError(exc.errno, exc.message) from None
        except FatalError as exc:
            # A driver that would end qemu-io (blkverify without a handler): record it and
            # fail only this request.
            if self.recorder.from_fatal(exc.message) is None:
                sys.stderr.write(f"{self.recorder.program}: {exc.message}\n")
            raise CommandError(errno.EIO, f"{what} failed: {exc.message}") from None
        except Deadlock:
            raise CommandError(errno.EIO, f"{what} failed: request suspended forever") from None

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self._run(self.blk.pread(offset, memoryview(buf)), "reading from file")
        return bytes(buf)

    def write(self, offset: int, data: memoryview, fua: bool) -> None:
        flags = ReqFlags.FUA if fua else ReqFlags.NONE
        self._run(self.blk.pwrite(offset, data, flags), "writing to file")

    def write_zeroes(self, offset: int, length: int, nbd_flags: int) -> None:
        flags = ReqFlags.NONE
        if not nbd_flags & p.CMD_FLAG_NO_HOLE:
            flags |= ReqFlags.MAY_UNMAP
        if nbd_flags & p.CMD_FLAG_FAST_ZERO:
            flags |= ReqFlags.NO_FALLBACK
        if nbd_flags & p.CMD_FLAG_FUA:
            flags |= ReqFlags.FUA
        self._run(self.blk.pwrite_zeroes(offset, length, flags), "writing to file")

    def trim(self, offset: int, length: int, fua: bool) -> None:
        self._run(self.blk.pdiscard(offset, length), "discard failed")
        if fua:
            self.flush()

    def flush(self) -> None:
        self._run(self.blk.flush(), "flush")

    def block_status(self, offset: int, length: int, one: bool) -> list[tuple[int, int]]:
        """base:allocation extents covering ``[offset, offset+length)`` (one with REQ_ONE).

        Runs of equal flags are merged, as QEMU's server does; the status is that of the
        whole backing chain (data found in a backing file is data).
        """
        if self.verifying:
            return [(length, 0)]
        extents: list[tuple[int, int]] = []
        root = self.blk.root
        end = offset + length
        pos = offset
        while pos < end:
            run, flags = self._run(status_above(root, pos, end - pos), "block status")
            run = min(run, end - pos) if run > 0 else end - pos
            if extents and extents[-1][1] == flags:
                extents[-1] = (extents[-1][0] + run, flags)
            elif len(extents) < (1 if one else MAX_EXTENTS):
                extents.append((run, flags))
            else:
                break
            pos += run
        return extents

    def close(self) -> None:
        scheduler.drain()
        scheduler.run_sync(self.blk.close())


async def status_above(node: BlockNode, offset: int, length: int) -> tuple[int, int]:
    """(run length, base:allocation flags) at ``offset`` through the backing chain."""
    status = await node.block_status(offset, length, True)
    if status.length <= 0:
        return length, p.STATE_HOLE | p.STATE_ZERO
    backing = node.backing
    if status.allocated or backing is None:
        flags = (0 if status.data else p.STATE_HOLE) | (p.STATE_ZERO if status.zero else 0)
        return status.length, flags
    if offset >= backing.getlength():
        return status.length, p.STATE_HOLE | p.STATE_ZERO
    run = min(status.length, backing.getlength() - offset)
    inner, flags = await status_above(backing, offset, run)
    return min(inner, run), flags


def read_chunks(offset: int, data: bytes) -> list[tuple[int, int, bytes | None]]:
    """Split read data into (offset, length, bytes or None for a hole) pieces.

    Only aligned runs of zeroes of at least ``HOLE_GRANULE`` bytes become holes; the data was
    read (and verified) in full before this runs.
    """
    pieces: list[tuple[int, int, bytes | None]] = []
    length = len(data)
    if length < 2 * HOLE_GRANULE:
        return [(offset, length, data)]
    zero_block = bytes(HOLE_GRANULE)
    view = memoryview(data)
    start = 0  # start of the pending data run
    pos = (-offset) % HOLE_GRANULE  # first granule boundary
    while pos + HOLE_GRANULE <= length:
        if view[pos : pos + HOLE_GRANULE] == zero_block:
            hole_end = pos + HOLE_GRANULE
            while hole_end + HOLE_GRANULE <= length and (
                view[hole_end : hole_end + HOLE_GRANULE] == zero_block
            ):
                hole_end += HOLE_GRANULE
            if pos > start:
                pieces.append((offset + start, pos - start, data[start:pos]))
            pieces.append((offset + pos, hole_end - pos, None))
            start = pos = hole_end
        else:
            pos += HOLE_GRANULE
    if start < length:
        pieces.append((offset + start, length - start, data[start:]))
    return pieces
