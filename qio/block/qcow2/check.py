"""qcow2 consistency check and repair, as QEMU 7.2's block/qcow2-refcount.c does it.

The snapshot table is read again first (snapshot_table.py; with FIX_ERRORS what cannot be kept
is dropped, and the table is rewritten at the end).  The check then rebuilds, in memory, the
refcount every host cluster should have (the IMRT: header,
active and snapshot L1/L2 tables and the clusters they map, snapshot table, refcount table and
blocks, bitmap directory, tables and data), then compares it with the refcounts stored in the
image.  Findings are reported one line each on the node's error stream with QEMU's wording,
in QEMU's order; the counts land in a :class:`CheckResult`.

Repair (``FIX_LEAKS``, ``FIX_ERRORS``) changes refcounts through the normal refcount code,
rewrites the whole refcount structure from the IMRT when a cluster in use has no refcount at
all, and fixes OFLAG_COPIED flags in L1 and L2 entries.  The same routine repairs an image
whose dirty bit (lazy refcounts) is set when it is opened read-write.

Internal failures follow QEMU's ``return -errno`` flow with the :class:`_Failed` exception; the
public entry points turn them back into a negative status.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from qio.block.qcow2.bitmaps import TABLE_ALL_ONES, TABLE_OFFSET_MASK
from qio.block.qcow2.cluster import C_COMPRESSED, C_NORMAL, C_UNALLOCATED, C_ZERO_ALLOC
from qio.block.qcow2.layout import (
    INCOMPAT_CORRUPT,
    L1E_OFFSET_MASK,
    L1E_RESERVED_MASK,
    L2_BITMAP_ALL_ALLOC,
    L2_BITMAP_ALL_ZEROES,
    L2E_OFFSET_MASK,
    L2E_STD_RESERVED_MASK,
    MAX_L1_BYTES,
    OFLAG_COPIED,
    OFLAG_ZERO,
    REFT_OFFSET_MASK,
    refcount_set,
)
from qio.block.qcow2.refcount import DISCARD_ALWAYS, Retry
from qio.block.qcow2.snapshot_table import (
    MAX_SNAPSHOTS,
    Snapshot,
    SnapshotTableError,
    read_table,
    write_table,
)
from qio.errors import BlockError, OpenError
from qio.numbers import hexc

if TYPE_CHECKING:
    from qio.block.qcow2.driver import Qcow2Node

FIX_LEAKS = 1  # BDRV_FIX_LEAKS
FIX_ERRORS = 2  # BDRV_FIX_ERRORS
CHECK_FRAG_INFO = 2
REFT_RESERVED_MASK = 0x1FF
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE


@dataclass
class CheckResult:
    """BdrvCheckResult plus its BlockFragInfo."""

    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0

    def copy(self) -> CheckResult:
        return CheckResult(**{f.name: getattr(self, f.name) for f in fields(self)})

    def restore(self, other: CheckResult) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))

    def add(self, other: CheckResult, allocation_info: bool) -> None:
        """qcow2_add_check_result."""
        self.corruptions += other.corruptions
        self.leaks += other.leaks
        self.check_errors += other.check_errors
        self.corruptions_fixed += other.corruptions_fixed
        self.leaks_fixed += other.leaks_fixed
        if allocation_info:
            self.image_end_offset = other.image_end_offset
            self.total_clusters = other.total_clusters
            self.allocated_clusters = other.allocated_clusters
            self.fragmented_clusters = other.fragmented_clusters
            self.compressed_clusters = other.compressed_clusters


class _Failed(Exception):
    """QEMU's ``return -errno`` out of the check (the counts stay as they are)."""

    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.errno = err


class _Checker:
    """One qcow2_check_refcounts run."""

    def __init__(
        self, node: Qcow2Node, res: CheckResult, fix: int, snapshots: list[Snapshot]
    ) -> None:
        self.node = node
        self.snapshots = snapshots
        self.res = res
        self.fix = fix
        self.cs = node.cluster_size
        self.bits = node.cluster_bits
        self.refs = node.refcounts
        self.imrt: list[int] = []  # the in-memory refcount table; its length is nb_clusters
        self.rebuild = False
        self.highest_cluster = 0

    def err(self, text: str) -> None:
        self.node.context.err(text + "\n")

    # -- the in-memory refcount table ----------------------------------------------------------
    def _grow(self, nb_clusters: int) -> None:
        if nb_clusters > len(self.imrt):
            self.imrt.extend([0] * (nb_clusters - len(self.imrt)))

    def inc_refcounts(self, offset: int, size: int) -> None:
        """qcow2_inc_refcounts_imrt."""
        if size <= 0:
            return
        cs = self.cs
        file_len = self.node.image_file.getlength()
        # The last cluster may be partly past the end of the file, but no more than that.
        if offset + size - file_len >= cs:
            self.err(
                "ERROR: counting reference for region exceeding the end of the file by one "
                f"cluster or more: offset 0x{offset:x} size 0x{size:x}"
            )
            self.res.corruptions += 1
            return
        start = offset & ~(cs - 1)
        last = (offset + size - 1) & ~(cs - 1)
        imrt = self.imrt
        top = self.refs.max
        for cluster_offset in range(start, last + 1, cs):
            k = cluster_offset >> self.bits
            if k >= len(imrt):
                self._grow(k + 1)
            if imrt[k] == top:
                self.err(f"ERROR: overflow cluster offset=0x{cluster_offset:x}")
                self.err(
                    "Use qemu-img amend to increase the refcount entry width or qemu-img "
                    "convert to create a clean copy if the image cannot be opened for writing"
                )
                self.res.corruptions += 1
                continue
            imrt[k] += 1

    # -- L1 and L2 tables --------------------------------------------------------------------
    async def _read(self, offset: int, size: int) -> bytearray:
        buf = bytearray(size)
        await self.node.image_file.preadv(offset, memoryview(buf))
        return buf

    async def _fix_l2_entry_by_zero(
        self, l2_offset: int, words: list[int], index: int, active: bool
    ) -> tuple[bool, int]:
        """fix_l2_entry_by_zero: make the entry read as zeros.  Returns (metadata overlap,
        errno or 0)."""
        node = self.node
        extended = node.header.extended_l2
        esize = node.header.l2_entry_size
        entry_offset = l2_offset + index * esize
        if extended:
            bitmap = words[index * 2 + 1]
            bitmap |= bitmap << 32
            bitmap &= L2_BITMAP_ALL_ZEROES
            words[index * 2 + 1] = bitmap
            words[index * 2] = 0
            data = struct.pack(">QQ", 0, bitmap)
        else:
            words[index] = OFLAG_ZERO
            data = struct.pack(">Q", OFLAG_ZERO)
        try:
            await node.check_metadata_write(entry_offset, esize, "l2" if active else None)
        except BlockError as exc:
            self.err("ERROR: Overlap check failed")
            self.res.check_errors += 1
            return True, exc.errno
        try:
            await node.write_sync(entry_offset, data)
        except BlockError as exc:
            self.err(f"ERROR: Failed to overwrite L2 table entry: {exc.strerror}")
            self.res.check_errors += 1
            return False, exc.errno
        if active:
            node.l2_cache.discard(l2_offset)
        self.res.corruptions -= 1
        self.res.corruptions_fixed += 1
        return False, 0

    async def check_l2(self, l2_offset: int, flags: int, active: bool) -> None:
        """check_refcounts_l2."""
        node = self.node
        res = self.res
        h = node.header
        extended = h.extended_l2
        step = 2 if extended else 1
        entries = h.l2_entries
        try:
            raw = await self._read(l2_offset, entries * h.l2_entry_size)
        except BlockError as exc:
            self.err("ERROR: I/O error in check_refcounts_l2")
            res.check_errors += 1
            raise _Failed(exc.errno) from None
        if not any(raw):
            return  # an empty table (or one past the end of the file): nothing to count
        words = list(struct.unpack(f">{entries * step}Q", raw))
        cluster_type = node.map.cluster_type
        geometry = node.compressed
        has_data_file = node.has_data_file
        cs = self.cs
        next_contiguous = 0
        for i in range(entries):
            entry = words[i * step]
            bitmap = words[i * step + 1] if extended else 0
            if not entry and not bitmap:
                continue  # unallocated, nothing to check
            kind = cluster_type(entry)
            if kind != C_COMPRESSED and entry & L2E_STD_RESERVED_MASK:
                self.err(f"ERROR found l2 entry with reserved bits set: {entry:x}")
                res.corruptions += 1
            if kind == C_COMPRESSED:
                if entry & OFLAG_COPIED:
                    self.err(
                        f"ERROR: coffset=0x{entry & geometry.offset_mask:x}: copied flag must "
                        "never be set for compressed clusters"
                    )
                    entry &= ~OFLAG_COPIED
                    res.corruptions += 1
                if has_data_file:
                    self.err(f"ERROR compressed cluster {i} with data file, entry=0x{entry:x}")
                    res.corruptions += 1
                    continue
                if bitmap:
                    self.err(
                        f"ERROR compressed cluster {i} with non-zero subcluster allocation "
                        f"bitmap, entry=0x{entry:x}"
                    )
                    res.corruptions += 1
                    continue
                coffset, csize = geometry.parse(entry)
                self.inc_refcounts(coffset, csize)
                if flags & CHECK_FRAG_INFO:
                    res.allocated_clusters += 1
                    res.compressed_clusters += 1
                    # Compressed clusters are fragmented by nature (sector-granular reads).
                    res.fragmented_clusters += 1
            elif kind in (C_NORMAL, C_ZERO_ALLOC):
                offset = entry & L2E_OFFSET_MASK
                if (bitmap >> 32) & bitmap:
                    res.corruptions += 1
                    self.err(
                        f"ERROR offset={offset:x}: Allocated cluster has corrupted subcluster "
                        "allocation bitmap"
                    )
                if offset & (cs - 1):
                    res.corruptions += 1
                    if extended:
                        contains_data = bool(bitmap & L2_BITMAP_ALL_ALLOC)
                    else:
                        contains_data = not entry & OFLAG_ZERO
                    if not contains_data:
                        fixing = bool(self.fix & FIX_ERRORS)
                        self.err(
                            f"{'Repairing' if fixing else 'ERROR'} offset={offset:x}: "
                            "Preallocated cluster is not properly aligned; L2 entry corrupted."
                        )
                        if fixing:
                            overlap, failure = await self._fix_l2_entry_by_zero(
                                l2_offset, words, i, active
                            )
                            if overlap:
                                raise _Failed(failure)
                            if not failure:
                                continue  # the cluster is not in use any more
                    else:
                        self.err(
                            f"ERROR offset={offset:x}: Data cluster is not properly aligned; "
                            "L2 entry corrupted."
                        )
                if flags & CHECK_FRAG_INFO:
                    res.allocated_clusters += 1
                    if next_contiguous and offset != next_contiguous:
                        res.fragmented_clusters += 1
                    next_contiguous = offset + cs
                if not has_data_file:
                    self.inc_refcounts(offset, cs)
            elif kind == C_UNALLOCATED:
                if bitmap & L2_BITMAP_ALL_ALLOC:
                    res.corruptions += 1
                    self.err("ERROR: Unallocated cluster has non-zero subcluster allocation map")

    async def check_l1(self, l1_offset: int, l1_size: int, flags: int, active: bool) -> None:
        """check_refcounts_l1."""
        if not l1_size:
            return
        self.inc_refcounts(l1_offset, l1_size * 8)
        try:
            raw = await self._read(l1_offset, l1_size * 8)
        except BlockError as exc:
            self.err("ERROR: I/O error in check_refcounts_l1")
            self.res.check_errors += 1
            raise _Failed(exc.errno) from None
        for entry in struct.unpack(f">{l1_size}Q", raw):
            if not entry:
                continue
            if entry & L1E_RESERVED_MASK:
                self.err(f"ERROR found L1 entry with reserved bits set: {entry:x}")
                self.res.corruptions += 1
            l2_offset = entry & L1E_OFFSET_MASK
            self.inc_refcounts(l2_offset, self.cs)
            if l2_offset & (self.cs - 1):
                self.err(
                    f"ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; "
                    "L1 entry corrupted"
                )
                self.res.corruptions += 1
            await self.check_l2(l2_offset, flags, active)

    # -- the other metadata ----------------------------------------------------------------------
    async def check_bitmaps(self) -> None:
        """qcow2_check_bitmaps_refcounts."""
        bitmaps = self.node.bitmaps
        if not bitmaps.bitmaps:
            return
        self.inc_refcounts(bitmaps.directory_offset, bitmaps.directory_size)
        for bm in bitmaps.bitmaps:
            self.inc_refcounts(bm.table_offset, bm.table_size * 8)
            try:
                raw = await self._read(bm.table_offset, bm.table_size * 8)
            except BlockError as exc:
                self.res.corruptions += 1
                raise _Failed(exc.errno) from None
            for entry in struct.unpack(f">{bm.table_size}Q", raw):
                offset = entry & TABLE_OFFSET_MASK
                if entry & BME_TABLE_ENTRY_RESERVED_MASK or (
                    offset and (entry & TABLE_ALL_ONES or offset % self.cs)
                ):
                    self.res.corruptions += 1
                    continue
                if offset:
                    self.inc_refcounts(offset, self.cs)

    async def check_refblocks(self) -> None:
        """check_refblocks: account for every refcount block, checking where it is."""
        res = self.res
        cs = self.cs
        fixing = bool(self.fix & FIX_ERRORS)
        for i, raw_entry in enumerate(self.refs.table):
            offset = raw_entry & REFT_OFFSET_MASK
            cluster = offset >> self.bits
            if raw_entry & REFT_RESERVED_MASK:
                self.err(f"ERROR refcount table entry {i} has reserved bits set")
                res.corruptions += 1
                self.rebuild = True
                continue
            if offset & (cs - 1):
                self.err(
                    f"ERROR refcount block {i} is not cluster aligned; refcount table entry "
                    "corrupted"
                )
                res.corruptions += 1
                self.rebuild = True
                continue
            if cluster >= len(self.imrt):
                res.corruptions += 1
                self.err(
                    f"{'Repairing' if fixing else 'ERROR'} refcount block {i} is outside image"
                )
                if fixing:
                    failure = await self._grow_file_for(offset)
                    if failure is None:
                        res.corruptions -= 1
                        res.corruptions_fixed += 1
                        # freshly allocated and zeroed: the refcount can only be 1
                        self.inc_refcounts(offset, cs)
                        continue
                    self.rebuild = True
                    self.err(f"ERROR could not resize image: {os.strerror(failure)}")
                continue
            if offset:
                self.inc_refcounts(offset, cs)
                if self.imrt[cluster] != 1:
                    self.err(f"ERROR refcount block {i} refcount={self.imrt[cluster]}")
                    res.corruptions += 1
                    self.rebuild = True

    async def _grow_file_for(self, offset: int) -> int | None:
        """Extend the image file over a refcount block that lies past its end; the errno of
        a failure, None on success."""
        node = self.node
        cs = self.cs
        if offset > (1 << 63) - 1 - cs:
            return errno.EINVAL
        try:
            await node.image_file.truncate(offset + cs, False, "off")
        except OpenError as exc:
            node.context.error(exc.message)
            return exc.errno
        except BlockError as exc:
            return exc.errno
        self._grow(-(-node.image_file.getlength() // cs))
        if offset >> self.bits >= len(self.imrt):
            return errno.EINVAL
        return None

    async def calculate_refcounts(self) -> None:
        """calculate_refcounts: fill the IMRT from every structure that references clusters."""
        node = self.node
        h = node.header
        self.inc_refcounts(0, self.cs)  # the header
        await self.check_l1(node.map.l1_offset, node.map.l1_size, CHECK_FRAG_INFO, True)
        if node.has_data_file and h.nb_snapshots:
            self.err(f"ERROR {h.nb_snapshots} snapshots in image with data file")
            self.res.corruptions += 1
        for sn in self.snapshots:
            names = f"{_text(sn.id_str)} ({_text(sn.name)})"
            if sn.l1_offset & (self.cs - 1):
                self.err(
                    f"ERROR snapshot {names} l1_offset={hexc(sn.l1_offset)}: "
                    "L1 table is not cluster aligned; snapshot table entry corrupted"
                )
                self.res.corruptions += 1
                continue
            if sn.l1_size > MAX_L1_BYTES // 8:
                self.err(
                    f"ERROR snapshot {names} l1_size={hexc(sn.l1_size)}: "
                    "L1 table is too large; snapshot table entry corrupted"
                )
                self.res.corruptions += 1
                continue
            await self.check_l1(sn.l1_offset, sn.l1_size, 0, False)
        self.inc_refcounts(h.snapshots_offset, node.snapshot_table_bytes)
        self.inc_refcounts(self.refs.table_offset, len(self.refs.table) * 8)
        await self.check_bitmaps()
        await self.check_refblocks()

    # -- comparing -------------------------------------------------------------------------------
    async def compare_refcounts(self, fix: int, res: CheckResult) -> None:
        """compare_refcounts: stored refcounts against the IMRT, fixing what ``fix`` allows."""
        refs = self.refs
        self.highest_cluster = 0
        for i in range(len(self.imrt)):
            try:
                stored = await refs.get(i)
            except BlockError as exc:
                self.err(f"Can't get refcount for cluster {i}: {exc.strerror}")
                res.check_errors += 1
                continue
            expected = self.imrt[i]
            if stored or expected:
                self.highest_cluster = i
            if stored == expected:
                continue
            fixed: str | None = None
            if stored == 0:
                self.rebuild = True
            elif stored > expected and fix & FIX_LEAKS:
                fixed = "leaks_fixed"
            elif stored < expected and fix & FIX_ERRORS:
                fixed = "corruptions_fixed"
            label = "Repairing" if fixed else "ERROR" if stored < expected else "Leaked"
            self.err(f"{label} cluster {i} refcount={stored} reference={expected}")
            if fixed:
                try:
                    await refs.update(
                        i << self.bits,
                        1,
                        abs(stored - expected),
                        stored > expected,
                        DISCARD_ALWAYS,
                    )
                except (BlockError, Retry):
                    pass
                else:
                    setattr(res, fixed, getattr(res, fixed) + 1)
                    continue
            if stored < expected:
                res.corruptions += 1
            else:
                res.leaks += 1
        await refs.process_discards()

    # -- rebuilding the refcount structure ---------------------------------------------------------
    def alloc_clusters_imrt(self, count: int, first_free: int) -> tuple[int, int]:
        """alloc_clusters_imrt: (offset of ``count`` free clusters, updated first_free)."""
        imrt = self.imrt
        cluster = first_free
        first_gap = True
        contiguous = 0
        while cluster < len(imrt) and contiguous < count:
            if not imrt[cluster]:
                contiguous += 1
                if first_gap:
                    first_free = cluster
                    first_gap = False
            elif contiguous:
                contiguous = 0
            cluster += 1
        if contiguous < count:
            self._grow(cluster + count - contiguous)
        cluster -= contiguous
        for k in range(cluster, cluster + count):
            imrt[k] = 1
        return cluster << self.bits, first_free

    def _refblock_bytes(self, index: int) -> bytes:
        """Refcount block ``index`` as the IMRT says it should be."""
        per_block = self.refs.block_entries
        start = index * per_block
        raw = bytearray(self.cs)
        order = self.refs.order
        for j, value in enumerate(self.imrt[start : start + per_block]):
            if value:
                refcount_set(raw, j, order, value)
        return bytes(raw)

    async def _write_refblocks(self, first: int, end: int, reftable: list[int]) -> bool:
        """rebuild_refcounts_write_refblocks: write the refcount blocks covering the used
        clusters of [first, end), allocating them in the IMRT.  Returns whether the new
        refcount table had to grow."""
        node = self.node
        block_bits = self.refs.block_bits
        per_block = self.refs.block_entries
        first_free = 0
        grown = False
        cluster = first
        while cluster < end:
            if not self.imrt[cluster]:
                cluster += 1
                continue
            index = cluster >> block_bits
            start = index << block_bits
            if index < len(reftable) and reftable[index]:
                block_offset = reftable[index]
            else:
                first_free = max(first_free, start)
                block_offset, first_free = self.alloc_clusters_imrt(1, first_free)
                end = max(end, (block_offset >> self.bits) + 1)
                if len(reftable) <= index:
                    per_cluster = self.cs // 8
                    entries = -(-(index + 1) // per_cluster) * per_cluster
                    reftable.extend([0] * (entries - len(reftable)))
                    grown = True
                reftable[index] = block_offset
            try:
                await node.check_metadata_write(block_offset, self.cs, None)
                await node.image_file.pwritev(block_offset, memoryview(self._refblock_bytes(index)))
            except BlockError as exc:
                raise _RebuildError("ERROR writing refblock", exc.errno) from None
            cluster = start + per_block
        return grown

    async def rebuild_refcount_structure(self) -> None:
        """rebuild_refcount_structure: new refcount blocks and table from the IMRT alone.
        The old structure is leaked (and freed by the leak pass that follows)."""
        node = self.node
        refs = self.refs
        cs = self.cs
        await node.refblock_cache.flush()
        node.refblock_cache.drop_all()
        reftable: list[int] = []
        try:
            grown = await self._write_refblocks(0, len(self.imrt), reftable)
            assert grown
            while grown:
                clusters = -(-len(reftable) * 8 // cs)
                reftable_offset, _ = self.alloc_clusters_imrt(clusters, 0)
                start = reftable_offset >> self.bits
                grown = await self._write_refblocks(start, start + clusters, reftable)
            data = struct.pack(f">{len(reftable)}Q", *reftable)
            try:
                await node.check_metadata_write(reftable_offset, len(data), None)
                await node.image_file.pwritev(reftable_offset, memoryview(data))
            except BlockError as exc:
                raise _RebuildError("ERROR writing reftable", exc.errno) from None
            clusters = -(-len(data) // cs)
            try:
                await node.write_sync(48, struct.pack(">QI", reftable_offset, clusters))
            except BlockError as exc:
                raise _RebuildError("ERROR setting reftable", exc.errno) from None
        except _RebuildError as exc:
            self.res.check_errors += 1
            node.context.error(f"{exc.message}: {os.strerror(exc.errno)}")
            raise _Failed(exc.errno) from None
        refs.table = reftable
        refs.table_offset = reftable_offset
        refs.table_clusters = clusters
        node.header.refcount_table_offset = reftable_offset
        node.header.refcount_table_clusters = clusters
        node.metadata_changed()

    # -- OFLAG_COPIED ------------------------------------------------------------------------------
    async def check_oflag_copied(self) -> None:
        """check_oflag_copied: COPIED must be set exactly when the refcount is 1."""
        node = self.node
        res = self.res
        fix = self.fix
        if fix & FIX_ERRORS:
            repair = True
        elif fix & FIX_LEAKS:
            # only when the refcounts are known to be right now
            repair = not res.check_errors and not res.corruptions and not res.leaks
        else:
            repair = False
        label = "Repairing" if repair else "ERROR"
        h = node.header
        extended = h.extended_l2
        step = 2 if extended else 1
        entries = h.l2_entries
        table = node.map.l1_table
        for i in range(len(table)):
            l1_entry = table[i]
            l2_offset = l1_entry & L1E_OFFSET_MASK
            if not l2_offset:
                continue
            try:
                refcount = await self.refs.get(l2_offset >> self.bits)
            except BlockError:
                continue  # already reported by compare_refcounts
            if (refcount == 1) != bool(l1_entry & OFLAG_COPIED):
                res.corruptions += 1
                self.err(
                    f"{label} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1_entry:x} "
                    f"refcount={refcount}"
                )
                if repair:
                    table[i] = (
                        l1_entry | OFLAG_COPIED if refcount == 1 else l1_entry & ~OFLAG_COPIED
                    )
                    try:
                        await node.map.write_l1_entry(i)
                    except BlockError as exc:
                        res.check_errors += 1
                        raise _Failed(exc.errno) from None
                    res.corruptions -= 1
                    res.corruptions_fixed += 1
            try:
                raw = await self._read(l2_offset, entries * h.l2_entry_size)
            except BlockError as exc:
                self.err(f"ERROR: Could not read L2 table: {exc.strerror}")
                res.check_errors += 1
                raise _Failed(exc.errno) from None
            words = list(struct.unpack(f">{entries * step}Q", raw))
            dirty = 0
            for j in range(entries):
                l2_entry = words[j * step]
                if node.map.cluster_type(l2_entry) not in (C_NORMAL, C_ZERO_ALLOC):
                    continue
                if node.has_data_file:
                    refcount = 1
                else:
                    try:
                        refcount = await self.refs.get((l2_entry & L2E_OFFSET_MASK) >> self.bits)
                    except BlockError:
                        continue
                if (refcount == 1) != bool(l2_entry & OFLAG_COPIED):
                    res.corruptions += 1
                    self.err(
                        f"{label} OFLAG_COPIED data cluster: l2_entry={l2_entry:x} "
                        f"refcount={refcount}"
                    )
                    if repair:
                        words[j * step] = (
                            l2_entry | OFLAG_COPIED if refcount == 1 else l2_entry & ~OFLAG_COPIED
                        )
                        dirty += 1
            if dirty:
                try:
                    await node.check_metadata_write(l2_offset, self.cs, "l2")
                except BlockError as exc:
                    self.err(
                        "ERROR: Could not write L2 table; metadata overlap check failed: "
                        f"{exc.strerror}"
                    )
                    res.check_errors += 1
                    raise _Failed(exc.errno) from None
                try:
                    data = struct.pack(f">{len(words)}Q", *words)
                    await node.image_file.pwritev(l2_offset, memoryview(data))
                except BlockError as exc:
                    self.err(f"ERROR: Could not write L2 table: {exc.strerror}")
                    res.check_errors += 1
                    raise _Failed(exc.errno) from None
                # the cached copy (if any) is stale now
                node.l2_cache.discard(l2_offset)
                res.corruptions -= dirty
                res.corruptions_fixed += dirty

    # -- the whole check ------------------------------------------------------------------------------
    async def run(self) -> None:
        """qcow2_check_refcounts."""
        node = self.node
        res = self.res
        cs = self.cs
        size = node.image_file.getlength()
        nb_clusters = -(-size // cs)
        if nb_clusters > 0x7FFFFFFF:
            res.check_errors += 1
            raise _Failed(errno.EFBIG)
        self._grow(nb_clusters)
        res.total_clusters = -(-node.header.size // cs)
        await self.calculate_refcounts()
        # When there is something to fix without a rebuild, the comparison runs again
        # with fixing on, from the counts as they were before it.
        pre_compare = res.copy()
        await self.compare_refcounts(0, res)
        if self.rebuild and self.fix & FIX_ERRORS:
            old = res.copy()
            fresh_leaks = 0
            self.err("Rebuilding refcount structure")
            await self.rebuild_refcount_structure()
            res.corruptions = 0
            res.leaks = 0
            # The references are counted again against the new refcount table.
            self.rebuild = False
            self.imrt = [0] * len(self.imrt)
            await self.calculate_refcounts()
            if self.fix & FIX_LEAKS:
                # The old structure is leaked now: free it.  Leaks that remain were made by
                # the rebuild itself; the rest of this pass's counts do not matter.
                scratch = CheckResult()
                await self.compare_refcounts(FIX_LEAKS, scratch)
                if self.rebuild:
                    self.err("ERROR rebuilt refcount structure is still broken")
                fresh_leaks = scratch.leaks
            if res.corruptions < old.corruptions:
                res.corruptions_fixed += old.corruptions - res.corruptions
            if res.leaks < old.leaks:
                res.leaks_fixed += old.leaks - res.leaks
            res.leaks += fresh_leaks
        elif self.fix:
            if self.rebuild:
                self.err("ERROR need to rebuild refcount structures")
                res.check_errors += 1
                raise _Failed(errno.EIO)
            if res.leaks or res.corruptions:
                res.restore(pre_compare)
                await self.compare_refcounts(self.fix, res)
        await self.check_oflag_copied()
        res.image_end_offset = (self.highest_cluster + 1) * cs


class _RebuildError(Exception):
    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.message = message
        self.errno = err


# -- entry points ------------------------------------------------------------------------------------
def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


async def _check_read_snapshot_table(node: Qcow2Node, res: CheckResult, fix: int) -> list[Snapshot]:
    """qcow2_check_read_snapshot_table: read the table again from what the header says,
    dropping (with FIX_ERRORS) what cannot be kept.  Raises _Failed."""
    from qio.block.qcow2.driver import SNAPSHOT_HEADER, _validate_table

    ctx = node.context
    h = node.header
    raw = bytearray(12)
    try:
        await node.image_file.preadv(60, memoryview(raw))
    except BlockError as exc:
        res.check_errors += 1
        ctx.err(
            "ERROR failed to read the snapshot table pointer from the image header: "
            f"{exc.strerror}\n"
        )
        raise _Failed(exc.errno) from None
    count, offset = struct.unpack(">IQ", raw)
    dropped = 0
    if count > MAX_SNAPSHOTS and fix & FIX_ERRORS:
        ctx.err(f"Discarding {count - MAX_SNAPSHOTS} overhanging snapshots\n")
        dropped += count - MAX_SNAPSHOTS
        count = MAX_SNAPSHOTS
    h.nb_snapshots, h.snapshots_offset = count, offset
    try:
        _validate_table(
            offset,
            count,
            SNAPSHOT_HEADER.size,
            SNAPSHOT_HEADER.size * MAX_SNAPSHOTS,
            node.cluster_size,
            "snapshot table",
        )
    except OpenError as exc:
        res.check_errors += 1
        ctx.error(f"ERROR {exc.message}")
        if count > MAX_SNAPSHOTS:
            ctx.err(
                f"You can force-remove all {count - MAX_SNAPSHOTS} overhanging snapshots "
                "with qemu-img check -r all\n"
            )
        h.nb_snapshots, h.snapshots_offset = 0, 0  # the table was not read
        raise _Failed(exc.errno) from None
    report: list[str] = []
    try:
        table = await read_table(node, offset, count, bool(fix & FIX_ERRORS), report)
    except SnapshotTableError as exc:
        for line in report:
            ctx.err(line + "\n")
        res.check_errors += 1
        ctx.error(f"ERROR failed to read the snapshot table: {exc.message}")
        if exc.hint:
            ctx.err(exc.hint + "\n")
        h.nb_snapshots, h.snapshots_offset = 0, 0
        raise _Failed(exc.errno) from None
    for line in report:
        ctx.err(line + "\n")
    dropped += table.dropped_snapshots
    h.nb_snapshots = len(table.snapshots)
    node.snapshot_table_bytes = table.size
    node.snapshot_l1s = [(sn.l1_offset, sn.l1_size) for sn in table.snapshots]
    node.metadata_changed()
    res.corruptions += dropped + table.extra_data_dropped
    if dropped:
        # The header must say so before the refcounts are checked (the dropped snapshots'
        # clusters leak, and that check frees them).
        try:
            await node.write_sync(60, struct.pack(">I", h.nb_snapshots))
        except BlockError as exc:
            res.check_errors += 1
            ctx.err(
                f"ERROR failed to update the snapshot count in the image header: {exc.strerror}\n"
            )
            raise _Failed(exc.errno) from None
        res.corruptions_fixed += dropped
        res.corruptions -= dropped
    if h.version >= 3:
        # Version 3 entries need at least the 64-bit VM state size and the disk size.
        label = "Repairing" if fix & FIX_ERRORS else "ERROR"
        for i, sn in enumerate(table.snapshots):
            if sn.extra_data_size < 16:
                res.corruptions += 1
                ctx.err(f"{label} snapshot table entry {i} is incomplete\n")
    return table.snapshots


async def _check_fix_snapshot_table(
    node: Qcow2Node, res: CheckResult, fix: int, snapshots: list[Snapshot]
) -> None:
    """qcow2_check_fix_snapshot_table: rewrite the table when it had repairable faults."""
    if res.corruptions and fix & FIX_ERRORS:
        try:
            await write_table(node, snapshots, node.snapshot_table_bytes)
        except BlockError as exc:
            res.check_errors += 1
            node.context.err(f"ERROR failed to update snapshot table: {exc.strerror}\n")
            raise _Failed(exc.errno) from None
        res.corruptions_fixed += res.corruptions
        res.corruptions = 0


async def _check_locked(node: Qcow2Node, fix: int) -> tuple[CheckResult, int]:
    """qcow2_co_check_locked: (result, 0 or -errno)."""
    result = CheckResult()
    snapshot_res = CheckResult()
    refcount_res = CheckResult()
    try:
        snapshots = await _check_read_snapshot_table(node, snapshot_res, fix)
    except _Failed as exc:
        result.add(snapshot_res, False)
        return result, -exc.errno
    status = 0
    try:
        await _Checker(node, refcount_res, fix, snapshots).run()
    except _Failed as exc:
        status = -exc.errno
    result.add(refcount_res, True)
    if status < 0:
        result.add(snapshot_res, False)
        return result, status
    try:
        await _check_fix_snapshot_table(node, snapshot_res, fix, snapshots)
    except _Failed as exc:
        status = -exc.errno
    result.add(snapshot_res, False)
    if status < 0:
        return result, status
    if fix and not result.check_errors and not result.corruptions:
        try:
            await node.mark_clean()
            await _mark_consistent(node)
        except BlockError as exc:
            return result, -exc.errno
    return result, status


async def _mark_consistent(node: Qcow2Node) -> None:
    """qcow2_mark_consistent: a repaired image loses its corrupt bit."""
    h = node.header
    if h.incompatible_features & INCOMPAT_CORRUPT:
        await node.flush_caches()
        h.incompatible_features &= ~INCOMPAT_CORRUPT
        await node.update_header()


async def check_image(node: Qcow2Node, fix: int = 0) -> tuple[CheckResult, int]:
    """Check (and with ``fix`` repair) an open image: qcow2_co_check.  Returns the result
    and 0, or -errno when the check could not be completed."""
    if node.context.offline:
        # an image found corrupt earlier was taken offline (bdrv_co_check: no driver)
        return CheckResult(), -errno.ENOMEDIUM
    await node.lock.acquire()
    try:
        return await _check_locked(node, fix)
    finally:
        node.lock.release()


async def repair_dirty_image(node: Qcow2Node) -> None:
    """What a read-write open does to an image with the dirty bit set: a full repair."""
    result, status = await _check_locked(node, FIX_ERRORS | FIX_LEAKS)
    if status < 0 or result.check_errors:
        err = -status if status < 0 else errno.EIO
        raise OpenError(f"Could not repair dirty image: {os.strerror(err)}", err)
