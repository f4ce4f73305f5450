"""qcow2 guest-to-host mapping: L1/L2 tables, lookups and allocation for writes.

The lookup answers, for a guest offset, a run of (sub)clusters of one type with contiguous
host offsets — the unit every reader (data path, block status, ``map``, ``verify``) works in.
The write side follows QEMU's block/qcow2-cluster.c: count clusters that can be written in
place (COPIED), allocate the rest contiguously, describe the copy-on-write of the untouched
parts of each new (sub)cluster in an ``L2Meta``, and link the L2 entries only after the data
is written.  In-flight allocations are tracked so an overlapping request waits for them.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qio.block.coroutine import Future
from qio.block.node import ReqFlags
from qio.block.qcow2.cache import Table
from qio.block.qcow2.layout import (
    L1E_OFFSET_MASK,
    L2_BITMAP_ALL_ALLOC,
    L2_BITMAP_ALL_ZEROES,
    L2E_OFFSET_MASK,
    MAX_L1_BYTES,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
)
from qio.block.qcow2.refcount import DISCARD_ALWAYS, DISCARD_NEVER, DISCARD_OTHER, DISCARD_REQUEST
from qio.errors import BlockError
from qio.numbers import REQUEST_MAX_BYTES, hexc

if TYPE_CHECKING:
    from qio.block.qcow2.driver import Qcow2Node

# Cluster types (of a whole L2 entry).
C_UNALLOCATED, C_ZERO_PLAIN, C_ZERO_ALLOC, C_NORMAL, C_COMPRESSED = range(5)
# Subcluster types (what a read sees).
(
    SC_NORMAL,
    SC_COMPRESSED,
    SC_ZERO_PLAIN,
    SC_ZERO_ALLOC,
    SC_UNALLOCATED_PLAIN,
    SC_UNALLOCATED_ALLOC,
    SC_INVALID,
) = range(7)
SC_NAMES = {
    SC_NORMAL: "data",
    SC_COMPRESSED: "compressed",
    SC_ZERO_PLAIN: "zero",
    SC_ZERO_ALLOC: "zero (preallocated)",
    SC_UNALLOCATED_PLAIN: "unallocated",
    SC_UNALLOCATED_ALLOC: "unallocated (in an allocated cluster)",
    SC_INVALID: "invalid",
}


def _mask32(lo: int, hi: int) -> int:
    """Bits [lo, hi) set."""
    return ((1 << hi) - 1) & ~((1 << lo) - 1)


def _ctz32(v: int) -> int:
    v &= 0xFFFFFFFF
    return 32 if v == 0 else (v & -v).bit_length() - 1


def _cto32(v: int) -> int:
    return _ctz32(~v & 0xFFFFFFFF)


def _clz32(v: int) -> int:
    v &= 0xFFFFFFFF
    return 32 - v.bit_length()


@dataclass
class CowRegion:
    offset: int  # relative to the start of the first cluster of the allocation
    nb_bytes: int


@dataclass
class L2Meta:
    """One allocation in flight: where it goes, and what must be copied around the data."""

    guest_offset: int  # start of the first guest cluster
    alloc_offset: int  # start of the first host cluster
    nb_clusters: int
    keep_old: bool
    cow_start: CowRegion
    cow_end: CowRegion
    prealloc: bool = False  # linked by preallocation: no data written, subclusters stay unallocated
    skip_cow: bool = False  # the whole area was zeroed in the data file instead of copied
    done: Future = field(default_factory=Future)

    @property
    def cow_start_abs(self) -> int:
        return self.guest_offset + self.cow_start.offset

    @property
    def cow_end_abs(self) -> int:
        return self.guest_offset + self.cow_end.offset + self.cow_end.nb_bytes


@dataclass
class HostRun:
    """A run of guest bytes with one subcluster type and contiguous host bytes."""

    type: int
    length: int
    host_offset: (
        int  # byte offset in the data file (normal / zero-alloc), or the L2 entry (compressed)
    )


class ClusterMap:
    def __init__(self, node: Qcow2Node) -> None:
        self.node = node
        h = node.header
        self.cluster_bits = h.cluster_bits
        self.cluster_size = h.cluster_size
        self.extended = h.extended_l2
        self.l2_entries = h.l2_entries
        self.l2_bits = self.l2_entries.bit_length() - 1
        self.subclusters = 32 if self.extended else 1
        self.subcluster_bits = self.cluster_bits - (5 if self.extended else 0)
        self.subcluster_size = 1 << self.subcluster_bits
        self.l1_table: list[int] = []
        self.l1_offset = h.l1_table_offset
        self.in_flight: list[L2Meta] = []

    # -- address arithmetic ------------------------------------------------------------------
    def l1_index(self, offset: int) -> int:
        return offset >> (self.l2_bits + self.cluster_bits)

    def l2_index(self, offset: int) -> int:
        return (offset >> self.cluster_bits) & (self.l2_entries - 1)

    def sc_index(self, offset: int) -> int:
        return (offset >> self.subcluster_bits) & (self.subclusters - 1)

    def offset_in_cluster(self, offset: int) -> int:
        return offset & (self.cluster_size - 1)

    def size_to_clusters(self, size: int) -> int:
        return (size + self.cluster_size - 1) >> self.cluster_bits

    # -- entries -----------------------------------------------------------------------------
    def entry(self, table: Table, index: int) -> int:
        assert table.words is not None
        return table.words[index * 2 if self.extended else index]

    def bitmap(self, table: Table, index: int) -> int:
        if not self.extended:
            return 0
        assert table.words is not None
        return table.words[index * 2 + 1]

    def set_entry(self, table: Table, index: int, value: int) -> None:
        assert table.words is not None
        table.words[index * 2 if self.extended else index] = value

    def set_bitmap(self, table: Table, index: int, value: int) -> None:
        assert table.words is not None
        table.words[index * 2 + 1] = value

    def cluster_type(self, entry: int) -> int:
        if entry & OFLAG_COMPRESSED:
            return C_COMPRESSED
        if entry & OFLAG_ZERO and not self.extended:
            return C_ZERO_ALLOC if entry & L2E_OFFSET_MASK else C_ZERO_PLAIN
        if not entry & L2E_OFFSET_MASK:
            if self.node.has_data_file and entry & OFLAG_COPIED:
                return C_NORMAL
            return C_UNALLOCATED
        return C_NORMAL

    def subcluster_type(self, entry: int, bitmap: int, sc: int) -> int:
        ctype = self.cluster_type(entry)
        if self.extended:
            if ctype == C_COMPRESSED:
                return SC_COMPRESSED
            if ctype == C_NORMAL:
                if (bitmap >> 32) & bitmap:
                    return SC_INVALID
                if bitmap & (1 << (32 + sc)):
                    return SC_ZERO_ALLOC
                if bitmap & (1 << sc):
                    return SC_NORMAL
                return SC_UNALLOCATED_ALLOC
            if bitmap & L2_BITMAP_ALL_ALLOC:
                return SC_INVALID
            if bitmap & (1 << (32 + sc)):
                return SC_ZERO_PLAIN
            return SC_UNALLOCATED_PLAIN
        return {
            C_COMPRESSED: SC_COMPRESSED,
            C_ZERO_PLAIN: SC_ZERO_PLAIN,
            C_ZERO_ALLOC: SC_ZERO_ALLOC,
            C_NORMAL: SC_NORMAL,
            C_UNALLOCATED: SC_UNALLOCATED_PLAIN,
        }[ctype]

    def subcluster_range_type(self, entry: int, bitmap: int, sc_from: int) -> tuple[int, int]:
        """(type, number of subclusters of that type starting at ``sc_from``)."""
        stype = self.subcluster_type(entry, bitmap, sc_from)
        if not self.extended or stype in (SC_COMPRESSED, SC_INVALID):
            return stype, self.subclusters - sc_from
        if stype == SC_NORMAL:
            return stype, _cto32(bitmap | _mask32(0, sc_from)) - sc_from
        if stype in (SC_ZERO_PLAIN, SC_ZERO_ALLOC):
            return stype, _cto32((bitmap >> 32) | _mask32(0, sc_from)) - sc_from
        val = ((bitmap >> 32) | bitmap) & 0xFFFFFFFF & ~_mask32(0, sc_from)
        return stype, _ctz32(val) - sc_from

    def needs_new_alloc(self, entry: int) -> bool:
        ctype = self.cluster_type(entry)
        if ctype in (C_NORMAL, C_ZERO_ALLOC):
            return not entry & OFLAG_COPIED
        return True

    # -- L1 ------------------------------------------------------------------------------------
    async def load_l1(self) -> None:
        size = self.node.header.l1_size
        buf = bytearray(size * 8)
        if size:
            await self.node.image_file.preadv(self.l1_offset, memoryview(buf))
        self.l1_table = list(struct.unpack(f">{size}Q", buf))

    @property
    def l1_size(self) -> int:
        return len(self.l1_table)

    async def write_l1_entry(self, index: int) -> None:
        node = self.node
        align = max(8, min(node.image_file.request_alignment, self.cluster_size))
        per = align // 8
        first = index - index % per
        entries = self.l1_table[first : first + per]
        entries += [0] * (per - len(entries))
        offset = self.l1_offset + first * 8
        await node.check_metadata_write(offset, align, "l1")
        await node.fire("l1_update")
        await node.write_sync(offset, struct.pack(f">{per}Q", *entries))

    async def grow_l1_table(self, min_size: int, exact: bool) -> None:
        node = self.node
        if min_size <= self.l1_size:
            return
        if min_size > 0x7FFFFFFF // 8:
            raise BlockError(errno.EFBIG)
        if exact:
            new_size = min_size
        else:
            new_size = max(self.l1_size, 1)
            while min_size > new_size:
                new_size = (new_size * 3 + 1) // 2
        if new_size * 8 > MAX_L1_BYTES:
            raise BlockError(errno.EFBIG)
        new_table = self.l1_table + [0] * (new_size - self.l1_size)
        await node.fire("l1_grow_alloc_table")
        new_offset = await node.refcounts.alloc_clusters(new_size * 8)
        await node.refblock_cache.flush()
        await node.check_metadata_write(new_offset, new_size * 8, None)
        await node.fire("l1_grow_write_table")
        await node.write_sync(new_offset, struct.pack(f">{new_size}Q", *new_table))
        await node.fire("l1_grow_activate_table")
        await node.write_sync(36, struct.pack(">IQ", new_size, new_offset))
        old_offset, old_size = self.l1_offset, self.l1_size
        self.l1_offset = new_offset
        self.l1_table = new_table
        node.header.l1_size = new_size
        node.header.l1_table_offset = new_offset
        node.metadata_changed()
        await node.refcounts.free_clusters(old_offset, old_size * 8, DISCARD_OTHER)

    async def shrink_l1_table(self, new_size: int) -> None:
        node = self.node
        if new_size >= self.l1_size:
            return
        await node.fire("l1_shrink_write_table")
        await node.image_file.pwrite_zeroes(
            self.l1_offset + new_size * 8, (self.l1_size - new_size) * 8
        )
        await node.image_file.flush()
        await node.fire("l1_shrink_free_l2_clusters")
        for i in range(self.l1_size - 1, new_size - 1, -1):
            l2 = self.l1_table[i] & L1E_OFFSET_MASK
            if not l2:
                continue
            await node.refcounts.free_clusters(l2, self.cluster_size, DISCARD_ALWAYS)
            self.l1_table[i] = 0
        node.metadata_changed()

    # -- L2 tables -------------------------------------------------------------------------
    async def _l2_offset(self, l1_index: int) -> int:
        l2 = self.l1_table[l1_index] & L1E_OFFSET_MASK
        if l2 % self.cluster_size:
            await self.node.signal_corruption(
                True, f"L2 table offset {hexc(l2)} unaligned (L1 index: {hexc(l1_index)})"
            )
            raise BlockError(errno.EIO)
        return l2

    async def load_l2(self, l2_offset: int) -> Table:
        cache = self.node.l2_cache
        return cache.hit(l2_offset) or await cache.get(l2_offset)

    async def get_cluster_table(self, offset: int) -> tuple[Table, int]:
        """The L2 table for ``offset`` (allocated, or copied for COW, when needed) and the index."""
        l1_index = self.l1_index(offset)
        if l1_index >= self.l1_size:
            await self.grow_l1_table(l1_index + 1, False)
        l2_offset = await self._l2_offset(l1_index)
        if not self.l1_table[l1_index] & OFLAG_COPIED:
            await self._l2_allocate(l1_index)
            if l2_offset:
                await self.node.refcounts.free_clusters(l2_offset, self.cluster_size, DISCARD_OTHER)
            l2_offset = self.l1_table[l1_index] & L1E_OFFSET_MASK
        table = await self.load_l2(l2_offset)
        return table, self.l2_index(offset)

    async def _l2_allocate(self, l1_index: int) -> None:
        node = self.node
        old_entry = self.l1_table[l1_index]
        old = old_entry & L1E_OFFSET_MASK
        l2_offset = await node.refcounts.alloc_clusters(self.cluster_size)
        if l2_offset == 0:
            await node.signal_corruption(
                True, "Preventing invalid allocation of L2 table at offset 0"
            )
            raise BlockError(errno.EIO)
        try:
            await self._l2_fill(l1_index, old, l2_offset)
        except BlockError:
            # As QEMU's l2_allocate: the L1 entry keeps its old value and the new cluster
            # goes back to the free space (not leaked).
            self.l1_table[l1_index] = old_entry
            await node.refcounts.free_clusters(l2_offset, self.cluster_size, DISCARD_ALWAYS)
            raise

    async def _l2_fill(self, l1_index: int, old: int, l2_offset: int) -> None:
        node = self.node
        await node.refblock_cache.flush()
        cache = node.l2_cache
        if old:
            await node.fire("l2_alloc_cow_read")
            source = await self.load_l2(old)
            assert source.words is not None
            words = source.words[:]
            table = await cache.get_empty(l2_offset)
            table.words = words
        else:
            table = await cache.get_empty(l2_offset)
        await node.fire("l2_alloc_write")
        cache.mark_dirty(table)
        node.add_metadata_cluster(l2_offset, "active L2 table")
        await cache.flush()
        self.l1_table[l1_index] = l2_offset | OFLAG_COPIED
        await self.write_l1_entry(l1_index)

    # -- lookup ------------------------------------------------------------------------------
    async def get_host_offset(self, offset: int, length: int) -> HostRun:
        """qcow2_get_host_offset: the run starting at guest ``offset`` (at most ``length``)."""
        if not self.extended:
            run = self._lookup_cached_data(offset, length)
            if run is not None:
                return run
        in_cluster = self.offset_in_cluster(offset)
        needed = length + in_cluster
        l2_index = self.l2_index(offset)
        available = (self.l2_entries - l2_index) << self.cluster_bits
        needed = min(needed, available)
        l1_index = self.l1_index(offset)
        if l1_index >= self.l1_size or not self.l1_table[l1_index] & L1E_OFFSET_MASK:
            return HostRun(SC_UNALLOCATED_PLAIN, min(available, needed) - in_cluster, 0)
        l2_offset = await self._l2_offset(l1_index)
        table = await self.load_l2(l2_offset)
        sc_index = self.sc_index(offset)
        entry = self.entry(table, l2_index)
        bitmap = self.bitmap(table, l2_index)
        stype = self.subcluster_type(entry, bitmap, sc_index)
        node = self.node
        host = 0
        if node.header.version < 3 and stype in (SC_ZERO_PLAIN, SC_ZERO_ALLOC):
            await node.signal_corruption(
                True,
                f"Zero cluster entry found in pre-v3 image (L2 offset: {hexc(l2_offset)}, L2 index: {hexc(l2_index)})",
            )
            raise BlockError(errno.EIO)
        if stype == SC_COMPRESSED:
            if node.has_data_file:
                await node.signal_corruption(
                    True,
                    "Compressed cluster entry found in image with external data file "
                    f"(L2 offset: {hexc(l2_offset)}, L2 index: {hexc(l2_index)})",
                )
                raise BlockError(errno.EIO)
            host = entry
        elif stype in (SC_ZERO_ALLOC, SC_NORMAL, SC_UNALLOCATED_ALLOC):
            cluster_host = entry & L2E_OFFSET_MASK
            host = cluster_host + in_cluster
            if cluster_host % self.cluster_size:
                await node.signal_corruption(
                    True,
                    f"Cluster allocation offset {hexc(cluster_host)} unaligned (L2 offset: {hexc(l2_offset)}, L2 index: {hexc(l2_index)})",
                )
                raise BlockError(errno.EIO)
            if node.has_data_file and host != offset:
                await node.signal_corruption(
                    True,
                    f"External data file host cluster offset {hexc(cluster_host)} does not match guest cluster offset: "
                    f"{hexc(offset - in_cluster)}, L2 index: {hexc(l2_index)})",
                )
                raise BlockError(errno.EIO)
        nb_clusters = self.size_to_clusters(needed)
        count = self._count_contiguous(nb_clusters, sc_index, table, l2_index)
        if count < 0:
            await node.signal_corruption(
                True,
                f"Invalid cluster entry found  (L2 offset: {hexc(l2_offset)}, L2 index: {hexc(l2_index - count - 1)})",
            )
            raise BlockError(errno.EIO)
        run = min((count + sc_index) << self.subcluster_bits, needed)
        return HostRun(stype, run - in_cluster, host)

    def _lookup_cached_data(self, offset: int, length: int) -> HostRun | None:
        """The common case of get_host_offset in one step: standard L2 entries, the table in
        the cache, a plain data cluster at an aligned host offset.  Anything else (holes, zero
        or compressed clusters, corruption checks, data files, cache misses) returns None and
        takes the general path, which gives the same answer for this case."""
        cluster_bits = self.cluster_bits
        l1_index = offset >> (self.l2_bits + cluster_bits)
        if l1_index >= self.l1_size:
            return None
        l2_offset = self.l1_table[l1_index] & L1E_OFFSET_MASK
        cluster_size = self.cluster_size
        if not l2_offset or l2_offset & (cluster_size - 1) or self.node.has_data_file:
            return None
        table = self.node.l2_cache.hit(l2_offset)
        if table is None:
            return None
        words = table.words
        assert words is not None
        l2_index = (offset >> cluster_bits) & (self.l2_entries - 1)
        entry = words[l2_index]
        host = entry & L2E_OFFSET_MASK
        if entry & (OFLAG_COMPRESSED | OFLAG_ZERO) or not host or host & (cluster_size - 1):
            return None
        in_cluster = offset & (cluster_size - 1)
        needed = min(length + in_cluster, (self.l2_entries - l2_index) << cluster_bits)
        last = l2_index + ((needed + cluster_size - 1) >> cluster_bits)
        index = l2_index + 1
        expected = host + cluster_size
        while index < last:
            entry = words[index]
            if entry & (OFLAG_COMPRESSED | OFLAG_ZERO) or entry & L2E_OFFSET_MASK != expected:
                break
            index += 1
            expected += cluster_size
        run = min((index - l2_index) << cluster_bits, needed)
        return HostRun(SC_NORMAL, run - in_cluster, host + in_cluster)

    def lookup_copied(self, offset: int, length: int) -> int | None:
        """The host offset for writing guest [offset, offset+length) in place, when the whole
        range is in standard clusters that are already allocated for this image (COPIED, one
        contiguous host run, one cached L2 table) and no allocation is in flight.

        That is the case where alloc_host_offset finds no dependency, ``_handle_copied``
        takes all of it and no copy-on-write metadata is needed; the answer is the same
        (and the L2 table is counted as used once, as it would be).  Anything else returns
        None and takes the general path.
        """
        if self.in_flight or self.extended or self.node.has_data_file:
            return None
        cluster_bits = self.cluster_bits
        l1_index = offset >> (self.l2_bits + cluster_bits)
        if l1_index >= len(self.l1_table):
            return None
        l1_entry = self.l1_table[l1_index]
        l2_offset = l1_entry & L1E_OFFSET_MASK
        cluster_size = self.cluster_size
        if not l1_entry & OFLAG_COPIED or not l2_offset or l2_offset & (cluster_size - 1):
            return None
        l2_index = (offset >> cluster_bits) & (self.l2_entries - 1)
        in_cluster = offset & (cluster_size - 1)
        nb = (in_cluster + length + cluster_size - 1) >> cluster_bits
        if l2_index + nb > self.l2_entries or nb > REQUEST_MAX_BYTES >> cluster_bits:
            return None
        table = self.node.l2_cache.hit(l2_offset)
        if table is None:
            return None
        words = table.words
        assert words is not None
        entry = words[l2_index]
        host = entry & L2E_OFFSET_MASK
        flags = OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO
        if entry & flags != OFLAG_COPIED or not host or host & (cluster_size - 1):
            return None
        expected = host
        for index in range(l2_index + 1, l2_index + nb):
            expected += cluster_size
            entry = words[index]
            if entry & flags != OFLAG_COPIED or entry & L2E_OFFSET_MASK != expected:
                return None
        return host + in_cluster

    def _count_contiguous(
        self, nb_clusters: int, sc_index: int, table: Table, l2_index: int
    ) -> int:
        count = 0
        expected_type = SC_NORMAL
        expected_offset = 0
        check_offset = False
        for i in range(nb_clusters):
            first_sc = sc_index if i == 0 else 0
            entry = self.entry(table, l2_index + i)
            bitmap = self.bitmap(table, l2_index + i)
            stype, n = self.subcluster_range_type(entry, bitmap, first_sc)
            if stype == SC_INVALID:
                return -(i + 1)
            if i == 0:
                if stype == SC_COMPRESSED:
                    return n
                expected_type = stype
                expected_offset = entry & L2E_OFFSET_MASK
                check_offset = stype in (SC_NORMAL, SC_ZERO_ALLOC, SC_UNALLOCATED_ALLOC)
            elif stype != expected_type:
                break
            elif check_offset:
                expected_offset += self.cluster_size
                if expected_offset != entry & L2E_OFFSET_MASK:
                    break
            count += n
            if first_sc + n < self.subclusters:
                break
        return count

    # -- allocation for writes -----------------------------------------------------------------
    async def handle_dependencies(
        self, guest_offset: int, nbytes: int, have_meta: bool
    ) -> int | None:
        """Bytes usable before an in-flight allocation; None: wait happened, start over."""
        cs = self.cluster_size
        for old in list(self.in_flight):
            start, end = guest_offset, guest_offset + nbytes
            old_start = old.cow_start_abs - old.cow_start_abs % cs
            old_end = -(-old.cow_end_abs // cs) * cs
            if end <= old_start or start >= old_end:
                continue
            if old.keep_old and (end <= old.cow_start_abs or start >= old.cow_end_abs):
                continue
            nbytes = old_start - start if start < old_start else 0
            if nbytes == 0:
                if have_meta:
                    return 0
                node = self.node
                node.lock.release()
                await old.done
                await node.lock.acquire()
                return None
        return nbytes

    def _count_single_write_clusters(
        self, nb_clusters: int, table: Table, l2_index: int, new_alloc: bool
    ) -> int:
        expected = self.entry(table, l2_index) & L2E_OFFSET_MASK
        i = 0
        while i < nb_clusters:
            entry = self.entry(table, l2_index + i)
            if self.needs_new_alloc(entry) != new_alloc:
                break
            if not new_alloc:
                if expected != entry & L2E_OFFSET_MASK:
                    break
                expected += self.cluster_size
            i += 1
        return i

    async def _calculate_l2_meta(
        self,
        host_cluster: int,
        guest_offset: int,
        nbytes: int,
        table: Table,
        metas: list[L2Meta],
        keep_old: bool,
    ) -> None:
        l2_index = self.l2_index(guest_offset)
        cow_start_to = self.offset_in_cluster(guest_offset)
        cow_end_from = cow_start_to + nbytes
        nb_clusters = self.size_to_clusters(cow_end_from)
        skip_cow = keep_old
        for i in range(nb_clusters):
            entry = self.entry(table, l2_index + i)
            bitmap = self.bitmap(table, l2_index + i)
            if skip_cow:
                write_from = max(cow_start_to, i << self.cluster_bits)
                write_to = min(cow_end_from, (i + 1) << self.cluster_bits)
                first_sc = self.sc_index(write_from)
                last_sc = self.sc_index(write_to - 1)
                stype, cnt = self.subcluster_range_type(entry, bitmap, first_sc)
                if stype != SC_NORMAL or first_sc + cnt <= last_sc:
                    skip_cow = False
            else:
                stype = self.subcluster_type(entry, bitmap, 0)
            if stype == SC_INVALID:
                l2_offset = self.l1_table[self.l1_index(guest_offset)] & L1E_OFFSET_MASK
                await self.node.signal_corruption(
                    True,
                    f"Invalid cluster entry found (L2 offset: {hexc(l2_offset)}, L2 index: {hexc(l2_index + i)})",
                )
                raise BlockError(errno.EIO)
        if skip_cow:
            return
        sc_bits = self.subcluster_bits
        entry = self.entry(table, l2_index)
        bitmap = self.bitmap(table, l2_index)
        sc = self.sc_index(guest_offset)
        stype = self.subcluster_type(entry, bitmap, sc)
        if not keep_old:
            if stype == SC_COMPRESSED:
                cow_start_from = 0
            elif stype in (SC_NORMAL, SC_ZERO_ALLOC, SC_UNALLOCATED_ALLOC):
                if self.extended:
                    cow_start_from = min(sc, _ctz32(bitmap & L2_BITMAP_ALL_ALLOC)) << sc_bits
                else:
                    cow_start_from = 0
            else:
                cow_start_from = sc << sc_bits
        else:
            cow_start_from = cow_start_to if stype == SC_NORMAL else sc << sc_bits
        last_index = l2_index + nb_clusters - 1
        entry = self.entry(table, last_index)
        bitmap = self.bitmap(table, last_index)
        sc = self.sc_index(guest_offset + nbytes - 1)
        stype = self.subcluster_type(entry, bitmap, sc)
        cs = self.cluster_size
        ss = self.subcluster_size
        if not keep_old:
            if stype == SC_COMPRESSED:
                cow_end_to = -(-cow_end_from // cs) * cs
            elif stype in (SC_NORMAL, SC_ZERO_ALLOC, SC_UNALLOCATED_ALLOC):
                cow_end_to = -(-cow_end_from // cs) * cs
                if self.extended:
                    cow_end_to -= (
                        min(self.subclusters - sc - 1, _clz32(bitmap & L2_BITMAP_ALL_ALLOC))
                        << sc_bits
                    )
            else:
                cow_end_to = -(-cow_end_from // ss) * ss
        else:
            cow_end_to = cow_end_from if stype == SC_NORMAL else -(-cow_end_from // ss) * ss
        meta = L2Meta(
            guest_offset=guest_offset - self.offset_in_cluster(guest_offset),
            alloc_offset=host_cluster,
            nb_clusters=nb_clusters,
            keep_old=keep_old,
            cow_start=CowRegion(cow_start_from, cow_start_to - cow_start_from),
            cow_end=CowRegion(cow_end_from, cow_end_to - cow_end_from),
        )
        metas.append(meta)
        self.in_flight.append(meta)

    async def _handle_copied(
        self, guest_offset: int, host_offset: int | None, nbytes: int, metas: list[L2Meta]
    ) -> tuple[int, int | None, int]:
        """(1 progress / 0 none, host offset, bytes) for clusters writable in place."""
        nb = self.size_to_clusters(self.offset_in_cluster(guest_offset) + nbytes)
        l2_index = self.l2_index(guest_offset)
        nb = min(nb, self.l2_entries - l2_index, REQUEST_MAX_BYTES >> self.cluster_bits)
        table, l2_index = await self.get_cluster_table(guest_offset)
        entry = self.entry(table, l2_index)
        cluster_offset = entry & L2E_OFFSET_MASK
        if self.needs_new_alloc(entry):
            return 0, host_offset, nbytes
        if cluster_offset % self.cluster_size:
            kind = "Preallocated zero" if entry & OFLAG_ZERO else "Data"
            await self.node.signal_corruption(
                True,
                f"{kind} cluster offset {hexc(cluster_offset)} unaligned (guest offset: {hexc(guest_offset)})",
            )
            raise BlockError(errno.EIO)
        if host_offset is not None and cluster_offset != host_offset - self.offset_in_cluster(
            host_offset
        ):
            return 0, host_offset, 0
        keep = self._count_single_write_clusters(nb, table, l2_index, False)
        nbytes = min(nbytes, keep * self.cluster_size - self.offset_in_cluster(guest_offset))
        await self._calculate_l2_meta(cluster_offset, guest_offset, nbytes, table, metas, True)
        return 1, cluster_offset + self.offset_in_cluster(guest_offset), nbytes

    async def _handle_alloc(
        self, guest_offset: int, host_offset: int | None, nbytes: int, metas: list[L2Meta]
    ) -> tuple[int, int | None, int]:
        node = self.node
        nb = self.size_to_clusters(self.offset_in_cluster(guest_offset) + nbytes)
        l2_index = self.l2_index(guest_offset)
        nb = min(nb, self.l2_entries - l2_index, REQUEST_MAX_BYTES >> self.cluster_bits)
        table, l2_index = await self.get_cluster_table(guest_offset)
        nb = self._count_single_write_clusters(nb, table, l2_index, True)
        assert nb > 0
        if node.has_data_file:
            alloc = guest_offset - self.offset_in_cluster(guest_offset)
        elif host_offset is None:
            alloc = await node.refcounts.alloc_clusters(nb * self.cluster_size)
        else:
            alloc = host_offset - self.offset_in_cluster(host_offset)
            nb = await node.refcounts.alloc_clusters_at(alloc, nb)
            if nb == 0:
                return 0, host_offset, 0
        # The L2 table may have been evicted while refcounts were updated.
        table, l2_index = await self.get_cluster_table(guest_offset)
        requested = nbytes + self.offset_in_cluster(guest_offset)
        avail = nb << self.cluster_bits
        nbytes = min(nbytes, min(requested, avail) - self.offset_in_cluster(guest_offset))
        await self._calculate_l2_meta(alloc, guest_offset, nbytes, table, metas, False)
        return 1, alloc + self.offset_in_cluster(guest_offset), nbytes

    async def alloc_host_offset(self, offset: int, nbytes: int) -> tuple[int, int, list[L2Meta]]:
        """qcow2_alloc_host_offset: where to write guest [offset, offset+n); n <= nbytes.

        Called with the node lock held (it may be released while waiting for another
        allocation).
        """
        while True:
            start = offset
            remaining = nbytes
            cluster_offset: int | None = None
            host: int | None = None
            cur = 0
            metas: list[L2Meta] = []
            restart = False
            while True:
                if host is None and cluster_offset is not None:
                    host = cluster_offset
                start += cur
                remaining -= cur
                if cluster_offset is not None:
                    cluster_offset += cur
                if remaining == 0:
                    break
                cur = remaining
                dep = await self.handle_dependencies(start, cur, bool(metas))
                if dep is None:
                    restart = True
                    break
                cur = dep
                if cur == 0:
                    break
                progress, new_host, cur = await self._handle_copied(
                    start, cluster_offset, cur, metas
                )
                if progress:
                    cluster_offset = new_host
                    continue
                if cur == 0:
                    break
                progress, new_host, cur = await self._handle_alloc(
                    start, cluster_offset, cur, metas
                )
                if progress:
                    cluster_offset = new_host
                    continue
                break
            if restart:
                continue
            done = nbytes - remaining
            assert done > 0 and host is not None
            return host, done, metas

    def finish_meta(self, meta: L2Meta) -> None:
        if meta in self.in_flight:
            self.in_flight.remove(meta)
        meta.done.set_result()

    async def link_l2(self, meta: L2Meta) -> None:
        """Point the L2 entries at the newly written clusters (after the data is on disk)."""
        node = self.node
        if meta.nb_clusters == 0:
            return
        if node.use_lazy_refcounts:
            await node.mark_dirty()
        if node.needs_accurate_refcounts:
            node.l2_cache.set_dependency(node.refblock_cache)
        table, l2_index = await self.get_cluster_table(meta.guest_offset)
        node.l2_cache.mark_dirty(table)
        old_clusters: list[int] = []
        for i in range(meta.nb_clusters):
            host = meta.alloc_offset + (i << self.cluster_bits)
            old = self.entry(table, l2_index + i)
            if old != 0:
                old_clusters.append(old)
            self.set_entry(table, l2_index + i, host | OFLAG_COPIED)
            if self.extended and not meta.prealloc:
                bitmap = self.bitmap(table, l2_index + i)
                written_from = max(meta.cow_start.offset, i << self.cluster_bits)
                written_to = min(
                    meta.cow_end.offset + meta.cow_end.nb_bytes, (i + 1) << self.cluster_bits
                )
                first_sc = self.sc_index(written_from)
                last_sc = self.sc_index(written_to - 1)
                bitmap |= _mask32(first_sc, last_sc + 1)
                bitmap &= ~(_mask32(first_sc, last_sc + 1) << 32)
                self.set_bitmap(table, l2_index + i, bitmap)
        if not meta.keep_old:
            for old in old_clusters:
                await self.free_any_cluster(old, DISCARD_NEVER)

    async def abort_meta(self, meta: L2Meta) -> None:
        if not self.node.has_data_file and not meta.keep_old:
            await self.node.refcounts.free_clusters(
                meta.alloc_offset, meta.nb_clusters << self.cluster_bits, DISCARD_NEVER
            )

    async def free_any_cluster(self, entry: int, discard_type: int) -> None:
        node = self.node
        ctype = self.cluster_type(entry)
        if ctype == C_COMPRESSED:
            coffset, csize = node.compressed.parse(entry)
            await node.refcounts.free_clusters(coffset, csize, discard_type)
        elif ctype in (C_NORMAL, C_ZERO_ALLOC):
            host = entry & L2E_OFFSET_MASK
            if host % self.cluster_size:
                await node.signal_corruption(False, f"Cannot free unaligned cluster {hexc(host)}")
            elif node.has_data_file:
                if node.refcounts.discard_passthrough.get(discard_type):
                    await node.data_file.pdiscard(host, self.cluster_size)
            else:
                await node.refcounts.free_clusters(host, self.cluster_size, discard_type)

    # -- compressed writes ---------------------------------------------------------------------
    async def alloc_compressed(self, offset: int, size: int) -> int:
        node = self.node
        table, l2_index = await self.get_cluster_table(offset)
        if self.entry(table, l2_index) & L2E_OFFSET_MASK:
            raise BlockError(errno.EIO)
        host = await node.refcounts.alloc_bytes(size)
        table, l2_index = await self.get_cluster_table(offset)
        await node.fire("l2_update_compressed")
        node.l2_cache.mark_dirty(table)
        self.set_entry(table, l2_index, node.compressed.make(host, size))
        if self.extended:
            self.set_bitmap(table, l2_index, 0)
        return host

    # -- zeroing and discard -------------------------------------------------------------------
    async def zeroize(self, offset: int, nbytes: int, may_unmap: bool) -> None:
        """qcow2_subcluster_zeroize: mark the range as reading zeros (caller aligned it)."""
        node = self.node
        end = offset + nbytes
        total = node.getlength()
        if node.header.data_file_raw and node.data_file is not None:
            # the raw data file must read as the image does: zero it first (QEMU does)
            zflags = ReqFlags.MAY_UNMAP if may_unmap else ReqFlags.NONE
            await node.data_file.pwrite_zeroes(offset, nbytes, zflags)
        if node.header.version < 3:
            if node.backing is None:
                await self.discard(offset, nbytes, DISCARD_REQUEST, False)
                return
            raise BlockError(errno.ENOTSUP)
        cs = self.cluster_size
        head = min(end, -(-offset // cs) * cs) - offset
        offset += head
        tail = 0 if end >= total else end - max(offset, end - end % cs)
        end -= tail
        try:
            if head:
                await self._zero_subclusters(offset - head, -(-head // self.subcluster_size))
            clusters = self.size_to_clusters(end - offset) if end > offset else 0
            while clusters > 0:
                cleared = await self._zero_in_l2(offset, clusters, may_unmap)
                clusters -= cleared
                offset += cleared * cs
            if tail:
                await self._zero_subclusters(end, -(-tail // self.subcluster_size))
        finally:
            await node.refcounts.process_discards()

    async def _zero_in_l2(self, offset: int, nb_clusters: int, may_unmap: bool) -> int:
        table, l2_index = await self.get_cluster_table(offset)
        nb_clusters = min(nb_clusters, self.l2_entries - l2_index)
        for i in range(nb_clusters):
            old = self.entry(table, l2_index + i)
            old_bitmap = self.bitmap(table, l2_index + i)
            ctype = self.cluster_type(old)
            allocated = ctype in (C_NORMAL, C_COMPRESSED, C_ZERO_ALLOC)
            unmap = ctype == C_COMPRESSED or (may_unmap and allocated)
            new = 0 if unmap else old
            new_bitmap = old_bitmap
            if self.extended:
                new_bitmap = L2_BITMAP_ALL_ZEROES
            else:
                new |= OFLAG_ZERO
            if old == new and old_bitmap == new_bitmap:
                continue
            self.node.l2_cache.mark_dirty(table)
            self.set_entry(table, l2_index + i, new)
            if self.extended:
                self.set_bitmap(table, l2_index + i, new_bitmap)
            if unmap:
                await self.free_any_cluster(old, DISCARD_REQUEST)
                table, _ = await self.get_cluster_table(offset)
        return nb_clusters

    async def _zero_subclusters(self, offset: int, nb_subclusters: int) -> None:
        sc = self.sc_index(offset)
        table, l2_index = await self.get_cluster_table(offset)
        ctype = self.cluster_type(self.entry(table, l2_index))
        if ctype == C_COMPRESSED:
            raise BlockError(errno.ENOTSUP)
        old = self.bitmap(table, l2_index)
        bitmap = old | (_mask32(sc, sc + nb_subclusters) << 32)
        bitmap &= ~_mask32(sc, sc + nb_subclusters)
        if bitmap != old:
            self.set_bitmap(table, l2_index, bitmap)
            self.node.l2_cache.mark_dirty(table)

    async def discard(
        self, offset: int, nbytes: int, discard_type: int, full_discard: bool
    ) -> None:
        """qcow2_cluster_discard over whole clusters (or the last, partial one)."""
        clusters = self.size_to_clusters(nbytes)
        try:
            while clusters > 0:
                cleared = await self._discard_in_l2(offset, clusters, discard_type, full_discard)
                clusters -= cleared
                offset += cleared * self.cluster_size
        finally:
            await self.node.refcounts.process_discards()

    async def _discard_in_l2(
        self, offset: int, nb_clusters: int, discard_type: int, full_discard: bool
    ) -> int:
        node = self.node
        table, l2_index = await self.get_cluster_table(offset)
        nb_clusters = min(nb_clusters, self.l2_entries - l2_index)
        for i in range(nb_clusters):
            old = self.entry(table, l2_index + i)
            old_bitmap = self.bitmap(table, l2_index + i)
            ctype = self.cluster_type(old)
            new, new_bitmap = old, old_bitmap
            if full_discard:
                new = new_bitmap = 0
            elif node.backing is not None or ctype in (C_NORMAL, C_COMPRESSED, C_ZERO_ALLOC):
                if self.extended:
                    new, new_bitmap = 0, L2_BITMAP_ALL_ZEROES
                else:
                    new = OFLAG_ZERO if node.header.version >= 3 else 0
            if old == new and old_bitmap == new_bitmap:
                continue
            node.l2_cache.mark_dirty(table)
            self.set_entry(table, l2_index + i, new)
            if self.extended:
                self.set_bitmap(table, l2_index + i, new_bitmap)
            await self.free_any_cluster(old, discard_type)
            table, _ = await self.get_cluster_table(offset)
        return nb_clusters


__all__ = [
    "ClusterMap",
    "HostRun",
    "L2Meta",
    "DISCARD_NEVER",
    "OFLAG_COMPRESSED",
]
