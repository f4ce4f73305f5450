"""``null-co`` and ``null-aio``: protocol drivers without storage.

Writes are accepted and dropped.  Reads leave the caller's buffer untouched unless
``read-zeroes`` is on (qemu-io pre-fills its buffers with 0xab, which is what a read then
shows).  ``latency-ns`` delays every request, handy for exercising the statistics lines.
"""

from __future__ import annotations

import errno
import time

from qio.block.coroutine import FatalError, scheduler
from qio.block.node import BlockNode, BlockStatus, ReqFlags, zero_fill
from qio.block.options import Options
from qio.block.payload import WriteData
from qio.errors import BlockError, OpenError, OptionError
from qio.numbers import UINT64_MAX


class NullCoNode(BlockNode):
    format_name = "null-co"
    protocol_name = "null-co"

    size = 1 << 30
    latency_ns = 0
    completes_via_bh = False  # null-aio completes through a bottom half, null-co in place
    read_zeroes = False

    @classmethod
    def parse_filename(cls, filename: str, options: Options) -> None:
        if filename != f"{cls.protocol_name}://":
            raise OpenError(
                f"The only allowed filename for this driver is '{cls.protocol_name}://'"
            )

    async def open(self, options: Options) -> None:
        # A "filename" option is not this driver's (null-co:// is parsed away before open).
        # QEMU absorbs the options with &error_abort: a malformed value aborts.
        try:
            self.size = options.pop_size("size", 1 << 30)
            latency = options.pop_int("latency-ns", 0) & UINT64_MAX
            self.read_zeroes = options.pop_bool("read-zeroes", False)
        except OptionError as exc:
            raise self._abort(str(exc)) from None
        self.latency_ns = latency - (1 << 64) if latency >> 63 else latency  # an int64_t
        if self.latency_ns < 0:
            raise OpenError("latency-ns is invalid")
        self.filename = f"{self.protocol_name}://"
        self.options.update({"size": self.size, "read-zeroes": self.read_zeroes})

    def _abort(self, message: str) -> FatalError:
        """The "Unexpected error" report of an &error_abort option parse failure."""
        message = message.split("\n")[0]  # error_abort prints no hints
        if "expects 'on' or 'off'" in message:
            where = "qapi_bool_parse() at ../../qapi/qapi-util.c:104"
        elif "is too large" in message:
            where = "parse_option_number() at ../../util/qemu-option.c:99"
        elif "expects a number" in message:
            where = "parse_option_number() at ../../util/qemu-option.c:104"
        elif "out of range" in message:
            where = "parse_option_size() at ../../util/qemu-option.c:140"
        else:
            where = "parse_option_size() at ../../util/qemu-option.c:145"
        return FatalError(
            f"Unexpected error in {where}:\n{self.context.program}: {message}", abort=True
        )

    def drv_getlength(self) -> int:
        return self.size

    async def _delay(self) -> None:
        if self.latency_ns:
            time.sleep(self.latency_ns / 1e9)
            await scheduler.io(self.latency_ns / 1000.0)
        elif self.completes_via_bh:
            await scheduler.io(0.0)

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        await self._delay()
        if self.read_zeroes:
            zero_fill(buf)

    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        await self._delay()

    # No zero-write or discard hooks, as in QEMU: zero writes fall back to writing a zero
    # buffer (so ``write -z -n`` is "not supported") and discards succeed doing nothing.
    async def drv_pdiscard(self, offset: int, length: int) -> None:
        pass

    async def drv_flush_to_disk(self) -> None:
        await self._delay()

    async def drv_block_status(
        self, offset: int, length: int, want_zero: bool
    ) -> BlockStatus | None:
        return BlockStatus(length, zero=self.read_zeroes, offset=offset, node=self)

    async def drv_truncate(self, length: int, exact: bool, prealloc: str) -> None:
        raise OpenError("Image format driver does not support resize", errno.ENOTSUP)

    async def drv_load_vmstate(self, offset: int, buf: memoryview) -> None:
        raise BlockError(errno.ENOTSUP)


class NullAioNode(NullCoNode):
    format_name = "null-aio"
    protocol_name = "null-aio"
    completes_via_bh = True
