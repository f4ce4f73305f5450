"""The block driver interface and the generic layer every request passes through.

A ``BlockNode`` is one node of the graph (QEMU's BlockDriverState).  Drivers subclass it and
implement the ``drv_*`` hooks they support; callers only use the public coroutine methods
(``preadv``, ``pwritev``, ``pwrite_zeroes``, ``pdiscard``, ``flush``, ``truncate``,
``block_status``), which add what QEMU's block/io.c adds around every driver:

* lengths are whole 512-byte sectors, and reads past a node's end are zero-filled;
* requests are padded to the node's ``request_alignment`` (read-modify-write) and split at
  ``max_transfer``;
* zero writes fall back to writing a zero buffer unless NO_FALLBACK is asked for;
* discards are dropped when the node was opened with discard=ignore;
* a flush is skipped when nothing was written since the last one (write generations);
* copy-on-read pulls data from the backing chain into this node.

Drivers never print: what a user must be told travels as an exception (``BlockError`` with an
errno, ``FatalError``) or as a notice through ``self.context.notify``.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntFlag
from typing import TYPE_CHECKING, Any, ClassVar

from qio.block.coroutine import FatalError, Future
from qio.block.payload import WriteData, copy_into
from qio.block.tracking import Padding, RequestTracker, TrackedRequest
from qio.errors import BlockError, OpenError
from qio.numbers import REQUEST_MAX_BYTES

if TYPE_CHECKING:
    from qio.block.open import OpenContext
    from qio.block.options import Options

SECTOR = 512
# BDRV_MAX_LENGTH: INT64_MAX aligned down to the largest alignment QEMU allows (1 GiB).
MAX_LENGTH = ((1 << 63) - 1) // (1 << 30) * (1 << 30)
MAX_BOUNCE = 32768 * 1024  # bytes of zeroes written at a time by the zero-write fallback
_ZEROES = bytes(1 << 20)


class ReqFlags(IntFlag):
    NONE = 0
    FUA = 1
    MAY_UNMAP = 2
    NO_FALLBACK = 4
    COPY_ON_READ = 8
    WRITE_UNCHANGED = 16
    NO_SERIALISING = 32


@dataclass
class OpenFlags:
    """The open-time switches QEMU passes down a graph (BDRV_O_*)."""

    read_write: bool = True
    unmap: bool = True  # discard=unmap (qemu-io's default) rather than ignore
    no_flush: bool = False  # cache=unsafe
    direct: bool = False  # cache.direct (O_DIRECT)
    copy_on_read: bool = False
    snapshot: bool = False
    force_share: bool = False
    no_backing: bool = False
    aio: str = "threads"
    # BDRV_O_NO_IO: opened only to read its metadata (qemu-img info, create's backing check);
    # qcow2 then leaves an external data file unopened, as QEMU does
    no_io: bool = False
    check: bool = False  # BDRV_O_CHECK: opened to be checked or repaired (qemu-img check)

    def copy(self) -> OpenFlags:
        return OpenFlags(**self.__dict__)


@dataclass(slots=True)
class BlockStatus:
    """One run of equal status starting at the queried offset (QEMU's block-status answer)."""

    length: int
    data: bool = False
    zero: bool = False
    allocated: bool = False
    offset: int | None = None  # where the bytes live in ``node``
    node: BlockNode | None = None
    raw: bool = False  # a pass-through: ask ``node`` at ``offset``
    recurse: bool = False  # data that may be a hole in ``node``: ask it whether it reads as zeros
    eof: bool = False
    depth: int = 0
    compressed: bool = False


@dataclass
class DriverInfo:
    cluster_size: int = 0
    vm_state_offset: int = 0
    is_dirty: bool = False


@dataclass
class SpecificInfo:
    """'Format specific information' as an ordered tree of (key, value) pairs."""

    kind: str
    fields: list[tuple[str, Any]] = field(default_factory=list)


def zero_fill(buf: memoryview) -> None:
    n = len(buf)
    pos = 0
    while pos < n:
        step = min(n - pos, len(_ZEROES))
        buf[pos : pos + step] = _ZEROES[:step]
        pos += step


def is_zero(data: memoryview | bytes) -> bool:
    n = len(data)
    pos = 0
    while pos < n:
        step = min(n - pos, len(_ZEROES))
        if data[pos : pos + step] != _ZEROES[:step]:
            return False
        pos += step
    return True


class BlockNode:
    """One node of the block graph: a driver instance plus QEMU's generic request layer."""

    # -- what a driver declares -------------------------------------------------------------
    format_name: ClassVar[str] = ""
    protocol_name: ClassVar[str | None] = None  # set for protocol drivers (file, null-co, ...)
    is_filter: ClassVar[bool] = False
    is_format: ClassVar[bool] = False  # probing candidates, opened above a ``file`` child
    supports_backing: ClassVar[bool] = False
    has_debug_events: ClassVar[bool] = False  # blkdebug
    needs_filename: ClassVar[bool] = False

    def __init__(self, context: OpenContext, flags: OpenFlags) -> None:
        self.context = context
        self.flags = flags
        self.node_name = ""
        self.filename = ""  # what QEMU calls bs->filename (shown in messages)
        self.options: dict[str, Any] = {}  # the options this node was opened with
        self.children: dict[str, BlockNode] = {}
        self.file: BlockNode | None = None
        self.backing: BlockNode | None = None
        self.backing_file = ""  # name recorded in the image (for info)
        self.backing_format = ""
        self.total_sectors = 0
        self.request_alignment = 1
        self.max_transfer = 0  # 0 = unlimited
        self.pwrite_zeroes_alignment = 1
        self.pdiscard_alignment = 1
        self.max_pwrite_zeroes = 0
        self.max_pdiscard = 0
        self.supports_fua = False
        self.write_gen = 0
        self.flushed_gen = 0
        self.probed = False
        self.copy_on_read = False
        self.closed = False
        self._tracker = RequestTracker()  # in-flight requests (used when request_alignment > 1)
        self._flush_active = False
        self._flush_waiters: deque[Future] = deque()

    # =====================================================================================
    # Driver hooks (override what the driver supports)
    # =====================================================================================
    @classmethod
    def parse_filename(cls, filename: str, options: Options) -> None:
        """Turn a protocol filename (``blkverify:a:b``, ``nbd://h/x``) into options."""

    async def open(self, options: Options) -> None:
        """Consume this driver's options (children are opened through ``self.context``)."""

    def drv_getlength(self) -> int:
        raise NotImplementedError

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        raise BlockError(errno.ENOTSUP)

    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        raise BlockError(errno.ENOTSUP)

    async def drv_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        raise BlockError(errno.ENOTSUP)

    async def drv_pdiscard(self, offset: int, length: int) -> None:
        raise BlockError(errno.ENOTSUP)

    async def drv_flush(self) -> bool:
        """Override to replace the whole flush (return True when handled), as blkverify does."""
        return False

    async def drv_flush_to_os(self) -> None:
        pass

    async def drv_flush_to_disk(self) -> None:
        pass

    async def drv_truncate(self, length: int, exact: bool, prealloc: str) -> None:
        raise OpenError("Image format driver does not support resize", errno.ENOTSUP)

    async def drv_block_status(
        self, offset: int, length: int, want_zero: bool
    ) -> BlockStatus | None:
        """None means the driver has no block-status support (QEMU then says 'all data')."""
        return None

    async def drv_pwrite_compressed(self, offset: int, data: memoryview) -> None:
        raise BlockError(errno.ENOTSUP)

    async def drv_load_vmstate(self, offset: int, buf: memoryview) -> None:
        raise BlockError(errno.ENOTSUP)

    async def drv_save_vmstate(self, offset: int, data: memoryview) -> None:
        raise BlockError(errno.ENOTSUP)

    def drv_get_info(self) -> DriverInfo | None:
        """Cluster size and VM-state offset; None when the driver has no such call."""
        return None

    def get_info(self) -> DriverInfo | None:
        """``bdrv_get_info``: a filter without its own answer asks its filtered child."""
        info = self.drv_get_info()
        if info is None:
            child = self.filtered_child()
            if child is not None:
                return child.get_info()
        return info

    def specific_info(self) -> SpecificInfo | None:
        return None

    async def drv_close(self) -> None:
        pass

    async def on_debug_event(self, event: str) -> None:
        """Only blkdebug handles events (rules, breakpoints); see ``fire``."""

    async def drv_reopen(self, options: Options, read_write: bool) -> None:
        """Apply ``reopen``: take the options this driver can change in place (leave the rest,
        which the caller refuses) and switch to ``read_write``; raise OpenError to refuse."""

    # =====================================================================================
    # Graph helpers
    # =====================================================================================
    def attach(self, role: str, child: BlockNode) -> BlockNode:
        self.children[role] = child
        if role == "file":
            self.file = child
        elif role == "backing":
            self.backing = child
        return child

    def primary_child(self) -> BlockNode | None:
        """The child QEMU calls primary: ``file`` (or the filtered child), else ``backing``."""
        if self.file is not None:
            return self.file
        return self.filtered_child()

    def filtered_child(self) -> BlockNode | None:
        if self.is_filter:
            return self.file or next(iter(self.children.values()), None)
        return None

    def child_offset(self, child: BlockNode) -> int | None:
        """The shift with which this node passes requests on to ``child`` unchanged (0 for a
        filter), or None when its requests to ``child`` are not a plain mapping (formats)."""
        return 0 if self.is_filter and child is self.filtered_child() else None

    def find_debug_target(self) -> BlockNode | None:
        """The first node down the primary chain that handles breakpoints, if any."""
        node: BlockNode | None = self
        while node is not None:
            if node.has_debug_events:
                return node
            node = node.primary_child()
        return None

    async def fire(self, event: str) -> None:
        """A driver raising a blkdebug event: QEMU's ``BLKDBG_EVENT(bs->file, event)``.

        Called on the child (``self.file.fire(...)``, QEMU's spelling) or on the format node
        itself (``self.fire(...)``), the event goes to the node below the format and is handled
        only if that node is a blkdebug node.  Events never travel further down, as in QEMU.
        """
        if self.has_debug_events:
            await self.on_debug_event(event)
        elif self.is_format and self.file is not None and self.file.has_debug_events:
            await self.file.on_debug_event(event)

    async def node_event(self, event: str) -> None:
        """An event the generic layer raises at this very node (``bdrv_debug_event(bs, ...)``:
        RMW, pwritev, flush events); only a blkdebug node itself reacts."""
        if self.has_debug_events:
            await self.on_debug_event(event)

    def walk(self) -> Sequence[BlockNode]:
        seen: list[BlockNode] = []

        def visit(n: BlockNode) -> None:
            if n in seen:
                return
            seen.append(n)
            for c in n.children.values():
                visit(c)

        visit(self)
        return seen

    @property
    def read_only(self) -> bool:
        return not self.flags.read_write

    def refresh_total_sectors(self) -> None:
        self.total_sectors = -(-self.drv_getlength() // SECTOR)

    def getlength(self) -> int:
        return self.total_sectors * SECTOR

    def allocated_file_size(self) -> int | None:
        """Host bytes really allocated (bdrv_get_allocated_file_size); None when unknown."""
        child = self.file if self.protocol_name is None or self.is_filter else None
        return child.allocated_file_size() if child is not None else None

    def cluster_size_for_cor(self) -> int:
        info = self.get_info()
        if info is not None and info.cluster_size:
            return info.cluster_size
        return max(self.request_alignment, SECTOR)

    # =====================================================================================
    # Generic request layer
    # =====================================================================================
    async def preadv(self, offset: int, buf: memoryview, flags: ReqFlags = ReqFlags.NONE) -> None:
        length = len(buf)
        if offset < 0 or offset > MAX_LENGTH or length > MAX_LENGTH - offset:
            raise BlockError(errno.EIO)  # bdrv_check_request
        if length == 0:
            # QEMU passes an aligned zero-length read down to the driver (a real, if empty,
            # host I/O); only an unaligned one is dropped here.
            if offset % self.request_alignment == 0:
                await self.drv_preadv(offset, buf, flags)
            return
        if self.copy_on_read:
            flags |= ReqFlags.COPY_ON_READ
        align = self.request_alignment
        if align == 1:
            await self._aligned_preadv(offset, buf, flags)
            return
        tracker = self._tracker
        req = tracker.begin(offset, length)
        try:
            await tracker.wait_serialising(req)
            pad = Padding.of(offset, length, align)
            if pad is None:
                await self._aligned_preadv(offset, buf, flags)
                return
            bounce = bytearray(pad.end - pad.start)
            # QEMU pads with separate head/tail buffers around the caller's own buffer, so
            # bytes a driver leaves alone (null-co) keep the caller's contents.
            bounce[pad.head : pad.head + length] = buf
            await self._aligned_preadv(pad.start, memoryview(bounce), flags)
            buf[:] = memoryview(bounce)[pad.head : pad.head + length]
        finally:
            tracker.end(req)

    async def _aligned_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        if flags and flags & ReqFlags.COPY_ON_READ:
            flags &= ~ReqFlags.COPY_ON_READ
            allocated, pnum = await self.is_allocated(offset, len(buf))
            if not allocated or pnum != len(buf):
                await self._copy_on_readv(offset, buf, flags)
                return
        length = len(buf)
        total = self.getlength()
        max_bytes = max(0, total - offset)
        max_bytes = -(-max_bytes // self.request_alignment) * self.request_alignment
        limit = self.max_transfer
        if length <= max_bytes and (not limit or length <= limit):
            await self.drv_preadv(offset, buf, flags)
            return
        pos = 0
        while pos < length:
            if max_bytes > pos:
                num = min(length - pos, max_bytes - pos)
                if limit:
                    num = min(num, limit)
                await self.drv_preadv(offset + pos, buf[pos : pos + num], flags)
            else:
                num = length - pos
                zero_fill(buf[pos:])
            pos += num

    async def _copy_on_readv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        """Read through the chain and write what came from below into this node.

        The loop is bdrv_co_do_copy_on_readv's, over whole clusters around the request.  With
        subclusters (qcow2 extended L2) QEMU 7.2 assumes every run reaches past the request's
        start and end; where one does not it aborts, and so does qio."""
        cluster = self.cluster_size_for_cor()
        nbytes = len(buf)
        cluster_offset = offset - offset % cluster
        cluster_bytes = -(-(offset + nbytes) // cluster) * cluster - cluster_offset
        skip = offset - cluster_offset
        max_transfer = min(self.max_transfer or REQUEST_MAX_BYTES, REQUEST_MAX_BYTES)
        progress = 0
        while cluster_bytes:
            allocated, pnum = await self.is_allocated(
                cluster_offset, min(cluster_bytes, max_transfer)
            )
            if not allocated and pnum == 0:
                break  # the image ends inside the cluster
            if skip >= pnum:
                raise FatalError(
                    f"{self.context.program}: ../../block/io.c:1388: bdrv_co_do_copy_on_readv: "
                    "Assertion `skip_bytes < pnum' failed.",
                    abort=True,
                )
            n = min(pnum - skip, nbytes - progress)
            if not allocated:
                pnum = min(pnum, MAX_BOUNCE // 2)  # MAX_BOUNCE_BUFFER
                n = min(pnum - skip, nbytes - progress)
                bounce = bytearray(pnum)
                view = memoryview(bounce)
                await self.drv_preadv(cluster_offset, view, flags)
                await self.node_event("cor_write")
                if is_zero(view):
                    await self._do_pwrite_zeroes(cluster_offset, pnum, ReqFlags.WRITE_UNCHANGED)
                else:
                    await self.drv_pwritev(cluster_offset, view, ReqFlags.WRITE_UNCHANGED)
                self.write_gen += 1
                if n > 0:
                    buf[progress : progress + n] = view[skip : skip + n]
            else:
                if n < 0:
                    raise FatalError(
                        "Unexpected error in bdrv_check_qiov_request() at ../../block/io.c:976:\n"
                        f"{self.context.program}: bytes is negative: {n}",
                        abort=True,
                    )
                if n:
                    await self.drv_preadv(offset + progress, buf[progress : progress + n], flags)
            cluster_offset += pnum
            cluster_bytes -= pnum
            progress += pnum - skip
            skip = 0

    async def pwritev(self, offset: int, data: WriteData, flags: ReqFlags = ReqFlags.NONE) -> None:
        length = len(data)
        if offset < 0:
            raise BlockError(errno.EIO)
        if length == 0 and offset % self.request_alignment:
            return
        align = self.request_alignment
        if align == 1:
            await self._aligned_pwritev(offset, data, flags)
            return
        tracker = self._tracker
        req = tracker.begin(offset, length)
        try:
            pad = Padding.of(offset, length, align)
            if pad is None:
                await tracker.wait_serialising(req)
                await self._aligned_pwritev(offset, data, flags)
                return
            await tracker.make_serialising(req, align)
            head_buf, tail_buf = await self._padding_rmw_read(pad)
            padded = bytearray(pad.end - pad.start)
            view = memoryview(padded)
            if pad.head:
                view[: pad.head] = head_buf[: pad.head]
            copy_into(view[pad.head : pad.head + length], data)
            if pad.tail:
                view[len(padded) - pad.tail :] = tail_buf[pad.align - pad.tail :]
            await self._aligned_pwritev(pad.start, view, flags)
        finally:
            tracker.end(req)

    async def _padding_rmw_read(self, pad: Padding) -> tuple[memoryview, memoryview]:
        """bdrv_padding_rmw_read: the head and tail blocks a padded write keeps.

        Returns the head block and the tail block (both ``align`` bytes; one shared buffer
        when the two reads were merged).
        """
        align = pad.align
        buf = memoryview(bytearray(pad.buf_len))
        tail_buf = buf[pad.buf_len - align :]
        try:
            await self._padding_rmw_fill(pad, buf, tail_buf)
        except BlockError:
            # QEMU 7.2 ignores the result of the padding read: a failed read leaves the
            # (here zeroed) padding buffer as it is and the write goes ahead.
            pass
        return buf[:align], tail_buf

    async def _padding_rmw_fill(self, pad: Padding, buf: memoryview, tail_buf: memoryview) -> None:
        align = pad.align
        if pad.head or pad.merge_reads:
            if pad.head:
                await self.node_event("pwritev_rmw_head")
            if pad.merge_reads and pad.tail:
                await self.node_event("pwritev_rmw_tail")
            await self._aligned_preadv(
                pad.start, buf[: pad.buf_len if pad.merge_reads else align], ReqFlags.NONE
            )
            if pad.head:
                await self.node_event("pwritev_rmw_after_head")
            if pad.merge_reads and pad.tail:
                await self.node_event("pwritev_rmw_after_tail")
            if pad.merge_reads:
                return
        if pad.tail:
            await self.node_event("pwritev_rmw_tail")
            await self._aligned_preadv(pad.end - align, tail_buf, ReqFlags.NONE)
            await self.node_event("pwritev_rmw_after_tail")

    async def _aligned_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        """bdrv_aligned_pwritev for data: events, max_transfer pieces, write generation."""
        limit = self.max_transfer
        length = len(data)
        await self.node_event("pwritev")
        try:
            if not limit or length <= limit:
                await self._driver_pwritev(offset, data, flags)
            else:
                pos = 0
                while pos < length:
                    num = min(limit, length - pos)
                    await self._driver_pwritev(offset + pos, data[pos : pos + num], flags)
                    pos += num
        except BlockError:
            await self._write_finished(offset, length, ok=False)
            raise
        await self._write_finished(offset, length, ok=True)

    async def _write_finished(self, offset: int, length: int, ok: bool) -> None:
        await self.node_event("pwritev_done")
        self._write_done(offset, length, ok)

    async def _driver_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        if flags and flags & ReqFlags.FUA and not self.supports_fua:
            await self.drv_pwritev(offset, data, flags & ~ReqFlags.FUA)
            await self.flush()
        else:
            await self.drv_pwritev(offset, data, flags)

    def note_write(self, offset: int, length: int) -> None:
        """Called after every write, zero write and discard (dirty bitmaps track these)."""

    def _write_done(self, offset: int, length: int, ok: bool = True) -> None:
        """bdrv_co_write_req_finish: a write (even a failed one) changes the generation."""
        self.write_gen += 1
        self.note_write(offset, length)
        end_sector = -(-(offset + length) // SECTOR)
        if ok and end_sector > self.total_sectors:
            self.total_sectors = end_sector

    async def pwrite_zeroes(
        self,
        offset: int,
        length: int,
        flags: ReqFlags = ReqFlags.NONE,
        from_backend: bool = False,
    ) -> None:
        if offset < 0 or length < 0:
            raise BlockError(errno.EIO)
        if length == 0:
            if offset % self.request_alignment == 0:
                self.write_gen += 1  # an empty request still counts as a write in QEMU
            return
        if not self.flags.unmap and not from_backend:
            # bdrv_co_pwrite_zeroes (a parent writing to its child) drops MAY_UNMAP on a
            # node opened without discard=unmap; a BlockBackend request keeps it.
            flags &= ~ReqFlags.MAY_UNMAP
        align = self.request_alignment
        if align == 1:
            await self._aligned_pwrite_zeroes(offset, length, flags)
            return
        pad = Padding.of(offset, length, align)
        if pad is not None and flags & ReqFlags.NO_FALLBACK:
            # A misaligned request cannot be made efficient.
            raise BlockError(errno.ENOTSUP)
        tracker = self._tracker
        req = tracker.begin(offset, length)
        try:
            if pad is None:
                await tracker.wait_serialising(req)
                await self._aligned_pwrite_zeroes(offset, length, flags)
                return
            await self._padded_pwrite_zeroes(req, pad, offset, length, flags)
        finally:
            tracker.end(req)

    async def _padded_pwrite_zeroes(
        self, req: TrackedRequest, pad: Padding, offset: int, length: int, flags: ReqFlags
    ) -> None:
        """bdrv_co_do_zero_pwritev: zeroed head and tail blocks are written as data, the
        aligned middle as a zero write."""
        align = pad.align
        data_flags = flags & ReqFlags.FUA
        await self._tracker.make_serialising(req, align)
        head_buf, tail_buf = await self._padding_rmw_read(pad)
        if pad.merge_reads:
            # Both ends in one buffer: zero what the request covers and write it whole.
            merged = memoryview(bytearray(pad.buf_len))
            merged[:align] = head_buf
            merged[pad.buf_len - align :] = tail_buf
            zero_fill(merged[pad.head : pad.head + length])
            await self._aligned_pwritev(pad.start, merged, data_flags)
            return
        end = offset + length
        if pad.head:
            zero_fill(head_buf[pad.head :])
            await self._aligned_pwritev(pad.start, head_buf, data_flags)
            offset = pad.start + align
        middle_end = end - end % align
        if middle_end > offset:
            await self._aligned_pwrite_zeroes(offset, middle_end - offset, flags)
        if pad.tail:
            zero_fill(tail_buf[: align - pad.tail])
            await self._aligned_pwritev(middle_end, tail_buf, data_flags)

    async def _aligned_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        """bdrv_aligned_pwritev for a zero write."""
        await self.node_event("pwritev_zero")
        try:
            await self._do_pwrite_zeroes(offset, length, flags)
        except BlockError:
            await self._write_finished(offset, length, ok=False)
            raise
        await self._write_finished(offset, length, ok=True)

    async def _do_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        """bdrv_co_do_pwrite_zeroes: driver zeroing by aligned pieces, else a zero buffer."""
        align = max(self.pwrite_zeroes_alignment, self.request_alignment)
        max_write_zeroes = self.max_pwrite_zeroes or (1 << 31) - align
        max_write_zeroes -= max_write_zeroes % align
        pos = offset
        end = offset + length
        # FUA the node cannot pass on becomes one flush of this node at the end.
        emulate_fua = bool(flags & ReqFlags.FUA) and not self.supports_fua
        while pos < end:
            num = end - pos
            # Split off an unaligned head so the middle stays aligned for the driver.
            if pos % align:
                num = min(num, align - pos % align)
            elif num > align:
                num -= num % align
            num = min(num, max_write_zeroes)
            try:
                await self.drv_pwrite_zeroes(pos, num, flags)
            except BlockError as exc:
                if exc.errno != errno.ENOTSUP or flags & ReqFlags.NO_FALLBACK:
                    raise
                await self._zero_fallback(pos, num, flags & ~ReqFlags.FUA if emulate_fua else flags)
            pos += num
        if emulate_fua:
            await self.flush()

    async def _zero_fallback(self, offset: int, length: int, flags: ReqFlags) -> None:
        chunk = min(length, MAX_BOUNCE, self.max_transfer or MAX_BOUNCE)
        zeroes = memoryview(bytearray(chunk))
        pos = 0
        while pos < length:
            num = min(chunk, length - pos)
            await self._driver_pwritev(offset + pos, zeroes[:num], flags & ReqFlags.FUA)
            pos += num

    async def pdiscard(self, offset: int, length: int) -> None:
        """bdrv_co_pdiscard: advice, passed down in pieces the driver may ignore.

        Pieces stop at alignment boundaries so that a driver can ignore the unaligned head
        and tail (returning ENOTSUP) and still act on the aligned middle.
        """
        if offset < 0 or length < 0:
            raise BlockError(errno.EIO)
        if not self.flags.unmap or length == 0:
            return
        if type(self).drv_pdiscard is BlockNode.drv_pdiscard:
            return  # the driver cannot discard: nothing happens, nothing changes
        if self.request_alignment == 1:
            await self._discard_pieces(offset, length)
            return
        tracker = self._tracker
        req = tracker.begin(offset, length)
        try:
            await tracker.wait_serialising(req)
            await self._discard_pieces(offset, length)
        finally:
            tracker.end(req)

    async def _discard_pieces(self, offset: int, length: int) -> None:
        request_align = self.request_alignment
        align = max(self.pdiscard_alignment, request_align)
        head = offset % align
        tail = (offset + length) % align
        request = (offset, length)
        limit = self.max_pdiscard or (1 << 63) - 1
        limit -= limit % align
        try:
            while length > 0:
                num = length
                if head:
                    # Small pieces up to the next alignment boundary.
                    num = min(length, align - head)
                    if num % request_align:
                        num %= request_align
                    head = (head + num) % align
                elif tail:
                    if num > align:
                        num -= tail  # stop at the last aligned block
                    elif tail % request_align and tail > request_align:
                        tail %= request_align
                        num -= tail
                num = min(num, limit)
                try:
                    await self.drv_pdiscard(offset, num)
                except BlockError as exc:
                    if exc.errno != errno.ENOTSUP:
                        raise
                offset += num
                length -= num
        finally:
            self.write_gen += 1
            self.note_write(*request)

    async def flush(self) -> None:
        if self.read_only or self.closed:
            return
        current_gen = self.write_gen
        # Flushes of one node run one at a time, in the order they were asked for.
        while self._flush_active:
            waiter = Future()
            self._flush_waiters.append(waiter)
            await waiter
        self._flush_active = True
        try:
            await self._flush_locked(current_gen)
        finally:
            self._flush_active = False
            if self._flush_waiters:
                self._flush_waiters.popleft().set_result()

    async def _flush_locked(self, current_gen: int) -> None:
        if await self.drv_flush():
            self.flushed_gen = current_gen
            return
        primary = self.primary_child()
        if primary is not None:
            await primary.node_event("flush_to_os")
        await self.drv_flush_to_os()
        if not self.flags.no_flush and self.flushed_gen != current_gen:
            if primary is not None:
                await primary.node_event("flush_to_disk")
            await self.drv_flush_to_disk()
        first_error: BlockError | None = None
        for child in self._flushable_children():
            try:
                await child.flush()
            except BlockError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        self.flushed_gen = current_gen

    def _flushable_children(self) -> list[BlockNode]:
        # Only children we write to are flushed (a backing file is read-only for us).
        return [c for role, c in self.children.items() if role != "backing" and not c.read_only]

    async def truncate(self, length: int, exact: bool = False, prealloc: str = "off") -> None:
        if length < 0:
            raise OpenError("Image size cannot be negative", errno.EINVAL)
        if length > MAX_LENGTH:
            raise OpenError(f"offset({length}) exceeds maximum({MAX_LENGTH})", errno.EIO)
        if self.read_only:
            raise OpenError("Image is read-only", errno.EACCES)
        old_size = self.getlength()
        try:
            if (
                length > old_size
                and self.supports_backing
                and self.backing is not None
                and self.backing.getlength() > old_size
            ):
                # The backing file would show through the new area: it must read as zeros
                # (bdrv_co_truncate's BDRV_REQ_ZERO_WRITE; only formats with backing files).
                await self.drv_truncate(length, exact, prealloc, zero_write=True)  # type: ignore[call-arg]
            else:
                await self.drv_truncate(length, exact, prealloc)
        except OpenError:
            child = self.filtered_child()
            if type(self).drv_truncate is BlockNode.drv_truncate and child is not None:
                await child.truncate(length, exact, prealloc)
            else:
                raise
        self.refresh_total_sectors()
        self.write_gen += 1

    # -- block status ----------------------------------------------------------------------
    async def block_status(self, offset: int, length: int, want_zero: bool = False) -> BlockStatus:
        """bdrv_co_block_status: one run from ``offset`` (length 0 at or past the end)."""
        total = self.getlength()
        if offset >= total or length <= 0:
            return BlockStatus(0, eof=True)
        length = min(length, total - offset)
        status = await self.drv_block_status(offset, length, want_zero)
        if status is None:
            status = BlockStatus(length, data=True, allocated=True)
            if self.protocol_name is not None:
                status.offset = offset
                status.node = self
            status.eof = offset + length == total
            return status
        status.length = min(status.length, length)
        if status.raw and status.node is not None and status.offset is not None:
            inner = await status.node.block_status(status.offset, status.length, want_zero)
            status = BlockStatus(
                inner.length,
                data=inner.data,
                zero=inner.zero,
                allocated=inner.allocated,
                offset=inner.offset,
                node=inner.node,
                eof=inner.eof,
                compressed=inner.compressed,
            )
            if status.length == 0:
                status.length = min(length, max(1, total - offset))
                status.zero = True
                status.eof = True
                status.allocated = True
            # QEMU takes a pass-through answer as it is (goto out): a format node below a
            # raw node (raw over qcow2) keeps its own idea of what is allocated
            if offset + status.length >= total:
                status.eof = True
            return status
        if status.data or status.zero:
            status.allocated = True
        elif self.supports_backing:
            if self.backing is None:
                status.zero = True
            elif want_zero and offset >= self.backing.getlength():
                status.zero = True
        if (
            want_zero
            and status.recurse
            and status.data
            and not status.zero
            and status.node is not None
            and status.node is not self
            and status.offset is not None
        ):
            inner = await status.node.block_status(status.offset, status.length, True)
            if inner.eof and (inner.length == 0 or inner.zero):
                status.zero = True
            elif inner.length:
                status.length = inner.length
                status.zero = inner.zero
        if offset + status.length >= total:
            status.eof = True
        return status

    async def is_allocated(self, offset: int, length: int) -> tuple[bool, int]:
        status = await self.block_status(offset, length, want_zero=False)
        return status.allocated, status.length

    async def pwrite_compressed(self, offset: int, data: memoryview) -> None:
        await self.drv_pwrite_compressed(offset, data)
        self._write_done(offset, len(data))

    async def close(self) -> None:
        if self.closed:
            return
        await self.drv_close()
        self.closed = True
        for child in self.children.values():
            await child.close()

    # -- presentation ----------------------------------------------------------------------
    def describe(self) -> str:
        """One line for the graph view: ``qcow2 → file b.qcow2``."""
        parts = [self.format_name]
        if self.protocol_name is not None and self.filename:
            parts.append(self.filename)
        return " ".join(parts)
