"""Persistent dirty bitmaps kept the way QEMU keeps them (qcow2-bitmap.c).

A read-write open marks every consistent bitmap "in-use" on disk; writes set bits in the
enabled ("auto") bitmaps; a clean close writes each bitmap's data and table to fresh
clusters, writes a new directory without the in-use flags, switches the header extension
and frees the old clusters.  A bitmap found in use at open is inconsistent (a previous
writer did not close cleanly) and is left exactly as it is.

Bitmap data is one bit per granularity chunk, least significant bit first, one cluster of
bits per bitmap-table entry; an all-zero cluster is stored as a zero table entry.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qio.block.qcow2.layout import AUTOCLEAR_BITMAPS
from qio.block.qcow2.refcount import DISCARD_ALWAYS, DISCARD_OTHER
from qio.errors import OpenError

if TYPE_CHECKING:
    from qio.block.qcow2.driver import Qcow2Node

FLAG_IN_USE = 1 << 0
FLAG_AUTO = 1 << 1
FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
TABLE_ALL_ONES = 1
TABLE_OFFSET_MASK = 0x00FFFFFFFFFFFE00
MAX_BITMAPS = 65535
MAX_DIRECTORY_SIZE = 64 << 20
_ENTRY = struct.Struct(">QIIBBHI")
_EXT = struct.Struct(">IIQQ")


@dataclass
class Bitmap:
    table_offset: int
    table_size: int
    flags: int
    kind: int
    granularity_bits: int
    name: str
    extra: bytes = b""
    bits: bytearray | None = None  # loaded data (None: not loaded / inconsistent)
    consistent: bool = True

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits


def parse_directory(buf: bytes, count: int) -> list[Bitmap]:
    bitmaps: list[Bitmap] = []
    pos = 0
    for _ in range(count):
        if pos + _ENTRY.size > len(buf):
            raise OpenError("Bitmap directory is truncated")
        table_offset, table_size, flags, kind, gbits, name_size, extra_size = _ENTRY.unpack_from(
            buf, pos
        )
        start = pos + _ENTRY.size
        extra = bytes(buf[start : start + extra_size])
        name = bytes(buf[start + extra_size : start + extra_size + name_size]).decode(
            "utf-8", "replace"
        )
        bitmaps.append(Bitmap(table_offset, table_size, flags, kind, gbits, name, extra))
        pos = (start + extra_size + name_size + 7) & ~7
    return bitmaps


def serialize_directory(bitmaps: list[Bitmap]) -> bytes:
    out = bytearray()
    for bm in bitmaps:
        name = bm.name.encode()
        out += _ENTRY.pack(
            bm.table_offset,
            bm.table_size,
            bm.flags,
            bm.kind,
            bm.granularity_bits,
            len(name),
            len(bm.extra),
        )
        out += bm.extra + name
        out += bytes((-len(out)) % 8)
    return bytes(out)


class PersistentBitmaps:
    def __init__(self, node: Qcow2Node) -> None:
        self.node = node
        self.bitmaps: list[Bitmap] = []
        self.directory_offset = 0
        self.directory_size = 0

    # -- geometry ------------------------------------------------------------------------------
    def _bits_count(self, bm: Bitmap) -> int:
        return -(-self.node.header.size // bm.granularity)

    def _table_entries(self, bm: Bitmap) -> int:
        bytes_needed = -(-self._bits_count(bm) // 8)
        return -(-bytes_needed // self.node.cluster_size)

    # -- open ------------------------------------------------------------------------------------
    async def load(self) -> None:
        node = self.node
        h = node.header
        ext = h.bitmaps_ext
        if ext is None:
            return
        if not h.autoclear_features & AUTOCLEAR_BITMAPS:
            if h.version < 3:
                node.context.warn(
                    "This qcow2 v2 image contains bitmaps, but they may have been modified by a program "
                    "without persistent bitmap support; so now they must all be considered inconsistent"
                )
            else:
                node.context.warn(
                    "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
                )
            node.context.err(
                "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix."
            )
            h.bitmaps_ext = None
            return
        if len(ext) != _EXT.size:
            raise OpenError("bitmaps_ext: Invalid extension length")
        count, reserved, size, offset = _EXT.unpack(ext)
        if reserved:
            raise OpenError("bitmaps_ext: Reserved field is not zero")
        if count > MAX_BITMAPS:
            raise OpenError(
                f"bitmaps_ext: Image has {count} bitmaps, exceeding the QEMU supported maximum of {MAX_BITMAPS}"
            )
        if count == 0:
            raise OpenError("found bitmaps extension with zero bitmaps")
        if offset % node.cluster_size:
            raise OpenError("bitmaps_ext: invalid bitmap directory offset")
        if size > MAX_DIRECTORY_SIZE:
            raise OpenError(
                f"bitmaps_ext: bitmap directory size ({size}) exceeds the maximum supported size ({MAX_DIRECTORY_SIZE})"
            )
        buf = bytearray(size)
        await node.image_file.preadv(offset, memoryview(buf))
        self.bitmaps = parse_directory(bytes(buf), count)
        self.directory_offset, self.directory_size = offset, size
        for bm in self.bitmaps:
            bm.consistent = not bm.flags & FLAG_IN_USE
            if bm.consistent:
                bm.bits = await self._load_bits(bm)
        if node.flags.read_write and any(bm.consistent for bm in self.bitmaps):
            for bm in self.bitmaps:
                bm.flags |= FLAG_IN_USE
            await node.write_sync(self.directory_offset, serialize_directory(self.bitmaps))

    async def _load_bits(self, bm: Bitmap) -> bytearray:
        node = self.node
        cs = node.cluster_size
        nbytes = -(-self._bits_count(bm) // 8)
        bits = bytearray(nbytes)
        if not bm.table_size:
            return bits
        raw = bytearray(bm.table_size * 8)
        await node.image_file.preadv(bm.table_offset, memoryview(raw))
        table = struct.unpack(f">{bm.table_size}Q", raw)
        for index, entry in enumerate(table):
            lo = index * cs
            hi = min(nbytes, lo + cs)
            if hi <= lo:
                break
            data_offset = entry & TABLE_OFFSET_MASK
            if data_offset:
                chunk = bytearray(cs)
                await node.image_file.preadv(data_offset, memoryview(chunk))
                bits[lo:hi] = chunk[: hi - lo]
            elif entry & TABLE_ALL_ONES:
                bits[lo:hi] = b"\xff" * (hi - lo)
        return bits

    # -- writes ----------------------------------------------------------------------------------
    def mark(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        for bm in self.bitmaps:
            if bm.bits is None or not bm.flags & FLAG_AUTO:
                continue
            first = offset >> bm.granularity_bits
            last = (offset + length - 1) >> bm.granularity_bits
            last = min(last, len(bm.bits) * 8 - 1)
            for bit in range(first, last + 1):
                bm.bits[bit >> 3] |= 1 << (bit & 7)

    # -- close -----------------------------------------------------------------------------------
    async def store(self) -> None:
        """Write every consistent bitmap to new clusters and switch the directory."""
        node = self.node
        if (
            not self.bitmaps
            or not node.flags.read_write
            or not any(bm.bits is not None for bm in self.bitmaps)
        ):
            return
        old_tables: list[tuple[int, list[int]]] = []
        for bm in self.bitmaps:
            if bm.bits is None:
                continue
            old_tables.append(await self._table_clusters(bm))
            await self._store_bitmap(bm)
            bm.flags = bm.flags & ~FLAG_IN_USE
        directory = serialize_directory(self.bitmaps)
        new_offset = await node.refcounts.alloc_clusters(len(directory))
        await node.check_metadata_write(new_offset, len(directory), None)
        await node.image_file.pwritev(new_offset, memoryview(directory))
        await node.flush_caches()
        old_offset, old_size = self.directory_offset, self.directory_size
        self.directory_offset, self.directory_size = new_offset, len(directory)
        node.header.bitmaps_ext = _EXT.pack(len(self.bitmaps), 0, len(directory), new_offset)
        node.header.autoclear_features |= AUTOCLEAR_BITMAPS
        await node.update_header()
        await node.image_file.flush()
        if old_size:
            await node.refcounts.free_clusters(old_offset, old_size, DISCARD_OTHER)
        for table_offset, data in old_tables:
            for cluster in data:
                # QEMU's clear_bitmap_table discards the old data clusters in the file too
                await node.refcounts.free_clusters(cluster, node.cluster_size, DISCARD_ALWAYS)
            if table_offset[1]:
                await node.refcounts.free_clusters(
                    table_offset[0], table_offset[1] * 8, DISCARD_OTHER
                )
        await node.refcounts.process_discards()
        node.metadata_changed()

    async def _table_clusters(self, bm: Bitmap) -> tuple[Any, list[int]]:
        if not bm.table_size:
            return (bm.table_offset, 0), []
        raw = bytearray(bm.table_size * 8)
        await self.node.image_file.preadv(bm.table_offset, memoryview(raw))
        entries = struct.unpack(f">{bm.table_size}Q", raw)
        return (bm.table_offset, bm.table_size), [
            e & TABLE_OFFSET_MASK for e in entries if e & TABLE_OFFSET_MASK
        ]

    async def _store_bitmap(self, bm: Bitmap) -> None:
        node = self.node
        cs = node.cluster_size
        assert bm.bits is not None
        size = self._table_entries(bm)
        table = [0] * size
        for index in range(size):
            chunk = bytes(bm.bits[index * cs : (index + 1) * cs])
            if not chunk.strip(b"\0"):
                continue
            offset = await node.refcounts.alloc_clusters(cs)
            await node.check_metadata_write(offset, cs, None)
            await node.image_file.pwritev(offset, memoryview(chunk + bytes(cs - len(chunk))))
            table[index] = offset
        table_offset = await node.refcounts.alloc_clusters(size * 8) if size else 0
        if size:
            await node.check_metadata_write(table_offset, size * 8, None)
            await node.image_file.pwritev(
                table_offset, memoryview(struct.pack(f">{size}Q", *table))
            )
        bm.table_offset, bm.table_size = table_offset, size

    # -- information -----------------------------------------------------------------------------
    def info(self) -> list[list[tuple[str, Any]]]:
        result = []
        for bm in self.bitmaps:
            flags = []
            if bm.flags & FLAG_IN_USE:
                flags.append("in-use")
            if bm.flags & FLAG_AUTO:
                flags.append("auto")
            result.append([("flags", flags), ("name", bm.name), ("granularity", bm.granularity)])
        return result

    def metadata_ranges(self) -> list[tuple[int, int, str]]:
        ranges = []
        if self.directory_size:
            ranges.append((self.directory_offset, self.directory_size, "bitmap directory"))
        return ranges
