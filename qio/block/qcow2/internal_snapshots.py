"""qcow2 internal snapshots: create, apply (goto), delete — QEMU's block/qcow2-snapshot.c.

A snapshot is a copy of the active L1 table plus one more reference on every cluster it
reaches (L2 tables, data clusters, compressed data).  Shared clusters lose their COPIED flag,
so the next guest write copies them first.  The order of the on-disk updates follows QEMU so
that a crash leaves at worst leaked clusters: new L1 copy and refcounts first, then the new
snapshot table, then the header that points to it, then the old table is freed.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from qio.block.qcow2.cluster import C_COMPRESSED, C_NORMAL, C_ZERO_ALLOC
from qio.block.qcow2.layout import (
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    MAX_L1_BYTES,
    OFLAG_COPIED,
)
from qio.block.qcow2.refcount import DISCARD_SNAPSHOT
from qio.block.qcow2.snapshots import (
    MAX_SNAPSHOTS,
    MAX_TABLE_BYTES,
    Snapshot,
    SnapshotTableError,
    find_by_id_and_name,
    find_by_id_or_name,
    new_snapshot_id,
    serialize_table,
    table_size,
)
from qio.block.qcow2.snapshots import read_snapshots as _read_table
from qio.errors import BlockError
from qio.numbers import hexc

if TYPE_CHECKING:
    from qio.block.qcow2.driver import Qcow2Node


class SnapshotError(Exception):
    """A failed snapshot operation: ``errno`` as QEMU returns it, and its Error text."""

    def __init__(self, err: int, message: str | None = None) -> None:
        super().__init__(message or "")
        self.errno = err
        self.message = message


async def read_snapshots(node: Qcow2Node) -> list[Snapshot]:
    try:
        return await _read_table(node)
    except SnapshotTableError:
        raise BlockError(errno.EINVAL) from None


def _validate_l1(node: Qcow2Node, sn: Snapshot) -> None:
    """qcow2_validate_table for a snapshot's L1 table."""
    if sn.l1_size > MAX_L1_BYTES // 8:
        raise SnapshotError(errno.EFBIG, "Snapshot L1 table too large")
    if (1 << 63) - 1 - sn.l1_size * 8 < sn.l1_table_offset or (
        sn.l1_table_offset % node.cluster_size
    ):
        raise SnapshotError(errno.EINVAL, "Snapshot L1 table offset invalid")


async def _read_l1(node: Qcow2Node, offset: int, entries: int) -> list[int]:
    buf = bytearray(entries * 8)
    if entries:
        await node.image_file.preadv(offset, memoryview(buf))
    return list(struct.unpack(f">{entries}Q", buf))


async def _cluster_refcount(node: Qcow2Node, offset: int, addend: int) -> int:
    """qcow2_update_cluster_refcount (when ``addend``) followed by qcow2_get_refcount."""
    if addend:
        await node.refcounts.update(offset, 1, abs(addend), addend < 0, DISCARD_SNAPSHOT)
    return await node.refcounts.get(offset >> node.cluster_bits)


async def update_snapshot_refcount(
    node: Qcow2Node, l1_offset: int, l1_size: int, addend: int
) -> None:
    """qcow2_update_snapshot_refcount: add ``addend`` (-1, 0, 1) to every cluster the L1
    table at ``l1_offset`` reaches and recompute the COPIED flags in its L1 and L2 tables.

    The active table is taken from memory (snapshot goto relies on that: on disk it has
    already been overwritten).  With ``addend`` < 0 the L1 table is not rewritten."""
    cmap = node.map
    active = l1_offset == cmap.l1_offset
    l1 = cmap.l1_table if active else await _read_l1(node, l1_offset, l1_size)
    l1_modified = False
    try:
        for i in range(l1_size):
            old_l2 = l1[i]
            if not old_l2:
                continue
            l2_offset = old_l2 & L1E_OFFSET_MASK
            if l2_offset % node.cluster_size:
                await node.signal_corruption(
                    True, f"L2 table offset {hexc(l2_offset)} unaligned (L1 index: {hexc(i)})"
                )
                raise BlockError(errno.EIO)
            table = await cmap.load_l2(l2_offset)
            for j in range(cmap.l2_entries):
                old_entry = cmap.entry(table, j)
                entry = old_entry & ~OFLAG_COPIED
                ctype = cmap.cluster_type(entry)
                if ctype == C_COMPRESSED:
                    if addend:
                        coffset, csize = node.compressed.parse(entry)
                        await node.refcounts.update(
                            coffset, csize, abs(addend), addend < 0, DISCARD_SNAPSHOT
                        )
                    refcount = 2  # compressed clusters are never written in place
                elif ctype in (C_NORMAL, C_ZERO_ALLOC) and entry & L2E_OFFSET_MASK:
                    offset = entry & L2E_OFFSET_MASK
                    if offset % node.cluster_size:
                        await node.signal_corruption(
                            True,
                            f"Cluster allocation offset {hexc(offset)} unaligned "
                            f"(L2 offset: {hexc(l2_offset)}, L2 index: {hexc(j)})",
                        )
                        raise BlockError(errno.EIO)
                    refcount = await _cluster_refcount(node, offset, addend)
                else:
                    refcount = 0
                if refcount == 1:
                    entry |= OFLAG_COPIED
                if entry != old_entry:
                    if addend > 0:
                        node.l2_cache.set_dependency(node.refblock_cache)
                    # the table may have been evicted meanwhile: look it up again
                    table = await cmap.load_l2(l2_offset)
                    cmap.set_entry(table, j, entry)
                    node.l2_cache.mark_dirty(table)
            refcount = await _cluster_refcount(node, l2_offset, addend)
            new_l2 = l2_offset | OFLAG_COPIED if refcount == 1 else l2_offset
            if new_l2 != old_l2:
                l1[i] = new_l2
                l1_modified = True
        await node.flush_caches()
    finally:
        await node.refcounts.process_discards()
    if addend >= 0 and l1_modified:
        await node.write_sync(l1_offset, struct.pack(f">{l1_size}Q", *l1[:l1_size]))


async def _check_write(node: Qcow2Node, offset: int, size: int, kind: str | None) -> None:
    """qcow2_pre_write_overlap_check; an empty write (the L1 table of a 0-byte image)
    overlaps nothing."""
    if size:
        await node.check_metadata_write(offset, size, kind)


async def _free(node: Qcow2Node, offset: int, length: int) -> None:
    """qcow2_free_clusters outside a refcount walk: QEMU passes the discard down at once
    (pass-discard-snapshot), so the freed clusters read back as zeros in the file."""
    await node.refcounts.free_clusters(offset, length, DISCARD_SNAPSHOT)
    await node.refcounts.process_discards()


async def write_snapshots(node: Qcow2Node, snapshots: list[Snapshot]) -> None:
    """qcow2_write_snapshots: the table goes to new clusters, then the header is switched
    and the old table freed."""
    h = node.header
    size = table_size(snapshots)
    if size > MAX_TABLE_BYTES:
        raise BlockError(errno.EFBIG)
    new_offset = await node.refcounts.alloc_clusters(size) if snapshots else 0
    await node.flush_caches()
    await node.image_file.flush()
    if snapshots:
        await _check_write(node, new_offset, size, None)
        await node.image_file.pwritev(new_offset, memoryview(serialize_table(snapshots)))
    await node.image_file.flush()
    await node.write_sync(60, struct.pack(">IQ", len(snapshots), new_offset))
    old_offset, old_size = h.snapshots_offset, node.snapshot_table_bytes
    h.nb_snapshots = len(snapshots)
    h.snapshots_offset = new_offset
    node.snapshot_table_bytes = size
    node.snapshot_l1s = [(sn.l1_table_offset, sn.l1_size) for sn in snapshots]
    node.metadata_changed()
    if old_offset and old_size:
        await _free(node, old_offset, old_size)


async def create(node: Qcow2Node, sn: Snapshot) -> None:
    """qcow2_snapshot_create; ``sn`` carries name, date, clock; the ID is assigned here."""
    snapshots = await read_snapshots(node)
    if len(snapshots) >= MAX_SNAPSHOTS:
        raise SnapshotError(errno.EFBIG)
    if node.has_data_file:
        raise SnapshotError(errno.ENOTSUP)
    cmap = node.map
    sn.id_str = new_snapshot_id(snapshots)
    sn.disk_size = node.getlength()
    l1_size = cmap.l1_size
    l1_offset = await node.refcounts.alloc_clusters(l1_size * 8)
    sn.l1_table_offset = l1_offset
    sn.l1_size = l1_size
    await _check_write(node, l1_offset, l1_size * 8, None)
    await node.image_file.pwritev(
        l1_offset, memoryview(struct.pack(f">{l1_size}Q", *cmap.l1_table))
    )
    await update_snapshot_refcount(node, cmap.l1_offset, l1_size, 1)
    await write_snapshots(node, [*snapshots, sn])


async def goto(node: Qcow2Node, id_or_name: str) -> None:
    """qcow2_snapshot_goto: make the snapshot's L1 table the active one."""
    if node.has_data_file:
        raise SnapshotError(errno.ENOTSUP)
    snapshots = await read_snapshots(node)
    index = find_by_id_or_name(snapshots, id_or_name)
    if index < 0:
        raise SnapshotError(errno.ENOENT)
    sn = snapshots[index]
    try:
        _validate_l1(node, sn)
    except SnapshotError as exc:
        node.context.err(f"{node.context.program}: {exc.message}\n")
        raise SnapshotError(exc.errno) from None
    cmap = node.map
    if sn.disk_size != node.getlength():
        await node.truncate(sn.disk_size, True, "off")
    await cmap.grow_l1_table(sn.l1_size, True)
    cur_size = cmap.l1_size
    sn_l1 = await _read_l1(node, sn.l1_table_offset, sn.l1_size)
    sn_l1 += [0] * (cur_size - len(sn_l1))
    await update_snapshot_refcount(node, sn.l1_table_offset, sn.l1_size, 1)
    await _check_write(node, cmap.l1_offset, cur_size * 8, "l1")
    await node.write_sync(cmap.l1_offset, struct.pack(f">{cur_size}Q", *sn_l1))
    try:
        await update_snapshot_refcount(node, cmap.l1_offset, cur_size, -1)
    finally:
        cmap.l1_table[:] = sn_l1
        node.metadata_changed()
    await update_snapshot_refcount(node, cmap.l1_offset, cur_size, 0)


async def delete(node: Qcow2Node, id_str: str, name: str) -> None:
    """qcow2_snapshot_delete: drop the table entry, then the snapshot's references."""
    if node.has_data_file:
        raise SnapshotError(errno.ENOTSUP)
    snapshots = await read_snapshots(node)
    index = find_by_id_and_name(snapshots, id_str, name)
    if index < 0:
        raise SnapshotError(errno.ENOENT, "Can't find the snapshot")
    sn = snapshots.pop(index)
    _validate_l1(node, sn)
    try:
        await write_snapshots(node, snapshots)
    except BlockError as exc:
        raise SnapshotError(
            exc.errno, f"Failed to remove snapshot from snapshot list: {exc.strerror}"
        ) from None
    try:
        await update_snapshot_refcount(node, sn.l1_table_offset, sn.l1_size, -1)
    except BlockError as exc:
        raise SnapshotError(
            exc.errno, f"Failed to free the cluster and L1 table: {exc.strerror}"
        ) from None
    await _free(node, sn.l1_table_offset, sn.l1_size * 8)
    try:
        await update_snapshot_refcount(node, node.map.l1_offset, node.map.l1_size, 0)
    except BlockError as exc:
        raise SnapshotError(
            exc.errno, f"Failed to update snapshot status in disk: {exc.strerror}"
        ) from None





async def load_tmp(node: Qcow2Node, id_str: str | None, name: str | None) -> None:
    """qcow2_snapshot_load_tmp: a read-only image shows the snapshot's L1 table as its
    active one (the virtual size stays the image's)."""
    if node.flags.read_write:
        raise SnapshotError(errno.EINVAL, "Cannot load a snapshot into a writable image")
    snapshots = await read_snapshots(node)
    index = find_by_id_and_name(snapshots, id_str, name)
    if index < 0:
        raise SnapshotError(errno.ENOENT, "Can't find snapshot")
    sn = snapshots[index]
    _validate_l1(node, sn)
    try:
        l1 = await _read_l1(node, sn.l1_table_offset, sn.l1_size)
    except BlockError as exc:
        raise SnapshotError(exc.errno, "Failed to read l1 table for snapshot") from None
    cmap = node.map
    cmap.l1_table = l1
    cmap.l1_offset = sn.l1_table_offset
    node.header.l1_size = sn.l1_size
    node.header.l1_table_offset = sn.l1_table_offset
    node.metadata_changed()
