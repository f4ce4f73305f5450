"""The ``copy-on-read`` filter: reads through it copy backing-file data into the image below.

``driver=copy-on-read,file.driver=qcow2,file.file.filename=top.qcow2``: every read is passed
on with the copy-on-read flag, so the node below (typically a qcow2 image with a backing file)
writes what it had to fetch from its backing chain into itself.  ``bottom=NODE`` stops the
copying at a node of the backing chain: only data found above it (``bottom`` included) is
copied.  Everything else (writes, zero writes, discards, truncate, block status) is passed
through unchanged.  It is the same mechanism as qemu-io's ``-C``/``open -C``, which switches
copy-on-read on at the top node instead of inserting a filter.
"""

from __future__ import annotations

from qio.block.node import BlockNode, BlockStatus, ReqFlags
from qio.block.options import Options
from qio.block.payload import WriteData
from qio.errors import OpenError


class CopyOnReadNode(BlockNode):
    format_name = "copy-on-read"
    is_filter = True

    bottom: BlockNode | None = None

    async def open(self, options: Options) -> None:
        bottom_name = options.pop_str("bottom")
        if self.file is None:
            raise OpenError('A block device must be specified for "file"')
        if bottom_name is not None:
            bottom = self.context.find_node(bottom_name)
            if bottom is None:
                raise OpenError(f"Bottom node '{bottom_name}' not found")
            if bottom.is_filter:
                raise OpenError(f"Bottom node '{bottom_name}' is a filter")
            self.bottom = bottom
            self.options["bottom"] = bottom_name
        self.max_transfer = self.file.max_transfer
        self.pdiscard_alignment = max(self.pdiscard_alignment, self.file.pdiscard_alignment)
        self.supports_fua = self.file.supports_fua

    def drv_getlength(self) -> int:
        assert self.file is not None
        return self.file.getlength()

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        assert self.file is not None
        if self.bottom is None:
            await self.file.preadv(offset, buf, flags | ReqFlags.COPY_ON_READ)
            return
        pos = 0
        while pos < len(buf):
            num = len(buf) - pos
            local_flags = flags
            allocated, n = await self.file.is_allocated(offset + pos, num)
            if not allocated:
                copy, n = await self._allocated_down_to_bottom(offset + pos, n or num)
                if copy:
                    local_flags |= ReqFlags.COPY_ON_READ
                if n == 0:
                    break  # past the end of the backing chain
            await self.file.preadv(offset + pos, buf[pos : pos + n], local_flags)
            pos += n

    async def _allocated_down_to_bottom(self, offset: int, length: int) -> tuple[bool, int]:
        """Whether the range is allocated in the backing chain below our child, from its
        backing file down to ``bottom`` (included); and for how many bytes that holds."""
        assert self.file is not None
        node = self.file.backing
        while node is not None:
            allocated, n = await node.is_allocated(offset, length)
            if allocated:
                return True, n
            if n:
                length = min(length, n)
            if node is self.bottom:
                break
            node = node.backing
        return False, length

    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        assert self.file is not None
        await self.file.pwritev(offset, data, flags)

    async def drv_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        assert self.file is not None
        await self.file.pwrite_zeroes(offset, length, flags)

    async def drv_pdiscard(self, offset: int, length: int) -> None:
        assert self.file is not None
        await self.file.pdiscard(offset, length)

    async def drv_truncate(self, length: int, exact: bool, prealloc: str) -> None:
        assert self.file is not None
        await self.file.truncate(length, exact, prealloc)

    async def drv_block_status(
        self, offset: int, length: int, want_zero: bool
    ) -> BlockStatus | None:
        return BlockStatus(length, offset=offset, node=self.file, raw=True)

    async def drv_reopen(self, options: Options, read_write: bool) -> None:
        raise OpenError(
            f"Block format 'copy-on-read' used by node '{self.node_name}' does not support "
            "reopening files"
        )
