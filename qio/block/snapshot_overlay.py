"""``-s`` / ``open -s``: a temporary qcow2 overlay on top of the opened image.

QEMU's bdrv_append_temp_snapshot creates an empty qcow2 image as large as the image, in
``$TMPDIR`` (default ``/var/tmp``), opens it with cache=unsafe and the original image attached
as its backing node, and puts it on top; writes land in the overlay and vanish with it.  QEMU
7.2 unlinks the file as soon as it is open, so nothing is left behind even when the process is
killed; qio does the same.

The overlay is opened through the driver registry like any image, so this module needs the
qcow2 driver only at run time; it writes the empty image itself (the layout QEMU's qcow2 create
produces: header, refcount table, one refcount block, L1 table) so it does not depend on the
driver's internals.
"""

from __future__ import annotations

import errno
import os
import random
import string
import struct

from qio.block.node import BlockNode, OpenFlags
from qio.block.open import OpenContext, open_node
from qio.block.options import Options
from qio.errors import OpenError

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8
HEADER_LENGTH = 112
FEATURE_TABLE_MAGIC = 0x6803F857
# (type, bit, name): incompatible 0, compatible 1, autoclear 2
FEATURE_NAMES = (
    (0, 0, b"dirty bit"),
    (0, 1, b"corrupt bit"),
    (0, 2, b"external data file"),
    (0, 3, b"compression type"),
    (0, 4, b"extended L2 entries"),
    (1, 0, b"lazy refcounts"),
    (2, 0, b"bitmaps"),
    (2, 1, b"raw external data"),
)


def empty_qcow2(size: int) -> bytes:
    """An empty qcow2 v3 image of ``size`` bytes with 64 KiB clusters and 16-bit refcounts."""
    l1_size = -(-size // (CLUSTER * L2_ENTRIES))
    l1_clusters = -(-(l1_size * 8) // CLUSTER)
    reftable_offset, refblock_offset, l1_offset = CLUSTER, 2 * CLUSTER, 3 * CLUSTER
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQIIB7x",
        b"QFI\xfb",
        3,  # version
        0,  # backing file offset
        0,  # backing file name length
        CLUSTER_BITS,
        size,
        0,  # no encryption
        l1_size,
        l1_offset if l1_size else 0,
        reftable_offset,
        1,  # refcount table clusters
        0,  # snapshots
        0,  # snapshots offset
        0,  # incompatible features
        0,  # compatible features
        0,  # autoclear features
        4,  # refcount order: 16 bits
        HEADER_LENGTH,
        0,  # compression type zlib
    )
    table = b"".join(struct.pack(">BB46s", t, bit, name) for t, bit, name in FEATURE_NAMES)
    extensions = struct.pack(">II", FEATURE_TABLE_MAGIC, len(table)) + table + bytes(8)
    used_clusters = 3 + l1_clusters
    image = bytearray(l1_offset + l1_size * 8)  # QEMU's file ends right after the L1 table
    image[: len(header) + len(extensions)] = header + extensions
    struct.pack_into(">Q", image, reftable_offset, refblock_offset)
    for index in range(used_clusters):
        struct.pack_into(">H", image, refblock_offset + 2 * index, 1)
    return bytes(image)


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
        with os.fdopen(fd, "wb") as f:
            f.write(empty_qcow2(base.getlength()))
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
        overlay_flags.aio = "threads"  # aio=native needs O_DIRECT, which the overlay lacks
        return await open_node(ctx, None, options, overlay_flags)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
