"""qio-img snapshot: qemu-img 7.2's img_snapshot for qcow2 internal snapshots.

``-l`` lists (read-only open), ``-c`` creates, ``-a`` applies (reverts the disk), ``-d``
deletes; exactly one of them, and no ``-f`` (the format is always probed).  Formats without
internal snapshots fail as in qemu-img: raw's list is empty, create/apply report ENOTSUP.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import TYPE_CHECKING

from qio.block.coroutine import scheduler
from qio.block.node import BlockNode
from qio.block.qcow2 import internal_snapshots as ops
from qio.block.qcow2.snapshots import Snapshot, find_by_id_and_name
from qio.errors import BlockError
from qio.getopt import LongOption
from qio.img import opts
from qio.img.common import ImgError, OpenSpec, error, open_image, usage_error

if TYPE_CHECKING:
    from qio.block.qcow2.driver import Qcow2Node

LONGOPTS = (
    LongOption("object", True, "object"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("force-share", False, "U"),
)
NAME_MAX = 255  # QEMUSnapshotInfo.name is char[256]


def _dump(snapshots: list[Snapshot]) -> str:
    """dump_snapshots: qemu-img's table (nothing at all when there are no snapshots)."""
    from qio.img.info import SnapshotInfo, snapshot_dump, snapshot_dump_header

    if not snapshots:
        return ""
    rows = [
        snapshot_dump(
            SnapshotInfo(
                sn.id_str,
                sn.name,
                sn.vm_state_size,
                sn.date_sec,
                sn.date_nsec,
                sn.vm_clock_nsec,
                sn.icount if sn.has_icount else None,
            )
        )
        for sn in snapshots
    ]
    return "Snapshot list:\n" + snapshot_dump_header() + "\n" + "".join(r + "\n" for r in rows)


def _qcow2(node: BlockNode) -> Qcow2Node | None:
    """The node when it is a qcow2 image (the only format with internal snapshots)."""
    from qio.block.qcow2.driver import Qcow2Node

    return node if isinstance(node, Qcow2Node) else None


def _reopen_fallback(node: BlockNode) -> None:
    """bdrv_snapshot_goto on a format without snapshots closes the format, tries its file
    and opens the format again: a probed raw image repeats its warning."""
    from qio.block.drivers.raw import probe_warning

    if node.format_name == "raw" and getattr(node, "probed", False) and node.file is not None:
        node.context.err(probe_warning(node.file.filename))


def _truncate_name(name: str) -> str:
    raw = os.fsencode(name)[:NAME_MAX]
    return os.fsdecode(raw)


def run(argv: list[str]) -> int:
    options, operands = opts.parse(argv, ":la:c:d:hqU", LONGOPTS)
    action: str | None = None
    name = ""
    quiet = force_share = image_opts = False
    for opt, arg in options:
        if opt in "lacd" and len(opt) == 1:
            if action is not None:
                raise usage_error("Cannot mix '-l', '-a', '-c', '-d'")
            action = opt
            name = arg or ""
        elif opt == "q":
            quiet = True
        elif opt == "U":
            force_share = True
        elif opt == "image-opts":
            image_opts = True
        elif opt == "object":
            raise ImgError("--object is not supported by qio-img")
    if len(operands) != 1:
        raise usage_error("Expecting one image file name")
    spec = OpenSpec(
        operands[0],
        None,
        image_opts,
        read_write=action != "l",
        force_share=force_share,
        quiet=quiet,
    )
    image = open_image(spec)
    try:
        return _act(image.root, action, name)
    finally:
        image.close()


def _act(root: BlockNode, action: str | None, name: str) -> int:
    if action is None:
        return 0
    node = root
    qcow2 = _qcow2(root)
    if action == "l":
        if qcow2 is not None:
            sys.stdout.write(_dump(scheduler.run_sync(ops.read_snapshots(qcow2))))
        return 0
    if action == "c":
        now_ns = time.time_ns()
        usec = now_ns // 1000
        sn = Snapshot(
            l1_table_offset=0,
            l1_size=0,
            id_str="",
            name=_truncate_name(name),
            date_sec=usec // 1_000_000,
            date_nsec=(usec % 1_000_000) * 1000,
            icount=0,
        )
        try:
            if qcow2 is None:
                raise ops.SnapshotError(errno.ENOTSUP)
            scheduler.run_sync(ops.create(qcow2, sn))
        except (ops.SnapshotError, BlockError) as exc:
            code = exc.errno
            error(f"Could not create snapshot '{name}': {-code} ({os.strerror(code)})")
            return 1
        return 0
    if action == "a":
        try:
            if qcow2 is not None and qcow2.bitmaps.bitmaps:
                # bdrv_snapshot_goto refuses while the node has (persistent) dirty bitmaps
                error(f"Could not apply snapshot '{name}': Device has active dirty bitmaps")
                return 1
            if qcow2 is None:
                _reopen_fallback(node)
                error(f"Could not apply snapshot '{name}': Block driver does not support snapshots")
                return 1
            scheduler.run_sync(ops.goto(qcow2, name))
        except (ops.SnapshotError, BlockError) as exc:
            error(f"Could not apply snapshot '{name}': Failed to load snapshot: "
                  f"{os.strerror(exc.errno)}")
            return 1
        return 0
    # delete: QEMU 7.2's bdrv_snapshot_find looks the name up (not the ID), then the
    # snapshot is deleted by its ID and name
    snapshots = scheduler.run_sync(ops.read_snapshots(qcow2)) if qcow2 is not None else []
    index = find_by_id_and_name(snapshots, None, name)
    if index < 0:
        error(f"Could not delete snapshot '{name}': snapshot not found")
        return 1
    found = snapshots[index]
    try:
        assert qcow2 is not None
        scheduler.run_sync(ops.delete(qcow2, found.id_str, found.name))
    except ops.SnapshotError as exc:
        error(f"Could not delete snapshot '{name}': {exc.message or os.strerror(exc.errno)}")
        return 1
    except BlockError as exc:
        error(f"Could not delete snapshot '{name}': {exc.strerror}")
        return 1
    return 0
