"""The BlockBackend: what qemu-io's commands talk to (QEMU's block/block-backend.c).

It checks every request against the image length (EIO past the end), answers ENOMEDIUM once
an image was taken offline, and implements the cache mode's write-through: with
``cache=writethrough`` (qemu-io's default) every write carries FUA, which a node that cannot
pass it on emulates by flushing itself after the driver wrote (QEMU's
bdrv_driver_pwritev).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from qio.block.mismatch import MismatchCarrier
from qio.block.node import BlockNode, ReqFlags
from qio.block.open import OpenContext
from qio.block.payload import WriteData
from qio.errors import BlockError


class BlockBackend:
    def __init__(
        self, root: BlockNode, context: OpenContext, writethrough: bool, name: str | None
    ) -> None:
        self.root = root
        self.context = context
        self.writethrough = writethrough
        self.name = name  # the filename argument, when there was one
        self.available = True
        # QEMU's BLK_PERM_WRITE on the backend: held from a read-write open, taken by the
        # first write command, given up by ``reopen -r``; a node cannot become read-only
        # while the backend holds it.
        self.write_permission = False

    # -- limits ----------------------------------------------------------------------------
    def getlength(self) -> int:
        return self.root.getlength()

    @property
    def available(self) -> bool:
        return self._available and not self.context.offline

    @available.setter
    def available(self, value: bool) -> None:
        self._available = value

    def check(self, offset: int, length: int) -> None:
        if not self.available:
            raise BlockError(errno.ENOMEDIUM)
        if offset < 0 or length < 0:
            raise BlockError(errno.EIO)
        total = self.root.getlength()
        if offset > total or total - offset < length:
            raise BlockError(errno.EIO)

    @property
    def read_only(self) -> bool:
        return self.root.read_only

    @contextmanager
    def whole_request(self, offset: int, count: int) -> Iterator[None]:
        """Around the pieces of one streamed request: a blkverify mismatch found in a piece
        names the whole request, as it would had the request been moved at once."""
        try:
            yield
        except MismatchCarrier as exc:
            exc.rebase(self.root, offset, count)
            raise

    def read_only_node(self) -> BlockNode | None:
        """The first node a write would need that is read-only, if any.

        QEMU's permission system hands a writer's WRITE permission down to every child but
        the backing file; a read-only node on that path refuses it ("Block node is
        read-only"), whether the writer is the backend being opened read-write or a write
        command asking for the permission later.
        """
        pending = [self.root]
        while pending:
            node = pending.pop(0)
            if node.read_only:
                return node
            pending.extend(c for role, c in node.children.items() if role != "backing")
        return None

    # -- requests --------------------------------------------------------------------------
    async def pread(self, offset: int, buf: memoryview, flags: ReqFlags = ReqFlags.NONE) -> None:
        self.check(offset, len(buf))
        await self.root.preadv(offset, buf, flags)

    async def pwrite(
        self, offset: int, data: WriteData, flags: ReqFlags = ReqFlags.NONE, *, final: bool = True
    ) -> None:
        """One write request; ``final=False`` for all but the last piece of a streamed request."""
        self.check(offset, len(data))
        if final and self.writethrough:
            flags |= ReqFlags.FUA
        await self.root.pwritev(offset, data, flags)

    async def pwrite_zeroes(
        self, offset: int, length: int, flags: ReqFlags = ReqFlags.NONE
    ) -> None:
        self.check(offset, length)
        if self.writethrough:
            flags |= ReqFlags.FUA
        await self.root.pwrite_zeroes(offset, length, flags, from_backend=True)

    async def pwrite_compressed(self, offset: int, data: memoryview) -> None:
        # The FUA that write-through adds is not honoured for compressed writes: QEMU 7.2
        # hands them to the driver without the flush that emulates it elsewhere.
        self.check(offset, len(data))
        await self.root.pwrite_compressed(offset, data)

    async def pdiscard(self, offset: int, length: int) -> None:
        self.check(offset, length)
        await self.root.pdiscard(offset, length)

    async def flush(self) -> None:
        if not self.available:
            raise BlockError(errno.ENOMEDIUM)
        await self.root.flush()

    async def load_vmstate(self, offset: int, buf: memoryview) -> None:
        if not self.available:
            raise BlockError(errno.ENOMEDIUM)
        node: BlockNode | None = self.root
        while node is not None:
            if type(node).drv_load_vmstate is not BlockNode.drv_load_vmstate:
                await node.drv_load_vmstate(offset, buf)
                return
            node = node.primary_child()
        raise BlockError(errno.ENOTSUP)

    async def save_vmstate(self, offset: int, data: memoryview) -> None:
        if not self.available:
            raise BlockError(errno.ENOMEDIUM)
        node: BlockNode | None = self.root
        while node is not None:
            if type(node).drv_save_vmstate is not BlockNode.drv_save_vmstate:
                await node.drv_save_vmstate(offset, data)
                return
            node = node.primary_child()
        raise BlockError(errno.ENOTSUP)

    async def close(self) -> None:
        # bdrv_close flushes an opened graph first (its result ignored): what a
        # cache=writeback run wrote reaches the disk when qemu-io closes the image or exits.
        # A graph taken offline (fatal qcow2 corruption: QEMU sets bs->drv = NULL) is not
        # flushed: nothing more may reach the image.
        if not self.context.offline:
            try:
                await self.root.flush()
            except BlockError:
                pass
        await self.root.close()
