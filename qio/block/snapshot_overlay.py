"""``-s`` / ``open -s``: a temporary qcow2 overlay on top of the image (QEMU's snapshot=on).

Writes go to a fresh qcow2 file in the temporary directory whose backing node is the opened
image; the file is deleted when the image is closed, so the image itself is never modified.
"""

from __future__ import annotations

import os
import tempfile

from qio.block.coroutine import scheduler
from qio.block.node import BlockNode, OpenFlags
from qio.block.open import OpenContext, open_node
from qio.block.options import Options
from qio.errors import OpenError


def append_temp_snapshot(
    ctx: OpenContext, image: BlockNode, flags: OpenFlags
) -> tuple[BlockNode, str]:
    """Open a temporary overlay above ``image``; returns (overlay node, its file name)."""
    from qio.block.qcow2.create import create_qcow2

    size = image.getlength()
    fd, path = tempfile.mkstemp(prefix="vl.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.close(fd)
    try:
        create_qcow2(path, size)
        options = Options({"driver": "qcow2", "file.driver": "file", "file.filename": path})
        overlay_flags = flags.copy()
        overlay_flags.snapshot = False
        overlay_flags.no_backing = True
        overlay = scheduler.run_sync(open_node(ctx, None, options, overlay_flags))
    except (OpenError, OSError) as exc:
        os.unlink(path)
        message = exc.message if isinstance(exc, OpenError) else str(exc)
        raise OpenError(f"Could not create temporary overlay '{path}': {message}") from None
    overlay.attach("backing", image)
    return overlay, path
