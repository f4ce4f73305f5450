"""A minimal stand-in for the blkverify driver, for testing qio-nbd's mismatch handling.

It follows the interface qio-nbd expects from the real driver: on a read mismatch it builds a
``Mismatch`` and asks ``self.context.mismatch_handler``; ``"raw"`` means answer with the raw
child's bytes, ``"error"`` means fail with EIO.  Without a handler (qemu-io) it ends the
program with qemu-io's line.  With ``mode=fatal`` it always ends the program, like a driver
that does not know about handlers, which the server must survive too.

Run a server with it:  python -m tests.fake_blkverify [qio-nbd arguments]
"""

from __future__ import annotations

import errno
import sys

from qio.block import registry
from qio.block.coroutine import FatalError
from qio.block.node import BlockNode, ReqFlags
from qio.block.open import open_child
from qio.block.options import Options
from qio.errors import BlockError, OpenError
from qio.results import Mismatch


class FakeVerifyNode(BlockNode):
    format_name = "blkverify"
    protocol_name = "blkverify"
    is_filter = True

    raw: BlockNode
    test: BlockNode
    fatal = False

    async def open(self, options: Options) -> None:
        raw_name = options.pop_str("x-raw")
        test_name = options.pop_str("x-image")
        self.fatal = options.pop_str("mode", "handler") == "fatal"
        if raw_name is None or test_name is None:
            raise OpenError("blkverify requires raw copy and original image path")
        raw = await open_child(self.context, raw_name, options, "raw", self.flags)
        test = await open_child(self.context, test_name, options, "test", self.flags)
        assert raw is not None and test is not None
        self.raw = self.attach("raw", raw)
        self.test = self.attach("test", test)

    def drv_getlength(self) -> int:
        return self.test.getlength()

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        raw = bytearray(len(buf))
        await self.test.preadv(offset, buf, flags)
        await self.raw.preadv(offset, memoryview(raw), flags)
        if bytes(buf) == bytes(raw):
            return
        first = next(i for i in range(len(buf)) if buf[i] != raw[i])
        mismatch = Mismatch("read", offset, len(buf), offset=offset + first)
        handler = self.context.mismatch_handler
        if handler is None or self.fatal:
            raise FatalError(mismatch.qemu_line())
        action = handler(mismatch)
        if action == "raw":
            buf[:] = raw
        else:
            raise BlockError(errno.EIO)

    async def drv_pwritev(self, offset: int, data: memoryview, flags: ReqFlags) -> None:
        await self.test.pwritev(offset, data, flags)
        await self.raw.pwritev(offset, data, flags)

    async def drv_flush(self) -> bool:
        await self.test.flush()
        return True


def main() -> int:
    registry._DRIVERS["blkverify"] = "tests.fake_blkverify:FakeVerifyNode"
    from qio.nbd.server import main as server_main

    return server_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
