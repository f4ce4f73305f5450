"""The ``blkverify`` filter: run every request on a trusted copy and on the image under test.

Two children: ``raw``, the reference copy, opened at protocol level (its bytes, never
probed), and ``test``, the image under test (probed unless a driver is given).  Reads go to
both children and the data is compared byte by byte; writes go to both and only the return
values are compared.  The node's length is the test child's, a flush reaches only the test
child, and discards are accepted and reach neither child, all as in QEMU 7.2.

At the first difference qemu-io 7.2 prints one line on stderr and ends the process with status
1; qio does the same (``BlkverifyExit``).  With the qio option ``mismatch=report`` the request
fails with EIO instead and the session goes on (``BlkverifyMismatch``); see
docs/blkverify.md.  A server (qio-nbd) decides for itself: when the open context has a
``mismatch_handler`` it is asked, and answers "raw" (the request gets the trusted raw child's
outcome: its data, or its error) or "error" (the request fails with EIO).

Where QEMU 7.2 crashes or lets the children drift apart, qio keeps them equal:

* a zero write (``write -z``) aborts qemu-io 7.2 with a failed assertion; qio zeroes the range
  on both children (and compares the return values as for writes);
* ``truncate`` resizes only the raw child in 7.2 (the visible length does not change); qio
  resizes both children.
"""

from __future__ import annotations

import errno
from collections.abc import Coroutine
from typing import Any

from qio.block.compare import first_difference
from qio.block.mismatch import BlkverifyExit, BlkverifyMismatch
from qio.block.node import BlockNode, ReqFlags
from qio.block.open import open_child
from qio.block.options import Options
from qio.block.payload import WriteData
from qio.errors import BlockError, OpenError
from qio.results import Mismatch

MISMATCH_MODES = ("exit", "report")
SCRATCH_LIMIT = 4 << 20  # largest raw-side read buffer kept for the next request
WINDOW = 64  # bytes of each child kept around a content mismatch (for terminal views)


class BlkverifyNode(BlockNode):
    format_name = "blkverify"
    protocol_name = "blkverify"
    is_filter = True

    raw: BlockNode
    test: BlockNode
    report_mismatches = False
    _scratch: bytearray | None = None

    @classmethod
    def parse_filename(cls, filename: str, options: Options) -> None:
        prefix = "blkverify:"
        if not filename.startswith(prefix):
            # Without the prefix the filename names the test image; the rest are options.
            options.set("x-image", filename)
            return
        raw_path, colon, test_path = filename[len(prefix) :].partition(":")
        if not colon:
            raise OpenError("blkverify requires raw copy and original image path")
        options.set("x-raw", raw_path)
        options.set("x-image", test_path)

    async def open(self, options: Options) -> None:
        raw_path = options.pop_str("x-raw")
        test_path = options.pop_str("x-image")
        mode = options.pop_str("mismatch", "exit")
        if mode not in MISMATCH_MODES:
            raise OpenError(f"Parameter 'mismatch' expects 'exit' or 'report', not '{mode}'")
        self.report_mismatches = mode == "report"
        raw = await open_child(self.context, raw_path, options, "raw", self.flags)
        assert raw is not None
        self.raw = self.attach("raw", raw)
        self.file = raw  # QEMU's bs->file: the primary child (breakpoints, info)
        test = await open_child(
            self.context, test_path, options, "test", self.flags, protocol=False
        )
        assert test is not None
        self.test = self.attach("test", test)
        self.filename = f"blkverify:{raw.filename}:{test.filename}"
        if self.report_mismatches:
            self.options["mismatch"] = mode
        limits = [n.max_transfer for n in (raw, test) if n.max_transfer]
        self.max_transfer = min(limits) if limits else 0

    def child_offset(self, child: BlockNode) -> int | None:
        return 0 if child in (self.raw, self.test) else None

    def drv_getlength(self) -> int:
        return self.test.getlength()

    # -- requests ---------------------------------------------------------------------------
    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        # The raw child's copy goes into a buffer kept between requests of the same size
        # (a streamed read's chunks), so its pages are not faulted in again every time.
        scratch = self._scratch
        if scratch is None or len(scratch) != len(buf):
            scratch = bytearray(len(buf))
        self._scratch = None  # in use (another request may run while this one waits)
        raw_buf = memoryview(scratch)
        test_error = await _outcome(self.test.preadv(offset, buf, flags))
        raw_error = await _outcome(self.raw.preadv(offset, raw_buf, flags))
        try:
            self._check_read(offset, buf, raw_buf, test_error, raw_error)
        finally:
            if len(scratch) <= SCRATCH_LIMIT:
                self._scratch = scratch

    def _check_read(
        self,
        offset: int,
        buf: memoryview,
        raw_buf: memoryview,
        test_error: BlockError | None,
        raw_error: BlockError | None,
    ) -> None:
        error = self._settle("read", offset, len(buf), test_error, raw_error)
        if error is not None:
            raise error  # when both failed alike, their buffers mean nothing
        if test_error is not None:
            buf[:] = raw_buf  # a handler chose the raw child's outcome
            return
        at = first_difference(buf, raw_buf)
        if at is not None:
            lo = max(0, at - WINDOW // 2)
            lo -= lo % 16
            mismatch = Mismatch(
                "read",
                offset,
                len(buf),
                offset + at,
                raw_bytes=bytes(raw_buf[lo : lo + WINDOW]),
                test_bytes=bytes(buf[lo : lo + WINDOW]),
                window_offset=offset + lo,
            )
            self._fail(mismatch)
            buf[:] = raw_buf  # a handler chose the trusted copy

    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        test_error = await _outcome(self.test.pwritev(offset, data, flags))
        raw_error = await _outcome(self.raw.pwritev(offset, data, flags))
        error = self._settle("write", offset, len(data), test_error, raw_error)
        if error is not None:
            raise error

    async def drv_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        # qemu-io 7.2 aborts here (an assertion in the generic layer); zeroing both children
        # keeps them equal.
        test_error = await _outcome(self.test.pwrite_zeroes(offset, length, flags))
        raw_error = await _outcome(self.raw.pwrite_zeroes(offset, length, flags))
        error = self._settle("write", offset, length, test_error, raw_error)
        if error is not None:
            raise error

    async def drv_flush(self) -> bool:
        # As QEMU: only the test image's data matters on disk.
        await self.test.flush()
        return True

    async def drv_truncate(self, length: int, exact: bool, prealloc: str) -> None:
        # QEMU 7.2 resizes only the raw child; both children keep the same length here.
        await self.test.truncate(length, exact, prealloc)
        await self.raw.truncate(length, exact, prealloc)

    async def drv_reopen(self, options: Options, read_write: bool) -> None:
        raise OpenError(
            f"Block format 'blkverify' used by node '{self.node_name}' does not support "
            "reopening files"
        )

    async def drv_close(self) -> None:
        # QEMU's blkverify_close drops the test child first.
        test = self.children.get("test")
        if test is not None:
            await test.close()

    # -- mismatches -------------------------------------------------------------------------
    def _settle(
        self,
        op: str,
        offset: int,
        length: int,
        test_error: BlockError | None,
        raw_error: BlockError | None,
    ) -> BlockError | None:
        """Compare the children's return values; the error the request ends with."""
        test_ret = -test_error.errno if test_error is not None else 0
        raw_ret = -raw_error.errno if raw_error is not None else 0
        if test_ret == raw_ret:
            return test_error
        self._fail(Mismatch(op, offset, length, test_ret=test_ret, raw_ret=raw_ret))
        return raw_error  # a handler chose the trusted copy's outcome

    def _fail(self, mismatch: Mismatch) -> None:
        """What a mismatch does: returns only when a server's handler chose the raw copy."""
        handler = self.context.mismatch_handler
        if handler is not None:
            if handler(mismatch) == "raw":
                return
            raise BlockError(errno.EIO)
        if self.report_mismatches:
            raise BlkverifyMismatch(mismatch, self)
        raise BlkverifyExit(mismatch, self)


async def _outcome(request: Coroutine[Any, Any, None]) -> BlockError | None:
    """Run one child request; its error (QEMU's negative return value) or None."""
    try:
        await request
    except BlockError as exc:
        return exc
    return None
