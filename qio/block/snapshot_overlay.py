"""``-s`` / ``open -s``: a temporary qcow2 overlay on top of the opened image.

QEMU's bdrv_append_temp_snapshot creates an empty qcow2 image as large as the image, in
``$TMPDIR`` (default ``/var/tmp``), opens it with cache=unsafe and the original image attached
as its backing node, and puts it on top; writes land in the overlay and vanish with it.  QEMU
7.2 unlinks the file as soon as it is open, so nothing is left behind even when the process is
killed; qio does the same.

The overlay is made by qio's qcow2 creator (qio.block.qcow2.create, the code behind
``qio-img create``), as QEMU calls bdrv_create for it, so it has exactly the layout
``qemu-img create -f qcow2`` gives.
"""

from __future__ import annotations

import errno
import os
import random
import string

from qio.block.node import BlockNode, OpenFlags
from qio.block.open import OpenContext, open_node
from qio.block.options import Options
from qio.block.qcow2.create import CreateError, Qcow2CreateOptions, create_qcow2
from qio.errors import OpenError


def temporary_directory() -> str:
    return os.environ.get("TMPDIR") or "/var/tmp"


async def append_temp_snapshot(ctx: OpenContext, base: BlockNode, flags: OpenFlags) -> BlockNode:
    """Open a temporary qcow2 overlay above ``base`` and return it (the new root)."""
    suffix = "".join(random.choices(string.ascii_letters + string.digits, k=6))
    path = os.path.join(temporary_directory(), f"vl.{suffix}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        err = exc.errno or errno.EIO
        raise OpenError(
            f"Could not open temporary file '{path}': {os.strerror(err)}", err
        ) from None
    try:
        os.close(fd)
        try:
            await create_qcow2(path, Qcow2CreateOptions(size=base.getlength()), ctx.program)
        except CreateError as exc:
            raise OpenError(
                f"Could not create temporary overlay '{path}': {exc.message}", exc.errno
            ) from None
        options = Options(
            {
                "driver": "qcow2",
                "file.driver": "file",
                "file.filename": path,
                "backing": base.node_name,
                "cache.direct": "off",
                "cache.no-flush": "on",
            }
        )
        overlay_flags = flags.copy()
        overlay_flags.snapshot = False
        overlay_flags.force_share = False  # -U is an option of the image, not a flag
        overlay_flags.aio = "threads"  # aio=native needs O_DIRECT, which the overlay lacks
        return await open_node(ctx, None, options, overlay_flags)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
