"""The ``file`` protocol driver: positional I/O on a host file (QEMU's file-posix).

Reads past the end of the file return zeros, writes past it grow the file, zero writes and
discards punch or zero ranges with fallocate where the file system can, and a flush is an
``fdatasync``.  Every host I/O is charged to the running request so asynchronous completions
come out in the order qemu-io prints them (see coroutine.py).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from qio.block import hostio
from qio.block.coroutine import COST_FLUSH, COST_PER_MIB, COST_READ, COST_WRITE, scheduler
from qio.block.node import SECTOR, BlockNode, BlockStatus, DriverInfo, ReqFlags, zero_fill
from qio.block.options import Options
from qio.block.payload import WriteData, iovecs
from qio.errors import BlockError, OpenError

_MIB = float(1 << 20)


class FileNode(BlockNode):
    format_name = "file"
    protocol_name = "file"
    needs_filename = True
    device = False  # host_device: the node must be a character or block device instead

    fd: int = -1

    @classmethod
    def parse_filename(cls, filename: str, options: Options) -> None:
        if filename.startswith("file:"):
            options.set("filename", filename[len("file:") :])

    async def open(self, options: Options) -> None:
        filename = options.pop_str("filename")
        if not filename:  # QEMU refuses an empty name the same way as a missing one
            raise OpenError("The 'file' block driver requires a file name")
        locking = options.pop_str("locking", "auto")
        if locking not in ("on", "off", "auto"):
            raise OpenError(f"invalid parameter value: {locking}")
        aio = options.pop_str("aio", self.flags.aio)
        if aio not in ("threads", "native", "io_uring"):
            raise OpenError(f"invalid parameter value: {aio}")
        if aio == "native" and not self.flags.direct:
            raise OpenError(
                "aio=native was specified, but it requires cache.direct=on, which was not specified."
            )
        options.pop("aio-max-batch")
        options.pop("pr-manager")
        options.pop("x-check-cache-dropped")
        options.pop("drop-cache")
        self.filename = filename
        self.options["filename"] = filename
        mode = os.O_RDWR if self.flags.read_write else os.O_RDONLY
        try:
            self.fd = os.open(filename, mode | os.O_CLOEXEC)
        except OSError as exc:
            raise OpenError(
                f"Could not open '{filename}': {os.strerror(exc.errno or errno.EIO)}",
                exc.errno or errno.EIO,
            ) from None
        st = os.fstat(self.fd)
        # QEMU's raw_open_common: each driver accepts only its own kind of host file
        if self.device and not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            wrong = f"requires '{filename}' to be either a character or block device"
        elif not self.device and not stat.S_ISREG(st.st_mode):
            wrong = f"requires '{filename}' to be a regular file"
        else:
            wrong = ""
        if wrong:
            os.close(self.fd)
            self.fd = -1
            raise OpenError(f"'{self.format_name}' driver {wrong}", errno.EINVAL)
        self._is_regular = stat.S_ISREG(st.st_mode)
        if locking != "off":
            hostio.lock_image(self.fd, filename, self.flags.read_write, self.flags.force_share)

    async def drv_reopen(self, options: Options, read_write: bool) -> None:
        if read_write == self.flags.read_write:
            return
        mode = os.O_RDWR if read_write else os.O_RDONLY
        try:
            fd = os.open(self.filename, mode | os.O_CLOEXEC)
        except OSError as exc:
            raise OpenError(
                f"Could not open '{self.filename}': {os.strerror(exc.errno or errno.EIO)}",
                exc.errno or errno.EIO,
            ) from None
        os.close(self.fd)
        self.fd = fd

    def allocated_file_size(self) -> int | None:
        return os.fstat(self.fd).st_blocks * 512

    def drv_getlength(self) -> int:
        if self._is_regular:
            return os.fstat(self.fd).st_size
        return os.lseek(self.fd, 0, os.SEEK_END)

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        length = len(buf)
        done = 0
        try:
            while done < length:
                n = os.preadv(self.fd, [buf[done:]], offset + done)
                if n == 0:
                    zero_fill(buf[done:])
                    break
                done += n
        except OSError as exc:
            await scheduler.io(COST_READ)
            raise BlockError(exc.errno or errno.EIO) from None
        await scheduler.io(COST_READ + length / _MIB * COST_PER_MIB)

    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        length = len(data)
        done = 0
        try:
            # One pwritev for the request (repeated data: iovecs pointing at one block), a
            # loop only for what a short write left.
            done = os.pwritev(self.fd, iovecs(data), offset)
            while done < length:
                done += os.pwritev(self.fd, iovecs(data[done:]), offset + done)
        except OSError as exc:
            await scheduler.io(COST_WRITE)
            raise BlockError(exc.errno or errno.EIO) from None
        await scheduler.io(COST_WRITE + length / _MIB * COST_PER_MIB)

    async def drv_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        await scheduler.io(COST_WRITE)
        if not self._is_regular:
            raise BlockError(errno.ENOTSUP)
        size = os.fstat(self.fd).st_size
        if flags & ReqFlags.MAY_UNMAP and offset + length <= size:
            if hostio.punch_hole(self.fd, offset, length):
                return
        if hostio.zero_range(self.fd, offset, length):
            return
        raise BlockError(errno.ENOTSUP)

    async def drv_pdiscard(self, offset: int, length: int) -> None:
        await scheduler.io(COST_WRITE)
        if not self._is_regular or not hostio.punch_hole(self.fd, offset, length):
            raise BlockError(errno.ENOTSUP)

    async def drv_flush_to_disk(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            await scheduler.io(COST_FLUSH)
            raise BlockError(exc.errno or errno.EIO) from None
        await scheduler.io(COST_FLUSH)

    async def drv_truncate(self, length: int, exact: bool, prealloc: str) -> None:
        if not self._is_regular:
            if prealloc != "off":
                raise OpenError(
                    f"Preallocation mode '{prealloc}' unsupported for this non-regular file",
                    errno.ENOTSUP,
                )
            current = self.drv_getlength()
            if length != current and exact:
                raise OpenError("Cannot resize device files", errno.ENOTSUP)
            if length > current:
                raise OpenError("Cannot grow device files", errno.EINVAL)
            return
        self._regular_truncate(length, prealloc)

    def _regular_truncate(self, length: int, prealloc: str) -> None:
        """file-posix's handle_aiocb_truncate, including its side effects on the file."""
        current = os.fstat(self.fd).st_size
        if current > length and prealloc != "off":
            raise OpenError("Cannot use preallocation for shrinking files", errno.ENOTSUP)
        if prealloc not in ("off", "falloc", "full"):
            raise OpenError(f"Unsupported preallocation mode: {prealloc}", errno.ENOTSUP)
        try:
            if prealloc == "off":
                self._host_call("Could not resize file", os.ftruncate, self.fd, length)
                if current == 0 and length > 0:
                    self._allocate_first_block(length)
                return
            if prealloc == "falloc":
                if length != current:
                    self._host_call(
                        "Could not preallocate new data",
                        os.posix_fallocate,
                        self.fd,
                        current,
                        length - current,
                    )
                    if current == 0:
                        self._allocate_first_block(length)
                return
            if length > current and self.flags.direct:
                # QEMU writes the zeros from an unaligned heap buffer, which O_DIRECT
                # refuses: the file is grown, the write fails, the old length comes back.
                os.ftruncate(self.fd, length)
                raise OpenError(
                    "Could not write zeros for preallocation: Invalid argument", errno.EINVAL
                )
            self._host_call("Could not resize file", os.ftruncate, self.fd, length)
            zero = bytes(65536)
            pos = current
            while pos < length:
                n = min(len(zero), length - pos)
                self._host_call(
                    "Could not write zeros for preallocation", os.pwrite, self.fd, zero[:n], pos
                )
                pos += n
            self._host_call("Could not flush file to disk", os.fsync, self.fd)
        except OpenError:
            try:  # as QEMU: a failed resize puts the old length back
                os.ftruncate(self.fd, current)
            except OSError:
                pass
            raise

    @staticmethod
    def _host_call(what: str, func: Callable[..., object], *args: object) -> None:
        try:
            func(*args)
        except OSError as exc:
            err = exc.errno or errno.EIO
            raise OpenError(f"{what}: {os.strerror(err)}", err) from None

    def _allocate_first_block(self, length: int) -> None:
        """QEMU writes zeros over the start of a file it grows from empty (to speed up its
        alignment probing later), which extends a file grown to less than 512 bytes."""
        size = SECTOR if length < 4096 else 4096
        try:
            os.pwrite(self.fd, bytes(size), 0)
        except OSError:
            pass  # failures are ignored, as in QEMU

    async def drv_block_status(
        self, offset: int, length: int, want_zero: bool
    ) -> BlockStatus | None:
        if not want_zero or not self._is_regular:
            return BlockStatus(length, data=True, offset=offset, node=self)
        data, run = hostio.data_or_hole(self.fd, offset, length)
        return BlockStatus(run, data=data, zero=not data, offset=offset, node=self)

    def drv_get_info(self) -> DriverInfo | None:
        return DriverInfo(0, 0)

    async def drv_close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
