"""Creating a host file as QEMU 7.2's file-posix ``raw_co_create`` does.

The file is created (mode 0644) if missing, emptied, then grown to ``size`` with the requested
preallocation through the ``file`` driver's own truncate, so the result (including the zeroed
first block file-posix writes to speed up alignment probing later) is the driver's.
"""

from __future__ import annotations

import errno
import os

from qio.block.node import OpenFlags
from qio.block.open import OpenContext, open_node
from qio.block.options import Options
from qio.errors import OpenError

UINT32_MAX = (1 << 32) - 1


def check_extent_size_hint(hint: int | None) -> None:
    if hint is not None and hint > UINT32_MAX:
        raise OpenError("Extent size hint is too large", errno.EINVAL)


async def create_file(
    filename: str,
    size: int,
    prealloc: str,
    *,
    extent_size_hint: int | None = None,
    program: str = "qio",
) -> None:
    """Create (or empty) ``filename`` and grow it to ``size`` bytes; OpenError on failure.

    ``size`` is rounded up to 512 bytes.  A ``file:`` prefix is taken off as in QEMU.
    """
    check_extent_size_hint(extent_size_hint)
    path = filename[len("file:") :] if filename.startswith("file:") else filename
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        err = exc.errno or errno.EIO
        raise OpenError(f"Could not create '{path}': {os.strerror(err)}", err) from None
    os.close(fd)
    ctx = OpenContext(None, program)
    flags = OpenFlags()
    flags.read_write = True
    node = await open_node(ctx, None, Options({"driver": "file", "filename": path}), flags)
    try:
        # file-posix calls its truncate helper directly: no generic size checks, so a
        # negative size fails in ftruncate ("Could not resize file: Invalid argument").
        await node.drv_truncate(0, True, "off")
        await node.drv_truncate(-(-size // 512) * 512 if size >= 0 else size, True, prealloc)
    finally:
        await node.close()
