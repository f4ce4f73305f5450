"""The ``raw`` format driver: the child's bytes, optionally a window of them.

``offset`` and ``size`` select a window of the child.  When the format was guessed by probing
(no ``-f raw``), writes to the first sector are refused with EPERM if the new bytes would make
the image probe as another format, the protection QEMU added against guests turning a raw
disk into a qcow2 header pointing at host files.
"""

from __future__ import annotations

import errno

from qio.block import probe
from qio.block.node import SECTOR, BlockNode, BlockStatus, DriverInfo, ReqFlags
from qio.block.options import Options
from qio.block.payload import WriteData
from qio.errors import BlockError, OpenError


def probe_warning(filename: str) -> str:
    """What raw_open says when the format was probed and the image is writable."""
    return (
        f"WARNING: Image format was not specified for '{filename}' and probing guessed raw.\n"
        "         Automatically detecting the format is dangerous for raw images, "
        "write operations on block 0 will be restricted.\n"
        "         Specify the 'raw' format explicitly to remove the restrictions.\n"
    )

class RawNode(BlockNode):
    format_name = "raw"
    is_format = True

    offset = 0
    size: int | None = None

    async def open(self, options: Options) -> None:
        offset = options.pop_size("offset", 0)
        size = options.pop_size("size", -1) if "size" in options else None
        file = self.file
        if file is None:
            raise OpenError('A block device must be specified for "file"')
        real_size = file.getlength()
        if offset > real_size:
            raise OpenError(
                f"Offset ({offset}) cannot be greater than size of the containing file ({real_size})"
            )
        if size is not None and real_size - offset < size:
            raise OpenError(
                f"The sum of offset ({offset}) and size ({size}) has to be smaller or equal to the "
                f" actual size of the containing file ({real_size})"
            )
        if size is not None and size % SECTOR:
            raise OpenError(f"Specified size is not multiple of {SECTOR}")
        self.offset = offset
        self.size = size
        if offset:
            self.options["offset"] = offset
        if size is not None:
            self.options["size"] = size
        if self.probed:
            # Sub-sector writes become read-modify-write so the first sector is always
            # checked whole.
            self.request_alignment = SECTOR
            if self.flags.read_write:
                self.context.err(probe_warning(file.filename))
        # Limits inherited from the child as QEMU's bdrv_merge_limits does; the request
        # alignment is not among them (a blkdebug ``align`` below pads at blkdebug itself).
        self.max_transfer = file.max_transfer
        self.pdiscard_alignment = max(self.pdiscard_alignment, file.pdiscard_alignment)
        self.supports_fua = file.supports_fua

    async def drv_reopen(self, options: Options, read_write: bool) -> None:
        assert self.file is not None
        offset = options.pop_size("offset", self.offset)
        size = options.pop_size("size", -1) if "size" in options else self.size
        self.offset, self.size = offset, size

    @property
    def is_filter(self) -> bool:  # type: ignore[override]
        return self.offset == 0 and self.size is None

    def child_offset(self, child: BlockNode) -> int | None:
        return self.offset if child is self.file else None

    def drv_getlength(self) -> int:
        if self.size is not None:
            return self.size
        assert self.file is not None
        return max(0, self.file.getlength() - self.offset)

    def _window(self, offset: int, length: int) -> int:
        if self.size is not None and (offset > self.size or length > self.size - offset):
            raise BlockError(errno.ENOSPC)
        return offset + self.offset

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        assert self.file is not None
        await self.file.fire("read_aio")
        await self.file.preadv(self._window(offset, len(buf)), buf, flags)

    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        assert self.file is not None
        if self.probed and offset < SECTOR and len(data):
            # The request is sector-aligned here (request_alignment), so data[:512] is the
            # complete new first sector.
            if probe.probe(bytes(data[:SECTOR])) != "raw":
                raise BlockError(errno.EPERM)
        await self.file.fire("write_aio")
        await self.file.pwritev(self._window(offset, len(data)), data, flags)

    async def drv_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        assert self.file is not None
        await self.file.pwrite_zeroes(self._window(offset, length), length, flags)

    async def drv_pdiscard(self, offset: int, length: int) -> None:
        assert self.file is not None
        await self.file.pdiscard(self._window(offset, length), length)

    async def drv_block_status(
        self, offset: int, length: int, want_zero: bool
    ) -> BlockStatus | None:
        return BlockStatus(length, offset=offset + self.offset, node=self.file, raw=True)

    async def drv_truncate(self, length: int, exact: bool, prealloc: str) -> None:
        assert self.file is not None
        if self.size is not None:
            raise OpenError("Cannot resize fixed-size raw disks", errno.ENOTSUP)
        if (1 << 63) - 1 - length < self.offset:
            raise OpenError("Disk size too large for the chosen offset", errno.EINVAL)
        await self.file.truncate(length + self.offset, exact, prealloc)

    def drv_get_info(self) -> DriverInfo | None:
        assert self.file is not None
        return self.file.get_info()

    async def drv_load_vmstate(self, offset: int, buf: memoryview) -> None:
        raise BlockError(errno.ENOTSUP)

    async def drv_pwrite_compressed(self, offset: int, data: memoryview) -> None:
        raise BlockError(errno.ENOTSUP)
