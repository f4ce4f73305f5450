"""qcow2 reference counts: lookup, update, cluster allocation, refcount table growth.

Every host cluster, data or metadata, has a refcount (0 free, 1 used, more when shared by
snapshots).  The algorithms follow QEMU's block/qcow2-refcount.c so that images grow the way
QEMU grows them:

* allocation is first-fit from ``free_cluster_index``;
* a missing refcount block is placed where it can describe itself when possible, otherwise it
  is counted by an existing block;
* when the refcount table is full, new refcount blocks and a bigger table are laid out in a
  fresh area at the end of the image that describes itself, written, flushed, and only then
  switched in the header — a crash at any point leaves at worst leaked clusters.

Allocation that places new metadata where the caller wanted its data raises ``Retry`` (QEMU's
-EAGAIN); the callers retry the search.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import TYPE_CHECKING

from qio.block.qcow2.cache import Table
from qio.block.qcow2.layout import (
    MAX_REFTABLE_BYTES,
    REFT_OFFSET_MASK,
    refcount_block_entries,
    refcount_get,
    refcount_set,
)
from qio.errors import BlockError
from qio.numbers import hexc

if TYPE_CHECKING:
    from qio.block.qcow2.driver import Qcow2Node

MAX_CLUSTER_OFFSET = (1 << 56) - 1

# Why clusters are freed; decides whether the host range is discarded (punched) too.
DISCARD_NEVER, DISCARD_ALWAYS, DISCARD_REQUEST, DISCARD_SNAPSHOT, DISCARD_OTHER = range(5)


class Retry(Exception):
    """New refcount metadata may have landed where the caller meant to allocate: search again."""


def refcount_metadata_clusters(
    clusters: int, cluster_size: int, order: int, generous: bool
) -> tuple[int, int]:
    """(refcount blocks, refcount table clusters) needed to describe ``clusters`` clusters,
    themselves included (QEMU's qcow2_refcount_metadata_size fixed point)."""
    per_table_cluster = cluster_size // 8
    per_block = cluster_size * 8 >> order
    table = blocks = 0
    n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table_cluster)
        n = clusters + blocks + table
        if n == last:
            if generous:
                clusters += -(-table // 2)
                n = 0
                generous = False
                continue
            break
    return blocks, table


class Refcounts:
    def __init__(self, node: Qcow2Node) -> None:
        self.node = node
        h = node.header
        self.order = h.refcount_order
        self.max = (1 << (1 << self.order)) - 1
        self.block_entries = refcount_block_entries(h.cluster_bits, self.order)
        self.block_bits = self.block_entries.bit_length() - 1
        self.table: list[int] = []
        self.table_offset = h.refcount_table_offset
        self.table_clusters = h.refcount_table_clusters
        self.free_cluster_index = 0
        self.free_byte_offset = 0
        self.discard_passthrough = {
            DISCARD_NEVER: False,
            DISCARD_ALWAYS: True,
            DISCARD_REQUEST: True,
            DISCARD_SNAPSHOT: True,
            DISCARD_OTHER: False,
        }
        self.pending_discards: list[list[int]] = []

    @property
    def cache(self):  # type: ignore[no-untyped-def]
        return self.node.refblock_cache

    # -- table -----------------------------------------------------------------------------
    async def load_table(self) -> None:
        size = self.table_clusters * self.node.cluster_size
        buf = bytearray(size)
        if size:
            await self.node.fire("reftable_load")
            await self.node.image_file.preadv(self.table_offset, memoryview(buf))
        self.table = list(struct.unpack(f">{size // 8}Q", buf))

    @property
    def table_size(self) -> int:
        return len(self.table)

    def max_table_index(self) -> int:
        for i in range(len(self.table) - 1, -1, -1):
            if self.table[i]:
                return i
        return -1

    # -- reading -----------------------------------------------------------------------------
    async def load_block(self, offset: int) -> Table:
        await self.node.fire("refblock_load")
        return await self.cache.get(offset)

    async def _block_offset(self, table_index: int) -> int:
        if table_index >= len(self.table):
            return 0
        offset = self.table[table_index] & REFT_OFFSET_MASK
        if offset % self.node.cluster_size:
            await self.node.signal_corruption(
                True,
                f"Refblock offset {hexc(offset)} unaligned (reftable index: {hexc(table_index)})",
            )
            raise BlockError(errno.EIO)
        return offset

    async def get(self, cluster_index: int) -> int:
        """The refcount of host cluster ``cluster_index``."""
        offset = await self._block_offset(cluster_index >> self.block_bits)
        if not offset:
            return 0
        table = self.cache.hit(offset) or await self.load_block(offset)
        assert table.raw is not None
        return refcount_get(table.raw, cluster_index & (self.block_entries - 1), self.order)

    # -- allocation --------------------------------------------------------------------------
    async def alloc_clusters_noref(self, size: int, limit: int = MAX_CLUSTER_OFFSET) -> int:
        """Find ``size`` bytes of free clusters (refcounts not yet taken)."""
        await self.process_discards()
        cs_bits = self.node.cluster_bits
        nb = (size + self.node.cluster_size - 1) >> cs_bits
        found = 0
        while found < nb:
            index = self.free_cluster_index
            self.free_cluster_index += 1
            if await self.get(index) != 0:
                found = 0  # restart the run after this used cluster
                continue
            found += 1
        if self.free_cluster_index > 0 and self.free_cluster_index - 1 > (limit >> cs_bits):
            raise BlockError(errno.EFBIG)
        return (self.free_cluster_index - nb) << cs_bits

    async def alloc_clusters(self, size: int) -> int:
        """qcow2_alloc_clusters: allocate contiguous clusters and take their refcount."""
        await self.node.fire("cluster_alloc")
        while True:
            offset = await self.alloc_clusters_noref(size)
            try:
                await self.update(offset, size, 1, False, DISCARD_NEVER)
            except Retry:
                continue
            return offset

    async def alloc_clusters_at(self, offset: int, nb_clusters: int) -> int:
        """Allocate up to ``nb_clusters`` free clusters starting exactly at ``offset``."""
        if nb_clusters == 0:
            return 0
        while True:
            index = offset >> self.node.cluster_bits
            count = 0
            while count < nb_clusters and await self.get(index + count) == 0:
                count += 1
            try:
                await self.update(offset, count << self.node.cluster_bits, 1, False, DISCARD_NEVER)
            except Retry:
                continue
            return count

    async def alloc_bytes(self, size: int) -> int:
        """qcow2_alloc_bytes: a byte range for compressed data, packed into shared clusters.

        Like QEMU 7.2, the packing position survives the cluster being freed: if that
        cluster was reused meanwhile (for guest data or an L2 table), the next compressed
        data lands in it too — qemu-io then reports the overlap or leaves a refcount of 2,
        and qio does the same."""
        node = self.node
        cs = node.cluster_size
        await node.fire("cluster_alloc_bytes")
        offset = self.free_byte_offset
        if offset and await self.get(offset >> node.cluster_bits) == self.max:
            offset = 0
        free_in_cluster = cs - offset % cs
        while True:
            if not offset or free_in_cluster < size:
                new_cluster = await self.alloc_clusters_noref(
                    cs, min(node.compressed.offset_mask, MAX_CLUSTER_OFFSET)
                )
                if new_cluster == 0:
                    await node.signal_corruption(
                        True, "Preventing invalid allocation of compressed cluster at offset 0"
                    )
                    raise BlockError(errno.EIO)
                if not offset or -(-offset // cs) * cs != new_cluster:
                    offset = new_cluster
                    free_in_cluster = cs
                else:
                    free_in_cluster += cs
            try:
                await self.update(offset, size, 1, False, DISCARD_NEVER)
            except Retry:
                continue
            except BlockError:
                offset = 0
                raise
            break
        # The cluster's refcount changed: it must reach the disk before the L2 entry.
        node.l2_cache.set_dependency(self.cache)
        self.free_byte_offset = offset + size
        if self.free_byte_offset % cs == 0:
            self.free_byte_offset = 0
        return offset

    async def free_clusters(self, offset: int, size: int, discard_type: int) -> None:
        await self.node.fire("cluster_free")
        try:
            await self.update(offset, size, 1, True, discard_type)
        except BlockError as exc:
            # QEMU reports and carries on (the clusters leak).
            self.node.context.err(f"qcow2_free_clusters failed: {exc.strerror}\n")
        except Retry:
            # a refcount block had to be allocated first: -EAGAIN, the clusters leak
            self.node.context.err(f"qcow2_free_clusters failed: {os.strerror(errno.EAGAIN)}\n")

    # -- update ------------------------------------------------------------------------------
    async def update(
        self, offset: int, length: int, addend: int, decrease: bool, discard_type: int
    ) -> None:
        """update_refcount: add (or subtract) ``addend`` for every cluster of the range."""
        if length <= 0:
            return
        node = self.node
        cs = node.cluster_size
        if decrease:
            node.refblock_cache.set_dependency(node.l2_cache)
        start = offset - offset % cs
        last = (offset + length - 1) - (offset + length - 1) % cs
        cluster = start
        table: Table | None = None
        old_table_index = -1
        try:
            while cluster <= last:
                index = cluster >> node.cluster_bits
                table_index = index >> self.block_bits
                if table_index != old_table_index or table is None:
                    try:
                        table = await self.alloc_refcount_block(index)
                    except Retry:
                        if self.free_cluster_index > (start >> node.cluster_bits):
                            self.free_cluster_index = start >> node.cluster_bits
                        raise
                old_table_index = table_index
                self.cache.mark_dirty(table)
                assert table.raw is not None
                block_index = index & (self.block_entries - 1)
                refcount = refcount_get(table.raw, block_index, self.order)
                new = refcount - addend if decrease else refcount + addend
                if new < 0 or new > self.max:
                    raise BlockError(errno.EINVAL)
                if new == 0 and index < self.free_cluster_index:
                    self.free_cluster_index = index
                refcount_set(table.raw, block_index, self.order, new)
                if new == 0:
                    node.forget_metadata_cluster(cluster)
                    if self.cache.peek(cluster) is not None:
                        self.cache.discard(cluster)
                        table = None
                    if node.l2_cache.peek(cluster) is not None:
                        node.l2_cache.discard(cluster)
                    if self.discard_passthrough.get(discard_type, False):
                        self._queue_discard(cluster, cs)
                cluster += cs
        except (BlockError, Retry):
            # Undo what was done so far (this may succeed, e.g. after ENOSPC).
            if cluster > start:
                try:
                    await self.update(start, cluster - start, addend, not decrease, DISCARD_NEVER)
                except (BlockError, Retry):
                    pass
            raise

    # -- shrinking ----------------------------------------------------------------------------
    async def last_cluster(self, file_size: int) -> int:
        """qcow2_get_last_cluster: the highest cluster below ``file_size`` still in use."""
        node = self.node
        for index in range(-(-file_size // node.cluster_size) - 1, -1, -1):
            if await self.get(index):
                return index
        await node.signal_corruption(True, "There are no references in the refcount table.")
        raise BlockError(errno.EIO)

    async def shrink_table(self) -> None:
        """qcow2_shrink_reftable: unhook refcount blocks that count nothing but themselves."""
        node = self.node
        kept: list[int] = []
        for index, entry in enumerate(self.table):
            offset = entry & REFT_OFFSET_MASK
            if not offset:
                kept.append(0)
                continue
            block = self.cache.peek(offset) or await self.cache.get(offset)
            assert block.raw is not None
            raw = bytearray(block.raw)
            if index == offset >> node.cluster_bits >> self.block_bits:
                refcount_set(
                    raw, (offset >> node.cluster_bits) & (self.block_entries - 1), self.order, 0
                )
            kept.append(entry if any(raw) else 0)
        await node.write_sync(self.table_offset, struct.pack(f">{len(kept)}Q", *kept))
        for index, entry in enumerate(self.table):
            if entry and not kept[index]:
                await self._discard_refcount_block(entry & REFT_OFFSET_MASK)
                self.table[index] = 0
        node.metadata_changed()
        await self.process_discards()

    async def _discard_refcount_block(self, offset: int) -> None:
        node = self.node
        index = offset >> node.cluster_bits
        covering = await self._block_offset(index >> self.block_bits)
        if not covering:
            await node.signal_corruption(
                True, f"Refblock at {hexc(offset)} is not covered by the refcount structures"
            )
            raise BlockError(errno.EIO)
        block = self.cache.peek(covering) or await self.cache.get(covering)
        assert block.raw is not None
        slot = index & (self.block_entries - 1)
        refcount = refcount_get(block.raw, slot, self.order)
        if refcount != 1:
            await node.signal_corruption(
                True,
                f"Invalid refcount: refblock offset {hexc(covering)}, reftable index "
                f"{index >> self.block_bits}, block offset {hexc(offset)}, refcount {hexc(refcount)}",
            )
            raise BlockError(errno.EINVAL)
        refcount_set(block.raw, slot, self.order, 0)
        self.cache.mark_dirty(block)
        if index < self.free_cluster_index:
            self.free_cluster_index = index
        if self.cache.peek(offset) is not None:
            self.cache.discard(offset)
        self._queue_discard(offset, node.cluster_size)

    def _queue_discard(self, offset: int, length: int) -> None:
        for d in self.pending_discards:
            if d[0] + d[1] == offset:
                d[1] += length
                return
            if offset + length == d[0]:
                d[0] = offset
                d[1] += length
                return
        self.pending_discards.append([offset, length])

    async def process_discards(self) -> None:
        pending, self.pending_discards = self.pending_discards, []
        for offset, length in pending:
            try:
                await self.node.image_file.pdiscard(offset, length)
            except BlockError:
                pass

    # -- refcount blocks and table growth ----------------------------------------------------
    async def alloc_refcount_block(self, cluster_index: int) -> Table:
        """The refcount block covering ``cluster_index``, creating it when missing."""
        node = self.node
        cs = node.cluster_size
        await node.fire("refblock_alloc")
        # QEMU keeps this index in an unsigned int: a cluster far beyond any refcount table
        # (a damaged image) lands on the block of the truncated index
        table_index = (cluster_index >> self.block_bits) & 0xFFFFFFFF
        if table_index < len(self.table):
            offset = await self._block_offset(table_index)
            if offset:
                return self.cache.hit(offset) or await self.load_block(offset)

        # We write to the refcount table, so we might depend on L2 tables.
        await node.l2_cache.flush()
        new_block = await self.alloc_clusters_noref(cs, (1 << 63) - 1)
        if new_block == 0:
            await node.signal_corruption(
                True, "Preventing invalid allocation of refcount block at offset 0"
            )
            raise BlockError(errno.EIO)
        new_index = new_block >> node.cluster_bits
        if new_index >> self.block_bits == table_index:
            # The block describes itself.
            block = await self.cache.get_empty(new_block)
            assert block.raw is not None
            refcount_set(block.raw, new_index & (self.block_entries - 1), self.order, 1)
        else:
            # Counted by another block (this recurses at most twice).
            await self.update(new_block, cs, 1, False, DISCARD_NEVER)
            await self.cache.flush()
            block = await self.cache.get_empty(new_block)
        await node.fire("refblock_alloc_write")
        node.add_metadata_cluster(new_block, "refcount block")
        self.cache.mark_dirty(block)
        await self.cache.flush()

        if table_index < len(self.table):
            await node.fire("refblock_alloc_hookup")
            await node.write_sync(self.table_offset + table_index * 8, struct.pack(">Q", new_block))
            self.table[table_index] = new_block
            raise Retry()

        # The refcount table is full: build a bigger one in a self-describing area at the end.
        await node.fire("reftable_grow")
        blocks_used = -(-max(cluster_index + 1, new_index + 1) // self.block_entries)
        meta_offset = blocks_used * self.block_entries * cs
        await self.refcount_area(meta_offset, 0, False, table_index, new_block)
        raise Retry()

    async def refcount_area(
        self,
        start_offset: int,
        additional_clusters: int,
        exact_size: bool,
        new_refblock_index: int,
        new_refblock_offset: int,
    ) -> int:
        """qcow2_refcount_area: refcount blocks and a new table at ``start_offset``."""
        node = self.node
        cs = node.cluster_size
        total_blocks, _ = refcount_metadata_clusters(
            start_offset // cs + additional_clusters, cs, self.order, not exact_size
        )
        # QEMU compares these entry counts with the byte limit (QCOW_MAX_REFTABLE_SIZE)
        if total_blocks > MAX_REFTABLE_BYTES:
            raise BlockError(errno.EFBIG)
        area_index = (start_offset // cs) // self.block_entries
        table_size = total_blocks if exact_size else total_blocks + -(-total_blocks // 2)
        per_cluster = cs // 8
        table_size = -(-table_size // per_cluster) * per_cluster
        table_clusters = table_size * 8 // cs
        if table_size > MAX_REFTABLE_BYTES:
            raise BlockError(errno.EFBIG)
        new_table = [0] * table_size
        keep = min(len(self.table), table_size)
        new_table[:keep] = self.table[:keep]
        if new_refblock_offset:
            new_table[new_refblock_index] = new_refblock_offset
        additional = sum(1 for i in range(area_index, total_blocks) if not new_table[i])
        table_offset = start_offset + additional * cs
        end_offset = table_offset + table_clusters * cs
        block_offset = start_offset
        for i in range(area_index, total_blocks):
            if new_table[i]:
                block = await self.cache.get(new_table[i] & REFT_OFFSET_MASK)
            else:
                block = await self.cache.get_empty(block_offset)
                self.cache.mark_dirty(block)
                new_table[i] = block_offset
                block_offset += cs
            first_covered = i * self.block_entries * cs
            if first_covered < end_offset:
                j = (start_offset - first_covered) // cs if first_covered < start_offset else 0
                end_index = min((end_offset - first_covered) // cs, self.block_entries)
                assert block.raw is not None
                for k in range(j, end_index):
                    refcount_set(block.raw, k, self.order, 1)
                self.cache.mark_dirty(block)
        await node.fire("refblock_alloc_write_blocks")
        await self.cache.flush()
        await node.fire("refblock_alloc_write_table")
        await node.write_sync(table_offset, struct.pack(f">{table_size}Q", *new_table))
        await node.fire("refblock_alloc_switch_table")
        await node.write_sync(48, struct.pack(">QI", table_offset, table_clusters))
        old_offset, old_size = self.table_offset, len(self.table) * 8
        self.table = new_table
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        node.header.refcount_table_offset = table_offset
        node.header.refcount_table_clusters = table_clusters
        node.metadata_changed()
        if old_size:
            await self.free_clusters(old_offset, old_size, DISCARD_OTHER)
        return end_offset
