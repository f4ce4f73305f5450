"""The qcow2 snapshot table as qemu-img check reads, repairs and rewrites it.

QEMU's qcow2_do_read_snapshots in repair mode drops what it cannot keep (extra data past
1 KiB, snapshots beyond the table size limits) and qcow2_write_snapshots writes the whole
table to new clusters.  Entries keep everything QEMU keeps: the fixed header, the known extra
data (64-bit VM state size, disk size, icount), unknown extra data, ID and name.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qio.block.qcow2.refcount import DISCARD_ALWAYS, DISCARD_SNAPSHOT
from qio.errors import BlockError

if TYPE_CHECKING:
    from qio.block.qcow2.driver import Qcow2Node

HEADER = struct.Struct(">QIHHIIQII")
EXTRA = struct.Struct(">QQQ")  # vm_state_size_large, disk_size, icount
MAX_SNAPSHOTS = 65536
MAX_EXTRA_DATA = 1024
MAX_TABLE_BYTES = 1024 * MAX_SNAPSHOTS
INT_MAX = 0x7FFFFFFF


@dataclass
class Snapshot:
    l1_offset: int
    l1_size: int
    id_str: bytes
    name: bytes
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    extra_data_size: int
    disk_size: int
    icount: int
    unknown_extra: bytes = b""


class SnapshotTableError(Exception):
    """Reading failed: QEMU's error text, its hint line (or ""), and the errno."""

    def __init__(self, message: str, err: int, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.errno = err
        self.hint = hint


@dataclass
class ReadResult:
    snapshots: list[Snapshot]
    size: int  # bytes the table occupies (s->snapshots_size)
    dropped_snapshots: int = 0  # nb_clusters_reduced
    extra_data_dropped: int = 0


async def read_table(
    node: Qcow2Node, offset: int, count: int, repair: bool, report: list[str]
) -> ReadResult:
    """qcow2_do_read_snapshots; ``report`` collects the lines a repair prints."""
    result = ReadResult([], 0)
    if not count:
        return result
    start = offset
    table_length = 0
    file = node.image_file

    async def read(pos: int, size: int) -> bytes:
        buf = bytearray(size)
        try:
            await file.preadv(pos, memoryview(buf))
        except BlockError as exc:
            raise SnapshotTableError(
                f"Failed to read snapshot table: {exc.strerror}", exc.errno
            ) from None
        return bytes(buf)

    for i in range(count):
        before = offset
        table_length = -(-table_length // 8) * 8
        offset = -(-offset // 8) * 8
        (
            l1_offset,
            l1_size,
            id_len,
            name_len,
            date_sec,
            date_nsec,
            vm_clock,
            vm_state_size,
            extra_size,
        ) = HEADER.unpack(await read(offset, HEADER.size))
        offset += HEADER.size
        truncate = False
        if extra_size > MAX_EXTRA_DATA:
            if not repair:
                raise SnapshotTableError(
                    f"Too much extra metadata in snapshot table entry {i}",
                    errno.EFBIG,
                    "You can force-remove this extra metadata with qemu-img check -r all",
                )
            report.append(
                f"Discarding too much extra metadata in snapshot table entry {i} "
                f"({extra_size} > {MAX_EXTRA_DATA})"
            )
            result.extra_data_dropped += 1
            truncate = True
        known = min(EXTRA.size, extra_size)
        extra = await read(offset, known) + bytes(EXTRA.size - known)
        offset += known
        large, disk_size, icount = EXTRA.unpack(extra)
        if extra_size >= 8:
            vm_state_size = large
        if extra_size < 16:
            disk_size = node.header.size
        if extra_size < 24:
            icount = (1 << 64) - 1
        unknown = b""
        if extra_size > EXTRA.size:
            extra_end = offset + extra_size - EXTRA.size
            if truncate:
                extra_size = MAX_EXTRA_DATA
            unknown = await read(offset, extra_size - EXTRA.size)
            offset = extra_end
        id_str = await read(offset, id_len)
        offset += id_len
        name = await read(offset, name_len)
        offset += name_len
        # the extra data may have been truncated: count what will be written back
        table_length += HEADER.size + extra_size + id_len + name_len
        if table_length > MAX_TABLE_BYTES or offset - start > INT_MAX:
            if not repair:
                raise SnapshotTableError(
                    "Snapshot table is too big",
                    errno.EFBIG,
                    f"You can force-remove all {count - i} overhanging snapshots with "
                    "qemu-img check -r all",
                )
            report.append(
                f"Discarding {count - i} overhanging snapshots (snapshot table is too big)"
            )
            result.dropped_snapshots += count - i
            offset = before
            break
        result.snapshots.append(
            Snapshot(
                l1_offset,
                l1_size,
                id_str.split(b"\0", 1)[0],
                name.split(b"\0", 1)[0],
                date_sec,
                date_nsec,
                vm_clock,
                vm_state_size,
                extra_size,
                disk_size,
                icount,
                unknown,
            )
        )
    result.size = offset - start
    return result


def serialize(snapshots: list[Snapshot]) -> bytes:
    """The table as qcow2_write_snapshots lays it out."""
    out = bytearray()
    for sn in snapshots:
        out += bytes(-len(out) % 8)
        out += HEADER.pack(
            sn.l1_offset,
            sn.l1_size,
            len(sn.id_str),
            len(sn.name),
            sn.date_sec,
            sn.date_nsec,
            sn.vm_clock_nsec,
            sn.vm_state_size if sn.vm_state_size <= 0xFFFFFFFF else 0,
            max(EXTRA.size, sn.extra_data_size),
        )
        out += EXTRA.pack(sn.vm_state_size, sn.disk_size, sn.icount)
        if sn.extra_data_size > EXTRA.size:
            out += sn.unknown_extra
        out += sn.id_str + sn.name
    return bytes(out)


async def write_table(node: Qcow2Node, snapshots: list[Snapshot], old_size: int) -> None:
    """qcow2_write_snapshots: the table to new clusters, then the header, then the old
    table freed.  Raises BlockError."""
    data = serialize(snapshots)
    if len(data) > MAX_TABLE_BYTES:
        raise BlockError(errno.EFBIG)
    h = node.header
    new_offset = await node.refcounts.alloc_clusters(len(data)) if data else 0
    try:
        await node.flush_caches()
        await node.check_metadata_write(new_offset, len(data), None)
        if data:
            await node.image_file.pwritev(new_offset, memoryview(data))
        await node.flush_caches()
        await node.write_sync(60, struct.pack(">IQ", len(snapshots), new_offset))
    except BlockError:
        if new_offset > 0:
            await node.refcounts.free_clusters(new_offset, len(data), DISCARD_ALWAYS)
        raise
    await node.refcounts.free_clusters(h.snapshots_offset, old_size, DISCARD_SNAPSHOT)
    await node.refcounts.process_discards()
    h.nb_snapshots = len(snapshots)
    h.snapshots_offset = new_offset
    node.snapshot_table_bytes = len(data)
    node.snapshot_l1s = [(sn.l1_offset, sn.l1_size) for sn in snapshots]
    node.metadata_changed()
