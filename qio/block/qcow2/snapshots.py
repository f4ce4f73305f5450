"""The qcow2 internal snapshot table: entries parsed into dataclasses and written back.

Layout of one entry (docs/interop/qcow2.txt), each entry starting at a multiple of 8:

    u64 l1_table_offset, u32 l1_size, u16 id_str_size, u16 name_size, u32 date_sec,
    u32 date_nsec, u64 vm_clock_nsec, u32 vm_state_size, u32 extra_data_size,
    extra data (u64 vm_state_size_large, u64 disk_size, u64 icount; more is kept opaque),
    id string, name string (neither NUL-terminated)

Reading follows QEMU 7.2's qcow2_read_snapshots (what is missing from short extra data
defaults as QEMU says: the disk size is the image size, the icount -1); writing follows
qcow2_write_snapshots.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ENTRY_HEADER = struct.Struct(">QIHHIIQII")
EXTRA_DATA = struct.Struct(">QQQ")  # vm_state_size_large, disk_size, icount
NO_ICOUNT = (1 << 64) - 1
MAX_SNAPSHOTS = 65536
MAX_EXTRA_DATA = 1024


@dataclass
class Snapshot:
    l1_table_offset: int
    l1_size: int
    id_str: str
    name: str
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    vm_state_size: int = 0
    disk_size: int = 0
    icount: int = NO_ICOUNT
    # extra_data_size as read (0 for a new entry) and the bytes past the known fields
    extra_data_size: int = EXTRA_DATA.size
    unknown_extra_data: bytes = b""

    @property
    def has_icount(self) -> bool:
        return self.icount != NO_ICOUNT


class SnapshotTableError(ValueError):
    """The table cannot be read; ``message`` is QEMU's text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_entry(buf: bytes, offset: int, image_size: int) -> tuple[Snapshot, int]:
    """One entry at ``offset`` (already 8-aligned) of ``buf``: (snapshot, end offset)."""
    if offset + ENTRY_HEADER.size > len(buf):
        raise SnapshotTableError("Failed to read snapshot table")
    (
        l1_offset,
        l1_size,
        id_len,
        name_len,
        date_sec,
        date_nsec,
        vm_clock,
        vm_state,
        extra_size,
    ) = ENTRY_HEADER.unpack_from(buf, offset)
    pos = offset + ENTRY_HEADER.size
    if extra_size > MAX_EXTRA_DATA:
        raise SnapshotTableError("Too much extra metadata in snapshot table entry")
    known = min(EXTRA_DATA.size, extra_size)
    extra = bytes(buf[pos : pos + known]).ljust(EXTRA_DATA.size, b"\0")
    large, disk_size, icount = EXTRA_DATA.unpack(extra)
    pos += known
    if extra_size >= 8:
        vm_state = large
    if extra_size < 16:
        disk_size = image_size
    if extra_size < 24:
        icount = NO_ICOUNT
    unknown = b""
    if extra_size > EXTRA_DATA.size:
        unknown = bytes(buf[pos : pos + extra_size - EXTRA_DATA.size])
        pos += extra_size - EXTRA_DATA.size
    end = pos + id_len + name_len
    if end > len(buf):
        raise SnapshotTableError("Failed to read snapshot table")
    id_str = bytes(buf[pos : pos + id_len]).decode("utf-8", "surrogateescape")
    name = bytes(buf[pos + id_len : end]).decode("utf-8", "surrogateescape")
    snap = Snapshot(
        l1_table_offset=l1_offset,
        l1_size=l1_size,
        id_str=id_str,
        name=name,
        date_sec=date_sec,
        date_nsec=date_nsec,
        vm_clock_nsec=vm_clock,
        vm_state_size=vm_state,
        disk_size=disk_size,
        icount=icount,
        extra_data_size=extra_size,
        unknown_extra_data=unknown,
    )
    return snap, end


def parse_table(buf: bytes, count: int, image_size: int) -> list[Snapshot]:
    """``count`` entries from the start of ``buf`` (the bytes at snapshots_offset)."""
    snapshots: list[Snapshot] = []
    offset = 0
    for _ in range(count):
        offset = -(-offset // 8) * 8
        snap, offset = parse_entry(buf, offset, image_size)
        snapshots.append(snap)
    return snapshots


def serialize_entry(snap: Snapshot) -> bytes:
    """One entry as qcow2_write_snapshots writes it (unpadded: the next entry starts at the
    next multiple of 8, see serialize_table).

    The extra data always carries the three known fields; opaque extra bytes follow them.
    """
    id_raw = snap.id_str.encode("utf-8", "surrogateescape")
    name_raw = snap.name.encode("utf-8", "surrogateescape")
    # A VM state that does not fit 32 bits reads as "disk only" to old implementations.
    vm_state32 = snap.vm_state_size if snap.vm_state_size <= 0xFFFFFFFF else 0
    extra = EXTRA_DATA.pack(snap.vm_state_size, snap.disk_size, snap.icount)
    extra += snap.unknown_extra_data
    blob = (
        ENTRY_HEADER.pack(
            snap.l1_table_offset,
            snap.l1_size,
            len(id_raw),
            len(name_raw),
            snap.date_sec,
            snap.date_nsec,
            snap.vm_clock_nsec,
            vm_state32,
            len(extra),
        )
        + extra
        + id_raw
        + name_raw
    )
    return blob


def serialize_table(snapshots: list[Snapshot]) -> bytes:
    """The whole table; its length is QEMU's snapshots_size (no padding after the last)."""
    table = bytearray()
    for snap in snapshots:
        table += bytes(-len(table) % 8)
        table += serialize_entry(snap)
    return bytes(table)


async def read_snapshots(node: object) -> list[Snapshot]:
    """The snapshot table of an open qcow2 node (a ``Qcow2Node``)."""
    from qio.block.qcow2.driver import Qcow2Node

    assert isinstance(node, Qcow2Node)
    h = node.header
    if not h.nb_snapshots:
        return []
    size = getattr(node, "snapshot_table_bytes", 0) or MAX_EXTRA_DATA * h.nb_snapshots
    buf = bytearray(size)
    await node.image_file.preadv(h.snapshots_offset, memoryview(buf))
    return parse_table(bytes(buf), h.nb_snapshots, h.size)
