"""The qcow2 internal snapshot table: entries as dataclasses, parse and serialize.

Layout (docs/interop/qcow2.txt): each entry is a 40-byte header (L1 table offset and size,
ID and name lengths, date seconds/nanoseconds, VM clock, 32-bit VM state size, extra data
size), the extra data (QEMU 7.2 writes 24 bytes: 64-bit VM state size, virtual disk size,
instruction count), then the ID and name strings; every entry starts 8-aligned.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from qio.block.qcow2.layout import LayoutError

ENTRY_HEADER = struct.Struct(">QIHHIIQII")
EXTRA_DATA = struct.Struct(">QQQ")  # vm_state_size_large, disk_size, icount
MAX_SNAPSHOTS = 65536
MAX_EXTRA_DATA = 1024
MAX_TABLE_BYTES = 1024 * MAX_SNAPSHOTS
NO_ICOUNT = (1 << 64) - 1  # QEMU's -1ULL: no instruction count recorded


@dataclass
class Snapshot:
    id_str: str
    name: str
    l1_table_offset: int = 0
    l1_size: int = 0
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    vm_state_size: int = 0
    disk_size: int = 0
    icount: int = NO_ICOUNT
    extra_data_size: int = EXTRA_DATA.size
    unknown_extra_data: bytes = b""


def parse_table(buf: bytes, count: int, default_disk_size: int) -> tuple[list[Snapshot], int]:
    """The ``count`` entries at the start of ``buf`` and the table's size in bytes.

    ``default_disk_size`` stands in for a missing disk size field (old version 2 tables),
    as in QEMU's qcow2_read_snapshots.
    """
    snapshots: list[Snapshot] = []
    offset = 0
    for index in range(count):
        offset = -(-offset // 8) * 8
        if offset + ENTRY_HEADER.size > len(buf):
            raise LayoutError("Failed to read snapshot table: snapshot table truncated")
        (l1_offset, l1_size, id_len, name_len, sec, nsec, clock, vm_size, extra_size) = (
            ENTRY_HEADER.unpack_from(buf, offset)
        )
        offset += ENTRY_HEADER.size
        if extra_size > MAX_EXTRA_DATA:
            raise LayoutError(f"Too much extra metadata in snapshot table entry {index}")
        extra = bytes(buf[offset : offset + extra_size])
        offset += extra_size
        sn = Snapshot(
            "",
            "",
            l1_table_offset=l1_offset,
            l1_size=l1_size,
            date_sec=sec,
            date_nsec=nsec,
            vm_clock_nsec=clock,
            vm_state_size=vm_size,
            disk_size=default_disk_size,
            extra_data_size=extra_size,
        )
        if extra_size >= 8:
            sn.vm_state_size = struct.unpack_from(">Q", extra, 0)[0]
        if extra_size >= 16:
            sn.disk_size = struct.unpack_from(">Q", extra, 8)[0]
        if extra_size >= 24:
            sn.icount = struct.unpack_from(">Q", extra, 16)[0]
        if extra_size > EXTRA_DATA.size:
            sn.unknown_extra_data = extra[EXTRA_DATA.size :]
        sn.id_str = bytes(buf[offset : offset + id_len]).decode("utf-8", "surrogateescape")
        offset += id_len
        sn.name = bytes(buf[offset : offset + name_len]).decode("utf-8", "surrogateescape")
        offset += name_len
        if offset > MAX_TABLE_BYTES:
            raise LayoutError("Snapshot table is too big")
        snapshots.append(sn)
    return snapshots, offset


def table_size(snapshots: list[Snapshot]) -> int:
    """Bytes the table takes when written (qcow2_write_snapshots' first pass)."""
    offset = 0
    for sn in snapshots:
        offset = -(-offset // 8) * 8
        offset += ENTRY_HEADER.size + max(EXTRA_DATA.size, sn.extra_data_size)
        offset += len(sn.id_str.encode("utf-8", "surrogateescape"))
        offset += len(sn.name.encode("utf-8", "surrogateescape"))
    return offset


def serialize_table(snapshots: list[Snapshot]) -> bytes:
    """The table as QEMU 7.2 writes it (at least 24 bytes of extra data per entry)."""
    out = bytearray()
    for sn in snapshots:
        out += bytes(-len(out) % 8)
        ident = sn.id_str.encode("utf-8", "surrogateescape")
        name = sn.name.encode("utf-8", "surrogateescape")
        extra_size = max(EXTRA_DATA.size, sn.extra_data_size)
        # a VM state over 4 GiB is stored only in the 64-bit field: older readers then see a
        # disk-only snapshot rather than a truncated one
        vm32 = sn.vm_state_size if sn.vm_state_size <= 0xFFFFFFFF else 0
        out += ENTRY_HEADER.pack(
            sn.l1_table_offset,
            sn.l1_size,
            len(ident),
            len(name),
            sn.date_sec,
            sn.date_nsec,
            sn.vm_clock_nsec,
            vm32,
            extra_size,
        )
        out += EXTRA_DATA.pack(sn.vm_state_size, sn.disk_size, sn.icount)
        if extra_size > EXTRA_DATA.size:
            out += sn.unknown_extra_data[: extra_size - EXTRA_DATA.size].ljust(
                extra_size - EXTRA_DATA.size, b"\0"
            )
        out += ident + name
    return bytes(out)


def find_by_id_and_name(
    snapshots: list[Snapshot], id_str: str | None, name: str | None
) -> int:
    """Index of the first snapshot matching the given ID and/or name; -1 if none."""
    for i, sn in enumerate(snapshots):
        if (id_str is None or sn.id_str == id_str) and (name is None or sn.name == name):
            return i
    return -1


def find_by_id_or_name(snapshots: list[Snapshot], id_or_name: str) -> int:
    index = find_by_id_and_name(snapshots, id_or_name, None)
    return index if index >= 0 else find_by_id_and_name(snapshots, None, id_or_name)


def new_snapshot_id(snapshots: list[Snapshot]) -> str:
    """One more than the largest numeric ID (strtoul: a non-numeric ID counts as its
    leading digits, or 0)."""
    highest = 0
    for sn in snapshots:
        digits = ""
        for ch in sn.id_str.lstrip():
            if not ch.isdigit():
                break
            digits += ch
        highest = max(highest, int(digits) if digits else 0)
    return str(highest + 1)
