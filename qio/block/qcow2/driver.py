"""The qcow2 format driver.

Opening validates the header as QEMU does (same error texts), loads the L1 and refcount
tables and sets up the metadata caches.  Reads resolve guest ranges into runs (data, zero,
unallocated → backing file, compressed) through ``ClusterMap.get_host_offset``; writes
allocate through ``ClusterMap.alloc_host_offset``, write the data together with the
copy-on-write of the untouched parts of new clusters, and link L2 entries afterwards.  The
node lock is released around data I/O, like QEMU's s->lock, so asynchronous requests and
blkdebug breakpoints interleave the way they do in qemu-io.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from qio.block.coroutine import COST_READ, COST_WRITE, CoMutex, scheduler
from qio.block.node import BlockNode, BlockStatus, DriverInfo, ReqFlags, SpecificInfo, zero_fill
from qio.block.open import open_child
from qio.block.options import Options
from qio.block.payload import WriteData
from qio.block.qcow2 import compress as codec
from qio.block.qcow2.bitmaps import PersistentBitmaps
from qio.block.qcow2.cache import TableCache
from qio.block.qcow2.cluster import (
    SC_COMPRESSED,
    SC_NORMAL,
    SC_UNALLOCATED_ALLOC,
    SC_UNALLOCATED_PLAIN,
    SC_ZERO_ALLOC,
    SC_ZERO_PLAIN,
    ClusterMap,
    CowRegion,
    L2Meta,
)
from qio.block.qcow2.layout import (
    AUTOCLEAR_KNOWN,
    COMPRESSION_NAMES,
    COMPRESSION_ZLIB,
    COMPRESSION_ZSTD,
    CRYPT_LUKS,
    CRYPT_NONE,
    FEATURE_INCOMPATIBLE,
    INCOMPAT_COMPRESSION,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    INCOMPAT_KNOWN,
    L1E_OFFSET_MASK,
    MAX_L1_BYTES,
    MAX_REFTABLE_BYTES,
    QEMU_FEATURE_TABLE,
    REFT_OFFSET_MASK,
    CompressedGeometry,
    Header,
    LayoutError,
    parse_header,
    serialize_header,
    vm_state_offset,
)
from qio.block.qcow2.refcount import DISCARD_ALWAYS, DISCARD_OTHER, DISCARD_REQUEST, Refcounts
from qio.errors import BlockError, OpenError

INT_MAX = (1 << 31) - 1

DEFAULT_L2_CACHE_BYTES = 32 << 20  # DEFAULT_L2_CACHE_MAX_SIZE on Linux
MIN_L2_CACHE_TABLES = 2
MIN_REFCOUNT_CACHE_TABLES = 4
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_EXTRA_DATA = 1024
MAX_SNAPSHOTS_TABLE_BYTES = 1024 * MAX_SNAPSHOTS
SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")
PREALLOC_MODES = ("off", "metadata", "falloc", "full")
COMPRESS_WORKERS = 8  # QCOW2_MAX_WORKERS: compressed clusters written in parallel


def _unsupported_features(h: Header, mask: int) -> str:
    names: list[str] = []
    table = h.feature_names or []
    for kind, bit, name in table:
        if kind == FEATURE_INCOMPATIBLE and mask & (1 << bit):
            names.append(name[:46])
            mask &= ~(1 << bit)
    if mask:
        names.append(f"Unknown incompatible feature: {mask:x}")
    return ", ".join(names)


def _validate_table(
    offset: int, entries: int, entry_len: int, max_bytes: int, cluster_size: int, name: str
) -> None:
    if entries > max_bytes // entry_len:
        raise OpenError(f"{name} too large", errno.EFBIG)
    if (1 << 63) - 1 - entries * entry_len < offset or offset % cluster_size:
        raise OpenError(f"{name} offset invalid")


# QEMU's qcow2 overlap-check templates and per-kind option names (QCOW2_OL_*)
OVERLAP_NAMES = {
    "main-header": "qcow2_header",
    "active-l1": "active L1 table",
    "active-l2": "active L2 table",
    "refcount-table": "refcount table",
    "refcount-block": "refcount block",
    "snapshot-table": "snapshot table",
    "inactive-l1": "inactive L1 table",
    "inactive-l2": "inactive L2 table",
    "bitmap-directory": "bitmap directory",
}
_CONSTANT = (
    "qcow2_header",
    "active L1 table",
    "refcount table",
    "snapshot table",
    "bitmap directory",
)
_CACHED = (*_CONSTANT, "active L2 table", "refcount block", "inactive L1 table")
OVERLAP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "none": (),
    "constant": _CONSTANT,
    "cached": _CACHED,
    "all": (*_CACHED, "inactive L2 table"),
}


# The order in which QEMU's qcow2_check_metadata_overlap tests the kinds of metadata: a
# write that overlaps several is reported with the first.
OVERLAP_ORDER = (
    "qcow2_header",
    "active L1 table",
    "refcount table",
    "snapshot table",
    "inactive L1 table",
    "active L2 table",
    "refcount block",
)


class MetadataMap:
    """Where the metadata the overlap checks protect lives: single clusters (header, L2
    tables, refcount blocks) and cluster ranges (L1 tables, refcount and snapshot tables).
    A cluster may belong to several kinds (in a damaged image); kinds the overlap-check
    option leaves out are not recorded."""

    def __init__(self, kinds: set[str]) -> None:
        self.kinds = kinds
        self.clusters: dict[int, list[str]] = {}
        self.ranges: list[tuple[int, int, str]] = []  # [start, end) in clusters

    def add_cluster(self, cluster: int, name: str) -> None:
        if name in self.kinds:
            names = self.clusters.setdefault(cluster, [])
            if name not in names:
                names.append(name)

    def add_range(self, start: int, end: int, name: str) -> None:
        if name in self.kinds:
            self.ranges.append((start, end, name))

    def forget_cluster(self, cluster: int) -> None:
        self.clusters.pop(cluster, None)

    def first_overlap(self, first: int, last: int, allowed: str | None) -> str | None:
        """The kind a write to clusters [first, last] would damage, in QEMU's order."""
        found: set[str] = set()
        for start, end, name in self.ranges:
            if start <= last and first < end:
                found.add(name)
        if len(self.clusters) < last - first + 1:
            hits = (names for c, names in self.clusters.items() if first <= c <= last)
        else:
            hits = (names for c in range(first, last + 1) if (names := self.clusters.get(c)))
        for names in hits:
            found.update(names)
        found.discard(allowed)  # type: ignore[arg-type]
        return next((name for name in OVERLAP_ORDER if name in found), None)


class Qcow2Node(BlockNode):
    format_name = "qcow2"
    overlap_kinds: set[str] = set(_CACHED)
    is_format = True
    supports_backing = True

    header: Header

    # =====================================================================================
    # Opening
    # =====================================================================================
    async def open(self, options: Options) -> None:
        file = self.file
        if file is None:
            raise OpenError('A block device must be specified for "file"')
        self.lock = CoMutex()
        self.signaled_corruption = False
        self.metadata: MetadataMap | None = None
        self.metadata_preallocation: bool | None = None
        self.bitmaps = PersistentBitmaps(self)
        await self._read_header(file)
        h = self.header
        self._apply_runtime_options(options)
        self.cluster_bits = h.cluster_bits
        self.cluster_size = h.cluster_size
        self.compressed = CompressedGeometry.for_cluster_bits(h.cluster_bits)
        self.map = ClusterMap(self)
        self.pwrite_zeroes_alignment = self.map.subcluster_size
        self.pdiscard_alignment = self.cluster_size
        self.refcounts = Refcounts(self)
        self.refcounts.discard_passthrough[DISCARD_REQUEST] = self._pass_discard_request
        l2_tables, refcount_tables = self._cache_capacities(self._cache_options)
        self.l2_cache = TableCache(self, "l2", l2_tables)
        self.refblock_cache = TableCache(self, "refblock", refcount_tables)
        # Tables.
        _validate_table(
            h.refcount_table_offset,
            h.refcount_table_clusters << (h.cluster_bits - 3),
            8,
            MAX_REFTABLE_BYTES,
            self.cluster_size,
            "Reference count table",
        )
        if h.refcount_table_clusters == 0 and not self.flags.check:
            raise OpenError("Image does not contain a reference count table")
        if not self.flags.check:  # qemu-img check reads (and repairs) the table itself
            _validate_table(
                h.snapshots_offset,
                h.nb_snapshots,
                SNAPSHOT_HEADER.size,
                SNAPSHOT_HEADER.size * MAX_SNAPSHOTS,
                self.cluster_size,
                "Snapshot table",
            )
        _validate_table(
            h.l1_table_offset, h.l1_size, 8, MAX_L1_BYTES, self.cluster_size, "Active L1 table"
        )
        per_l1 = h.l2_entries * self.cluster_size
        self.l1_vm_state_index = -(-h.size // per_l1)
        if self.l1_vm_state_index > 0x7FFFFFFF:  # QEMU keeps the index in an int
            raise OpenError("Image is too big", errno.EFBIG)
        if h.l1_size < self.l1_vm_state_index:
            raise OpenError("L1 table is too small")
        try:
            await self.map.load_l1()
        except BlockError as exc:
            raise OpenError(f"Could not read L1 table: {exc.strerror}", exc.errno) from None
        try:
            await self.refcounts.load_table()
        except BlockError as exc:
            raise OpenError(f"Could not read refcount table: {exc.strerror}", exc.errno) from None
        if self.flags.check:
            # Like QEMU, forget the table until the check has read it: a header rewritten
            # meanwhile (unknown autoclear bits cleared) says there are no snapshots.
            h.nb_snapshots, h.snapshots_offset = 0, 0
            self.snapshot_l1s, self.snapshot_table_bytes = [], 0
        else:
            self.snapshot_l1s = await self._read_snapshot_l1s()
        self.backing_file = h.backing_file
        self.backing_format = h.backing_format
        await self._open_data_file(options)
        await self.bitmaps.load()
        if self.flags.read_write:
            if h.autoclear_features & ~AUTOCLEAR_KNOWN:
                # Features we do not know cannot be kept consistent: clear their bits.
                h.autoclear_features &= AUTOCLEAR_KNOWN
                await self.update_header()
            if h.incompatible_features & INCOMPAT_DIRTY and not self.flags.check:
                await self._repair_dirty()
        self.options.update({"file": file.node_name})
        self.open_complete = True

    async def _read_header(self, file: BlockNode) -> None:
        head = bytearray(min(1 << 21, max(4096, file.getlength())))
        try:
            await file.preadv(0, memoryview(head))
        except BlockError as exc:
            raise OpenError(f"Could not read qcow2 header: {exc.strerror}", exc.errno) from None
        try:
            h = parse_header(bytes(head))
        except LayoutError as exc:
            raise OpenError(exc.message, exc.errno) from None
        if h.compression_type not in (COMPRESSION_ZLIB, COMPRESSION_ZSTD):
            raise OpenError(f"qcow2: unknown compression type: {h.compression_type}", errno.ENOTSUP)
        if (
            h.compression_type == COMPRESSION_ZLIB
            and h.incompatible_features & INCOMPAT_COMPRESSION
        ):
            raise OpenError("qcow2: Compression type incompatible feature bit must not be set")
        if (
            h.compression_type != COMPRESSION_ZLIB
            and not h.incompatible_features & INCOMPAT_COMPRESSION
        ):
            raise OpenError("qcow2: Compression type incompatible feature bit must be set")
        unknown = h.incompatible_features & ~INCOMPAT_KNOWN
        if unknown:
            raise OpenError(
                f"Unsupported qcow2 feature(s): {_unsupported_features(h, unknown)}", errno.ENOTSUP
            )
        if (
            h.incompatible_features & INCOMPAT_CORRUPT
            and self.flags.read_write
            and not self.flags.check  # a corrupt image may be opened to be repaired
        ):
            raise OpenError("qcow2: Image is corrupt; cannot be opened read/write", errno.EACCES)
        if h.extended_l2 and h.cluster_bits - 5 < 9:
            raise OpenError(f"Unsupported subcluster size: {1 << (h.cluster_bits - 5)}")
        if h.crypt_method > CRYPT_LUKS:
            raise OpenError(f"Unsupported encryption method {h.crypt_method}")
        if h.crypt_method != CRYPT_NONE:
            raise OpenError("Encrypted qcow2 images are not supported by qio", errno.ENOTSUP)
        self.header = h

    def _apply_runtime_options(self, options: Options) -> None:
        h = self.header
        # Same order of checks as qcow2_update_options_prepare: caches first.
        self._cache_options = self._pop_cache_options(options)
        self._cache_capacities(self._cache_options)
        lazy = options.pop_bool("lazy-refcounts", h.lazy_refcounts)
        if lazy and h.version < 3:
            raise OpenError(
                "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
            )
        self.lazy_refcounts_option = lazy
        self._pass_discard_request = options.pop_bool("pass-discard-request", True)
        options.pop("pass-discard-snapshot")
        options.pop("pass-discard-other")
        options.pop("discard-no-unref")
        self.overlap_kinds = self._overlap_options(options)
        self.overlap_checks = bool(self.overlap_kinds)
        for key in ("encrypt.key-secret", "encrypt.format"):
            options.pop(key)

    @staticmethod
    def _pop_cache_options(options: Options) -> dict[str, int]:
        values: dict[str, int] = {}
        for key in ("cache-size", "l2-cache-size", "refcount-cache-size", "l2-cache-entry-size"):
            if key in options:
                values[key] = options.pop_size(key, 0)
        if "cache-clean-interval" in options:
            values["cache-clean-interval"] = options.pop_int("cache-clean-interval", 0)
        return values

    def _cache_capacities(self, values: dict[str, int]) -> tuple[int, int]:
        """(L2 tables, refcount blocks) the caches hold: QEMU's read_cache_sizes."""
        h = self.header
        cs = h.cluster_size
        entry_size = 16 if h.extended_l2 else 8
        max_l2_cache = -(-(-(-h.size // cs) * entry_size) // cs) * cs
        min_refcount_cache = MIN_REFCOUNT_CACHE_TABLES * cs
        combined = values.get("cache-size")
        l2 = values.get("l2-cache-size")
        refcount = values.get("refcount-cache-size")
        l2_setting = l2
        if l2 is not None:
            l2 = min(max_l2_cache, l2)  # an explicit l2-cache-size never exceeds the need
        if combined is not None:
            if l2 is not None and refcount is not None:
                raise OpenError(
                    "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
                )
            if l2_setting is not None and l2_setting > combined:
                raise OpenError("l2-cache-size may not exceed cache-size")
            if refcount is not None and refcount > combined:
                raise OpenError("refcount-cache-size may not exceed cache-size")
            if l2 is not None:
                refcount = combined - l2
            elif refcount is not None:
                l2 = combined - refcount
            elif combined >= max_l2_cache + min_refcount_cache:
                l2, refcount = max_l2_cache, combined - max_l2_cache
            else:
                refcount = min(combined, min_refcount_cache)
                l2 = combined - refcount
        if l2 is None:
            l2 = min(max_l2_cache, DEFAULT_L2_CACHE_BYTES)
        if refcount is None:
            refcount = min_refcount_cache
        entry = values.get("l2-cache-entry-size", cs)
        if entry < 512 or entry > cs or entry & (entry - 1):
            raise OpenError(
                f"L2 cache entry size must be a power of two between 512 and the cluster size ({cs})"
            )
        l2_tables = max(MIN_L2_CACHE_TABLES, l2 // entry)
        refcount_tables = max(MIN_REFCOUNT_CACHE_TABLES, refcount // cs)
        if l2_tables > INT_MAX:  # QEMU keeps the table counts in ints
            raise OpenError("L2 cache size too big")
        if refcount_tables > INT_MAX:
            raise OpenError("Refcount cache size too big")
        if values.get("cache-clean-interval", 0) & ((1 << 64) - 1) > 0xFFFFFFFF:
            raise OpenError("Cache clean interval too big")
        return l2_tables, refcount_tables

    async def _renew_caches(self, values: dict[str, int]) -> None:
        """Write back and replace both caches (qcow2_update_options on reopen and resize)."""
        l2_tables, refcount_tables = self._cache_capacities(values)
        await self.flush_caches()
        self._cache_options = values
        self.l2_cache = TableCache(self, "l2", l2_tables)
        self.refblock_cache = TableCache(self, "refblock", refcount_tables)

    async def _open_data_file(self, options: Options) -> None:
        h = self.header
        if self.flags.no_io:
            # QEMU does not open the data file for a metadata-only open, so qemu-img info
            # can inspect an untrusted image without touching the files it names.
            options.extract("data-file")
            options.pop("data-file")
            assert self.file is not None
            self.data_file = self.file
            return
        child = await open_child(
            self.context, None, options, "data-file", self.flags, allow_none=True
        )
        if h.has_data_file:
            if child is None and h.data_file:
                child = await open_child(
                    self.context, h.data_file, Options(), "data-file", self.flags, allow_none=False
                )
            if child is None:
                raise OpenError("'data-file' is required for this image")
            self.attach("data-file", child)
            self.data_file = child
        else:
            if child is not None:
                raise OpenError("'data-file' can only be set for images with an external data file")
            if h.data_file_raw:
                raise OpenError("data-file-raw requires a data file")
            assert self.file is not None
            self.data_file = self.file

    async def _read_snapshot_l1s(self) -> list[tuple[int, int]]:
        """(L1 offset, entries) of every internal snapshot, validated as qcow2_read_snapshots
        does (QEMU refuses to open an image whose snapshot table is damaged)."""
        h = self.header
        result: list[tuple[int, int]] = []
        self.snapshot_table_bytes = 0
        if not h.nb_snapshots:
            return result
        offset = h.snapshots_offset
        for index in range(h.nb_snapshots):
            offset = -(-offset // 8) * 8
            raw = bytearray(SNAPSHOT_HEADER.size)
            try:
                await self.image_file.preadv(offset, memoryview(raw))
            except BlockError as exc:
                raise OpenError(
                    f"Failed to read snapshot table: {exc.strerror}", exc.errno
                ) from None
            l1_offset, l1_size, id_len, name_len, _s, _ns, _clock, _vm, extra = (
                SNAPSHOT_HEADER.unpack(raw)
            )
            if extra > MAX_SNAPSHOT_EXTRA_DATA:
                raise OpenError(
                    f"Too much extra metadata in snapshot table entry {index}\n"
                    "You can force-remove this extra metadata with qemu-img check -r all",
                    errno.EFBIG,
                )
            result.append((l1_offset, l1_size))
            offset += SNAPSHOT_HEADER.size + extra + id_len + name_len
            if offset - h.snapshots_offset > MAX_SNAPSHOTS_TABLE_BYTES:
                raise OpenError(
                    "Snapshot table is too big\n"
                    f"You can force-remove all {h.nb_snapshots - index} overhanging snapshots with qemu-img check -r all",
                    errno.EFBIG,
                )
        self.snapshot_table_bytes = offset - h.snapshots_offset
        return result

    async def _repair_dirty(self) -> None:
        from qio.block.qcow2.check import repair_dirty_image

        await repair_dirty_image(self)

    # =====================================================================================
    # Small shared services used by the cache, refcount and cluster modules
    # =====================================================================================
    @property
    def image_file(self) -> BlockNode:
        assert self.file is not None
        return self.file

    @property
    def has_data_file(self) -> bool:
        return self.header.has_data_file

    @property
    def use_lazy_refcounts(self) -> bool:
        return self.lazy_refcounts_option and self.flags.read_write

    @property
    def needs_accurate_refcounts(self) -> bool:
        return not self.header.incompatible_features & INCOMPAT_DIRTY

    @property
    def vm_state_offset(self) -> int:
        return self.l1_vm_state_index * self.header.l2_entries * self.cluster_size

    async def write_sync(self, offset: int, data: bytes) -> None:
        """bdrv_pwrite_sync on the image file: write, then flush."""
        await self.image_file.pwritev(offset, memoryview(data))
        await self.image_file.flush()

    async def update_header(self) -> None:
        """Rewrite the first cluster (header, extensions, backing file name)."""
        h = self.header
        h.l1_size = self.map.l1_size if hasattr(self, "map") else h.l1_size
        try:
            blob = serialize_header(h)
        except LayoutError as exc:
            raise BlockError(exc.errno) from None
        await self.image_file.pwritev(0, memoryview(blob + bytes(self.cluster_size - len(blob))))

    async def mark_dirty(self) -> None:
        h = self.header
        if h.incompatible_features & INCOMPAT_DIRTY:
            return
        await self.write_sync(72, struct.pack(">Q", h.incompatible_features | INCOMPAT_DIRTY))
        h.incompatible_features |= INCOMPAT_DIRTY

    async def mark_clean(self) -> None:
        h = self.header
        if h.incompatible_features & INCOMPAT_DIRTY:
            h.incompatible_features &= ~INCOMPAT_DIRTY
            await self.flush_caches()
            await self.update_header()

    async def flush_caches(self) -> None:
        await self.l2_cache.flush()
        await self.refblock_cache.flush()

    async def signal_corruption(self, fatal: bool, message: str) -> None:
        """qcow2_signal_corruption: report once; a fatal one marks the image corrupt on disk
        and takes it offline for the rest of the session."""
        fatal = fatal and self.flags.read_write
        h = self.header
        if self.signaled_corruption and (not fatal or h.incompatible_features & INCOMPAT_CORRUPT):
            return
        if fatal:
            self.context.err(
                f"qcow2: Marking image as corrupt: {message}; further corruption events will be suppressed\n"
            )
            h.incompatible_features |= INCOMPAT_CORRUPT
            self.context.offline = True
            try:
                if h.version >= 3:
                    await self.write_sync(72, struct.pack(">Q", h.incompatible_features))
                else:
                    # a version 2 header has no feature bits there (its extensions start at
                    # 72): QEMU rewrites the header, which keeps the bit in memory only
                    await self.update_header()
            except BlockError:
                pass
        else:
            self.context.err(
                f"qcow2: Image is corrupt: {message}; further non-fatal corruption events will be suppressed\n"
            )
        self.signaled_corruption = True

    # -- metadata overlap checks (QEMU's overlap-check=cached) ---------------------------------
    def _metadata_map(self) -> MetadataMap:
        if self.metadata is not None:
            return self.metadata
        cs = self.cluster_size
        bits = self.cluster_bits
        meta = MetadataMap(self.overlap_kinds)
        meta.add_cluster(0, "qcow2_header")

        def add_table(offset: int, size: int, name: str) -> None:
            # an empty table overlaps nothing (QEMU skips tables of size 0)
            if size > 0:
                meta.add_range(offset >> bits, (offset + size + cs - 1) >> bits, name)

        add_table(self.map.l1_offset, self.map.l1_size * 8, "active L1 table")
        add_table(self.refcounts.table_offset, self.refcounts.table_clusters * cs, "refcount table")

        def add_cluster_at(offset: int, name: str) -> None:
            # a misaligned table (damaged image) covers parts of two clusters
            for c in range(offset >> bits, ((offset + cs - 1) >> bits) + 1):
                meta.add_cluster(c, name)

        for entry in self.refcounts.table:
            if entry & REFT_OFFSET_MASK:
                add_cluster_at(entry & REFT_OFFSET_MASK, "refcount block")
        for entry in self.map.l1_table:
            if entry & L1E_OFFSET_MASK:
                add_cluster_at(entry & L1E_OFFSET_MASK, "active L2 table")
        if self.header.nb_snapshots:
            add_table(
                self.header.snapshots_offset,
                getattr(self, "snapshot_table_bytes", cs),
                "snapshot table",
            )
            for l1_offset, l1_size in self.snapshot_l1s:
                add_table(l1_offset, l1_size * 8, "inactive L1 table")
        self.metadata = meta
        return meta

    async def _inactive_l2_clusters(self) -> set[int]:
        """overlap-check inactive-l2: the clusters of the L2 tables of the snapshots."""
        clusters: set[int] = set()
        for l1_offset, l1_size in self.snapshot_l1s:
            if l1_size > MAX_L1_BYTES // 8:
                raise BlockError(errno.EFBIG)
            if (1 << 63) - 1 - l1_size * 8 < l1_offset or l1_offset % self.cluster_size:
                raise BlockError(errno.EINVAL)
            raw = bytearray(l1_size * 8)
            await self.image_file.preadv(l1_offset, memoryview(raw))
            for (entry,) in struct.iter_unpack(">Q", raw):
                if entry & L1E_OFFSET_MASK:
                    clusters.add((entry & L1E_OFFSET_MASK) >> self.cluster_bits)
        return clusters

    def metadata_changed(self) -> None:
        self.metadata = None

    def add_metadata_cluster(self, offset: int, name: str) -> None:
        if self.metadata is not None:
            self.metadata.add_cluster(offset >> self.cluster_bits, name)

    def forget_metadata_cluster(self, offset: int) -> None:
        if self.metadata is not None and offset >> self.cluster_bits != 0:
            self.metadata.forget_cluster(offset >> self.cluster_bits)

    async def check_metadata_write(self, offset: int, size: int, writing: str | None) -> None:
        """qcow2_pre_write_overlap_check: refuse a write that would land on metadata."""
        if not self.overlap_checks or self.has_data_file and writing == "data":
            return
        meta = self._metadata_map()
        allowed = {
            "l2": "active L2 table",
            "refblock": "refcount block",
            "l1": "active L1 table",
        }.get(writing or "")
        first = offset >> self.cluster_bits
        last = (offset + max(size, 1) - 1) >> self.cluster_bits
        hit = meta.first_overlap(first, last, allowed)
        if hit is None and "inactive L2 table" in self.overlap_kinds:
            # checked last, and read afresh every time, as QEMU does; a snapshot L1 table
            # that fails validation fails the write with the validation's errno
            inactive = await self._inactive_l2_clusters()
            if any(c in inactive for c in range(first, last + 1)):
                hit = "inactive L2 table"
        if hit is not None:
            await self.signal_corruption(
                True, f"Preventing invalid write on metadata (overlaps with {hit})"
            )
            raise BlockError(errno.EIO)

    # =====================================================================================
    # Reading
    # =====================================================================================
    def drv_getlength(self) -> int:
        return self.header.size

    def note_write(self, offset: int, length: int) -> None:
        self.bitmaps.mark(offset, length)

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        pos = 0
        total = len(buf)
        while pos < total:
            await self.lock.acquire()
            try:
                run = await self.map.get_host_offset(offset + pos, total - pos)
            finally:
                self.lock.release()
            n = run.length
            part = buf[pos : pos + n]
            kind = run.type
            if kind in (SC_ZERO_PLAIN, SC_ZERO_ALLOC) or (
                kind in (SC_UNALLOCATED_PLAIN, SC_UNALLOCATED_ALLOC) and self.backing is None
            ):
                zero_fill(part)
            elif kind in (SC_UNALLOCATED_PLAIN, SC_UNALLOCATED_ALLOC):
                await self.fire("read_backing_aio")
                assert self.backing is not None
                await self.backing.preadv(offset + pos, part)
            elif kind == SC_COMPRESSED:
                await self._read_compressed(run.host_offset, offset + pos, part)
            else:
                await self.fire("read_aio")
                await self.data_file.preadv(run.host_offset, part)
            pos += n

    async def _read_compressed(self, entry: int, offset: int, out: memoryview) -> None:
        coffset, csize = self.compressed.parse(entry)
        raw = bytearray(csize)
        await self.fire("read_compressed")
        await self.image_file.preadv(coffset, memoryview(raw))
        # QEMU decompresses in its worker-thread pool: the request yields meanwhile.
        await scheduler.io(COST_READ)
        try:
            data = codec.decompress(bytes(raw), self.header.compression_type, self.cluster_size)
        except codec.CompressionError:
            raise BlockError(errno.EIO) from None
        start = offset % self.cluster_size
        out[:] = data[start : start + len(out)]

    # =====================================================================================
    # Writing
    # =====================================================================================
    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        if self.context.offline:
            raise BlockError(errno.ENOMEDIUM)
        pos = 0
        total = len(data)
        # A request that needs several allocations runs them as parallel tasks in QEMU (up
        # to QCOW2_MAX_WORKERS): the next chunk is allocated while the previous one's data
        # is still being written, so its L2 entries are linked (and the clusters it replaces
        # freed) only after the later allocations were made.  Deferring the link step to
        # when the pool is full or the request ends reproduces QEMU's cluster placement.
        pending: list[tuple[WriteData, list[L2Meta], L2Meta | None]] = []
        error: BlockError | None = None
        while pos < total:
            await self.lock.acquire()
            try:
                # Overwriting clusters already allocated in place: no allocation machinery.
                host_in_place = self.map.lookup_copied(offset + pos, total - pos)
                if host_in_place is not None:
                    host, n, metas = host_in_place, total - pos, []
                else:
                    host, n, metas = await self.map.alloc_host_offset(offset + pos, total - pos)
                try:
                    await self.check_metadata_write(host, n, "data")
                except BlockError:
                    for meta in metas:
                        await self.map.abort_meta(meta)
                        self.map.finish_meta(meta)
                    raise
            except BlockError as exc:
                self.lock.release()
                error = exc
                break
            self.lock.release()
            chunk = data[pos : pos + n]
            try:
                merged = await self._write_data(host, offset + pos, chunk, metas, flags)
            except BlockError as exc:
                error = exc
                break
            pos += n
            if pos == total and not pending:
                await self._link_task(chunk, metas, merged)  # one chunk: no task pool
                return
            pending.append((chunk, metas, merged))
            if len(pending) == COMPRESS_WORKERS and pos < total:
                error = await self._link_tasks(pending)
                if error is not None:
                    break
        later = await self._link_tasks(pending)
        if error is not None or later is not None:
            raise error or later  # type: ignore[misc]

    async def _link_tasks(
        self, pending: list[tuple[WriteData, list[L2Meta], L2Meta | None]]
    ) -> BlockError | None:
        """Finish the queued tasks as QEMU's completion handler does: newest first."""
        first: BlockError | None = None
        while pending:
            chunk, metas, merged = pending.pop()
            try:
                await self._link_task(chunk, metas, merged)
            except BlockError as exc:
                first = first or exc
        return first

    async def _write_data(
        self, host: int, offset: int, data: WriteData, metas: list[L2Meta], flags: ReqFlags
    ) -> L2Meta | None:
        """The data part of qcow2_co_pwritev_task (unless it goes out with the COW)."""
        try:
            await self._handle_alloc_space(metas)
            merged = self._merge_cow(offset, len(data), metas)
            if merged is None:
                await self.fire("write_aio")
                await self.data_file.pwritev(host, data, flags and flags & ReqFlags.FUA)
        except BlockError:
            await self.lock.acquire()
            for meta in metas:
                await self.map.abort_meta(meta)
                self.map.finish_meta(meta)
            self.lock.release()
            raise
        return merged

    async def _link_task(self, data: WriteData, metas: list[L2Meta], merged: L2Meta | None) -> None:
        """The rest of the task: copy-on-write, then point the L2 entries at the data."""
        await self.lock.acquire()
        try:
            for index, meta in enumerate(metas):
                try:
                    await self._perform_cow(meta, data if meta is merged else None)
                    await self.map.link_l2(meta)
                except BlockError:
                    # This allocation and the ones after it are given up (and waiters woken).
                    for rest in metas[index:]:
                        await self.map.abort_meta(rest)
                        self.map.finish_meta(rest)
                    raise
                self.map.finish_meta(meta)
        finally:
            self.lock.release()

    async def _handle_alloc_space(self, metas: list[L2Meta]) -> None:
        """handle_alloc_space: when what copy-on-write would copy is unallocated all the way
        down, zero the new clusters in the data file efficiently (leaving the file sparse)
        and skip the copy."""
        target: BlockNode | None = self.data_file
        while target is not None and target.format_name == "raw":
            target = target.file  # raw passes its file's zero-write abilities through
        if target is None or target.protocol_name != "file":
            return  # only host files do zero writes without a fallback
        for meta in metas:
            start, end = meta.cow_start, meta.cow_end
            if not start.nb_bytes and not end.nb_bytes:
                continue
            if not (
                await self._is_unallocated(meta.guest_offset + start.offset, start.nb_bytes)
                and await self._is_unallocated(meta.guest_offset + end.offset, end.nb_bytes)
            ):
                continue
            host = meta.alloc_offset + start.offset
            nbytes = end.offset + end.nb_bytes - start.offset
            await self.check_metadata_write(host, nbytes, "data")
            await self.fire("cluster_alloc_space")
            try:
                await self.data_file.pwrite_zeroes(host, nbytes, ReqFlags.NO_FALLBACK)
            except BlockError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EAGAIN):
                    raise
                continue
            meta.skip_cow = True

    async def _is_unallocated(self, offset: int, nbytes: int) -> bool:
        """Is [offset, offset+nbytes) allocated in no layer of the chain
        (bdrv_is_allocated_above down to the bottom)?"""
        if nbytes == 0:
            return True
        run = nbytes
        node: BlockNode | None = self
        while node is not None:
            status = await node.block_status(offset, nbytes, want_zero=False)
            if status.allocated:
                return False
            # A run cut short only by the end of a lower layer does not limit the answer.
            if run > status.length and (node is self or offset + status.length < node.getlength()):
                run = status.length
            node = node.backing if node.supports_backing else node.filtered_child()
        return run == nbytes

    @staticmethod
    def _merge_cow(offset: int, nbytes: int, metas: list[L2Meta]) -> L2Meta | None:
        for meta in metas:
            if meta.skip_cow or not meta.cow_start.nb_bytes and not meta.cow_end.nb_bytes:
                continue
            if meta.cow_start_abs + meta.cow_start.nb_bytes != offset:
                continue
            if meta.guest_offset + meta.cow_end.offset != offset + nbytes:
                continue
            return meta
        return None

    async def _perform_cow(self, meta: L2Meta, data: WriteData | None) -> None:
        """Copy the untouched parts of newly allocated (sub)clusters; write them (with the
        guest data when it could be merged into one write)."""
        start, end = meta.cow_start, meta.cow_end
        if meta.skip_cow or not start.nb_bytes and not end.nb_bytes:
            return
        self.lock.release()
        try:
            head = bytearray(start.nb_bytes)
            tail = bytearray(end.nb_bytes)
            if head:
                await self.fire("cow_read")
                await self.drv_preadv(
                    meta.guest_offset + start.offset, memoryview(head), ReqFlags.NONE
                )
            if tail:
                await self.fire("cow_read")
                await self.drv_preadv(
                    meta.guest_offset + end.offset, memoryview(tail), ReqFlags.NONE
                )
            if data is not None:
                await self.fire("write_aio")
                blob = memoryview(bytes(head) + bytes(data) + bytes(tail))
                await self._cow_write(meta.alloc_offset + start.offset, blob)
            else:
                if head:
                    await self._cow_write(meta.alloc_offset + start.offset, memoryview(head))
                if tail:
                    await self._cow_write(meta.alloc_offset + end.offset, memoryview(tail))
        finally:
            await self.lock.acquire()

    async def _cow_write(self, host: int, blob: memoryview) -> None:
        await self.check_metadata_write(host, len(blob), "data")
        await self.fire("cow_write")
        await self.data_file.pwritev(host, blob)

    async def drv_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        if self.context.offline:
            raise BlockError(errno.ENOMEDIUM)
        if flags & ReqFlags.NO_FALLBACK and self.header.version < 3:
            # Only v3 images declare NO_FALLBACK among their supported zero-write flags.
            raise BlockError(errno.ENOTSUP)
        sc = self.map.subcluster_size
        head = offset % sc
        tail = -(offset + length) % sc
        if offset + length == self.getlength():
            tail = 0
        if head or tail:
            # A piece of one subcluster: fine only when the rest already reads as zeros.
            if not (
                await self._is_zero(offset - head, head)
                and await self._is_zero(offset + length, tail)
            ):
                raise BlockError(errno.ENOTSUP)
            await self.lock.acquire()
            try:
                offset -= head
                run = await self.map.get_host_offset(offset, sc)
                if run.type not in (
                    SC_UNALLOCATED_PLAIN,
                    SC_UNALLOCATED_ALLOC,
                    SC_ZERO_PLAIN,
                    SC_ZERO_ALLOC,
                ):
                    raise BlockError(errno.ENOTSUP)
                await self.map.zeroize(offset, sc, bool(flags & ReqFlags.MAY_UNMAP))
            finally:
                self.lock.release()
            return
        await self.lock.acquire()
        try:
            await self.map.zeroize(offset, length, bool(flags & ReqFlags.MAY_UNMAP))
        finally:
            self.lock.release()

    async def _is_zero(self, offset: int, length: int) -> bool:
        """Does [offset, offset+length) read as zeros (by metadata, not by reading data)?"""
        if length == 0:
            return True
        end = min(offset + length, self.getlength())
        while offset < end:
            status = await self.block_status_above(offset, end - offset)
            if not status.zero or status.length == 0:
                return False
            offset += status.length
        return True

    async def block_status_above(self, offset: int, length: int) -> BlockStatus:
        """Status through the backing chain (bdrv_block_status_above with want_zero)."""
        node: BlockNode | None = self
        while node is not None:
            status = await node.block_status(offset, length, want_zero=True)
            if status.length == 0 and node is not self:
                # Past the end of a shorter backing file: zeros, as if allocated there.
                return BlockStatus(length, zero=True, allocated=True)
            if (
                status.allocated
                or status.length == 0
                or not node.supports_backing
                or node.backing is None
            ):
                return status
            length = status.length
            node = node.backing
        return BlockStatus(length, zero=True)

    async def drv_pdiscard(self, offset: int, length: int) -> None:
        if self.header.version < 3 and self.backing is not None:
            raise BlockError(errno.ENOTSUP)
        cs = self.cluster_size
        if (offset | length) % cs:
            if offset % cs or offset + length != self.getlength():
                raise BlockError(errno.ENOTSUP)
        await self.lock.acquire()
        try:
            await self.map.discard(offset, length, DISCARD_REQUEST, False)
        finally:
            self.lock.release()

    async def drv_pwrite_compressed(self, offset: int, data: memoryview) -> None:
        if self.has_data_file:
            raise BlockError(errno.ENOTSUP)
        cs = self.cluster_size
        length = len(data)
        if length == 0:
            return
        if offset % cs:
            raise BlockError(errno.EINVAL)
        if length % cs and offset + length != self.getlength():
            raise BlockError(errno.EINVAL)
        # QEMU compresses clusters in parallel tasks (up to 8 in flight): a cluster that fails
        # does not stop the ones already submitted, only those that would start later.
        first_error: BlockError | None = None
        failed_at = -1
        for index, pos in enumerate(range(0, length, cs)):
            if first_error is not None and index >= failed_at + COMPRESS_WORKERS:
                break
            try:
                await self._write_compressed_cluster(offset + pos, bytes(data[pos : pos + cs]))
            except BlockError as exc:
                if first_error is None:
                    first_error, failed_at = exc, index
        if first_error is not None:
            raise first_error

    async def _write_compressed_cluster(self, offset: int, chunk: bytes) -> None:
        cs = self.cluster_size
        padded = chunk + bytes(cs - len(chunk))
        # Compression runs in QEMU's worker-thread pool: the request yields meanwhile, so
        # earlier asynchronous completions are reported before this write goes on.
        await scheduler.io(COST_WRITE)
        out = codec.compress(padded, self.header.compression_type, cs - 1)
        if out is None:
            await self.drv_pwritev(offset, memoryview(chunk), ReqFlags.NONE)
            return
        await self.lock.acquire()
        try:
            host = await self.map.alloc_compressed(offset, len(out))
            await self.check_metadata_write(host, len(out), "data")
        finally:
            self.lock.release()
        await self.fire("write_compressed")
        await self.data_file.pwritev(host, memoryview(out))

    async def drv_load_vmstate(self, offset: int, buf: memoryview) -> None:
        await self.drv_preadv(self.vm_state_offset + offset, buf, ReqFlags.NONE)

    async def drv_save_vmstate(self, offset: int, data: memoryview) -> None:
        await self.drv_pwritev(self.vm_state_offset + offset, data, ReqFlags.NONE)

    # =====================================================================================
    # Flush, truncate, close
    # =====================================================================================
    async def drv_flush_to_os(self) -> None:
        await self.lock.acquire()
        try:
            await self.l2_cache.write()
            if self.needs_accurate_refcounts:
                await self.refblock_cache.write()
        finally:
            self.lock.release()

    async def drv_truncate(
        self, length: int, exact: bool, prealloc: str, zero_write: bool = False
    ) -> None:
        """qcow2_co_truncate.  ``zero_write``: the new area must read as zeros (the backing
        file is longer than the old size and would show through otherwise)."""
        if prealloc not in PREALLOC_MODES:
            raise OpenError(f"Unsupported preallocation mode '{prealloc}'", errno.ENOTSUP)
        if length % 512:
            raise OpenError("The new size must be a multiple of 512")
        h = self.header
        await self.lock.acquire()
        try:
            if h.nb_snapshots and h.version < 3:
                raise OpenError("Can't resize a v2 image which has snapshots", errno.ENOTSUP)
            old_length = self.getlength()
            per_l1 = h.l2_entries * self.cluster_size
            new_l1 = -(-length // per_l1)
            if length < old_length:
                await self._shrink(length, old_length, prealloc, new_l1)
            else:
                try:
                    await self.map.grow_l1_table(new_l1, True)
                except BlockError as exc:
                    raise OpenError(
                        f"Failed to grow the L1 table: {exc.strerror}", exc.errno
                    ) from None
                if h.data_file_raw and prealloc == "off":
                    # The L2 tables of a raw data file's image always map everything.
                    prealloc = "metadata"
            if prealloc == "off":
                if self.has_data_file:
                    await self.data_file.truncate(length, exact, "off")
            elif prealloc == "metadata" or self.has_data_file:
                await self._preallocate(old_length, length, prealloc)
            else:
                zero_write = await self._preallocate_host(old_length, length, prealloc, zero_write)
            if zero_write and length > old_length:
                await self._zero_new_area(old_length, length)
            if prealloc != "off":
                try:
                    await self.l2_cache.write()
                    if self.needs_accurate_refcounts:
                        await self.refblock_cache.write()
                except BlockError as exc:
                    raise OpenError(
                        f"Failed to flush the preallocated area to disk: {exc.strerror}",
                        exc.errno,
                    ) from None
            try:
                await self.write_sync(24, struct.pack(">Q", length))
            except BlockError as exc:
                raise OpenError(
                    f"Failed to update the image size: {exc.strerror}", exc.errno
                ) from None
            h.size = length
            self.l1_vm_state_index = new_l1
            await self._renew_caches(self._cache_options)  # sized for the new length
        finally:
            self.lock.release()

    async def _shrink(self, length: int, old_length: int, prealloc: str, new_l1: int) -> None:
        if prealloc != "off":
            raise OpenError("Preallocation can't be used for shrinking an image")
        start = -(-length // self.cluster_size) * self.cluster_size
        try:
            if old_length > start:
                await self.map.discard(start, old_length - start, DISCARD_ALWAYS, True)
        except BlockError as exc:
            raise OpenError(
                f"Failed to discard cropped clusters: {exc.strerror}", exc.errno
            ) from None
        try:
            await self.map.shrink_l1_table(new_l1)
        except BlockError as exc:
            raise OpenError(
                f"Failed to reduce the number of L2 tables: {exc.strerror}", exc.errno
            ) from None
        try:
            await self.refcounts.shrink_table()
        except BlockError as exc:
            raise OpenError(
                f"Failed to discard unused refblocks: {exc.strerror}", exc.errno
            ) from None
        await self._truncate_file_tail()

    async def _zero_new_area(self, old_length: int, length: int) -> None:
        """Zero clusters for the grown area, explicit zeros for its unaligned head."""
        sc = self.map.subcluster_size
        zero_start = -(-old_length // sc) * sc
        if length > zero_start:
            try:
                await self.map.zeroize(zero_start, length - zero_start, False)
            except BlockError as exc:
                raise OpenError(
                    f"Failed to zero out new clusters: {exc.strerror}", exc.errno
                ) from None
        if zero_start > old_length:
            n = min(zero_start, length) - old_length
            self.lock.release()
            try:
                await self.drv_pwritev(old_length, memoryview(bytes(n)), ReqFlags.NONE)
            except BlockError as exc:
                raise OpenError(
                    f"Failed to zero out the new area: {exc.strerror}", exc.errno
                ) from None
            finally:
                await self.lock.acquire()

    async def _truncate_file_tail(self) -> None:
        """After shrinking, cut the image file after the last cluster still in use."""
        file_size = self.image_file.getlength()
        try:
            last = await self.refcounts.last_cluster(file_size)
        except BlockError as exc:
            raise OpenError(f"Failed to find the last cluster: {exc.strerror}", exc.errno) from None
        end = (last + 1) * self.cluster_size
        if end < file_size:
            try:
                await self.image_file.truncate(end, False, "off")
            except (BlockError, OpenError) as exc:
                reason = exc.message if isinstance(exc, OpenError) else exc.strerror
                self.context.warn(f"Failed to truncate the tail of the image: {reason}")

    async def _preallocate(self, start: int, end: int, mode: str) -> None:
        """preallocate_co: map guest [start, end) to new clusters (lock held)."""
        pos = start
        host_end = 0
        while pos < end:
            try:
                host, n, metas = await self.map.alloc_host_offset(
                    pos, min(end - pos, (1 << 31) - self.cluster_size)
                )
            except BlockError as exc:
                raise OpenError(f"Allocating clusters failed: {exc.strerror}", exc.errno) from None
            for meta in metas:
                meta.prealloc = True  # no data written: subclusters stay unallocated
            self.lock.release()
            try:
                await self._link_task(memoryview(b""), metas, None)
            except BlockError as exc:
                raise OpenError(f"Mapping clusters failed: {exc.strerror}", exc.errno) from None
            finally:
                await self.lock.acquire()
            host_end = host + n
            pos += n
        # The file must reach the last allocated cluster, or reads there would fail.
        if host_end > self.data_file.getlength():
            await self.data_file.truncate(host_end, False, "off" if mode == "metadata" else mode)

    async def _preallocate_host(self, old_length: int, length: int, mode: str, zero: bool) -> bool:
        """falloc/full without a data file: new data clusters in one area at the end of the
        file, refcount structures sized to cover them first.  Returns whether the new area
        still needs zeroing."""
        cs = self.cluster_size
        file_size = self.image_file.getlength()
        last = await self.refcounts.last_cluster(file_size)
        old_file_size = (last + 1) * cs
        nb_data = (-(-length // cs) * cs - old_length // cs * cs) // cs
        nb_l2 = -(-nb_data // (cs // (16 if self.header.extended_l2 else 8))) + 1
        try:
            start = await self.refcounts.refcount_area(old_file_size, nb_data + nb_l2, True, 0, 0)
        except BlockError as exc:
            raise OpenError(
                f"Failed to resize refcount structures: {exc.strerror}", exc.errno
            ) from None
        try:
            allocated = await self.refcounts.alloc_clusters_at(start, nb_data)
        except BlockError as exc:
            raise OpenError(
                f"Failed to allocate data clusters: {exc.strerror}", exc.errno
            ) from None
        assert allocated == nb_data
        new_file_size = start + nb_data * cs
        needs_allocation = False
        if zero and self.image_file.protocol_name == "file":
            # A file grows with zeros: the clusters can be marked as written.
            zero = False
            needs_allocation = True
        try:
            await self.image_file.truncate(new_file_size, False, mode)
        except OpenError as exc:
            await self.refcounts.free_clusters(start, nb_data * cs, DISCARD_OTHER)
            raise OpenError(f"Failed to resize underlying file: {exc.message}", exc.errno) from None
        host = start
        guest = old_length
        remaining = nb_data
        while remaining:
            l2_index = self.map.l2_index(guest)
            n = min(remaining, self.header.l2_entries - l2_index)
            head = guest % cs
            guest -= head
            meta = L2Meta(
                guest_offset=guest,
                alloc_offset=host,
                nb_clusters=n,
                keep_old=False,
                cow_start=CowRegion(0, head),
                cow_end=CowRegion(n * cs, 0),
                prealloc=not needs_allocation,
            )
            try:
                await self._perform_cow(meta, None)
                await self.map.link_l2(meta)
            except BlockError as exc:
                await self.refcounts.free_clusters(host, remaining * cs, DISCARD_OTHER)
                raise OpenError(f"Failed to update L2 tables: {exc.strerror}", exc.errno) from None
            guest += n * cs
            host += n * cs
            remaining -= n
        return zero

    async def drv_close(self) -> None:
        if (
            not self.flags.read_write
            or self.context.offline
            or not getattr(self, "open_complete", False)
        ):
            return  # read-only, taken offline, or the open failed: nothing is written back
        errors: list[str] = []
        try:
            await self.bitmaps.store()
        except BlockError as exc:
            errors.append(
                f"{self.context.program}: Lost persistent bitmaps during inactivation of node "
                f"'{self.node_name}': {exc.strerror}\n",
            )
        for cache, label in (
            (self.l2_cache, "L2 table cache"),
            (self.refblock_cache, "refcount block cache"),
        ):
            try:
                await cache.flush()
            except BlockError as exc:
                errors.append(
                    f"{self.context.program}: Failed to flush the {label}: {exc.strerror}\n"
                )
        for text in errors:
            self.context.err(text)
        if not errors:
            try:
                await self.mark_clean()
            except BlockError:
                pass

    def _overlap_options(self, options: Options) -> set[str]:
        """overlap-check and overlap-check.*: which metadata kinds writes are checked against
        (qcow2_update_options, at open and at reopen)."""
        overlap = options.pop_str("overlap-check")
        template = options.pop_str("overlap-check.template")
        if overlap is not None and template is not None and overlap != template:
            raise OpenError(
                f"Conflicting values for qcow2 options 'overlap-check' ('{overlap}') and 'overlap-check.template' ('{template}')"
            )
        mode = overlap or template or "cached"
        if mode not in OVERLAP_TEMPLATES:
            raise OpenError(
                f"Unsupported value '{mode}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all"
            )
        checks = set(OVERLAP_TEMPLATES[mode])
        for key, name in OVERLAP_NAMES.items():
            if options.pop_bool(f"overlap-check.{key}", name in checks):
                checks.add(name)
            else:
                checks.discard(name)
        return checks

    async def drv_reopen(self, options: Options, read_write: bool) -> None:
        # qcow2_update_options: every option is checked before any takes effect (prepare,
        # then commit), so a bad value later in the list leaves the old settings in place.
        # The caches are always written back and replaced, sized from this reopen's options
        # only (qemu-io does not keep the cache sizes given at open).
        values = self._pop_cache_options(options)
        l2_tables, refcount_tables = self._cache_capacities(values)
        await self.flush_caches()
        lazy = self.lazy_refcounts_option
        if "lazy-refcounts" in options:
            lazy = options.pop_bool("lazy-refcounts", self.lazy_refcounts_option)
            if lazy and self.header.version < 3:
                raise OpenError(
                    "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
                )
            if (
                not lazy
                and self.lazy_refcounts_option
                and self.header.incompatible_features & INCOMPAT_DIRTY
            ):
                await self.flush_caches()
                await self.mark_clean()
        overlap = None
        if any(key.startswith("overlap-check") for key in options):
            overlap = self._overlap_options(options)
        discard_request = None
        for key in (
            "pass-discard-request",
            "pass-discard-snapshot",
            "pass-discard-other",
        ):
            if key in options:
                value = options.pop(key)
                if key == "pass-discard-request":
                    discard_request = str(value) in ("on", "true", "True")
        # commit
        self._cache_options = values
        self.l2_cache = TableCache(self, "l2", l2_tables)
        self.refblock_cache = TableCache(self, "refblock", refcount_tables)
        self.lazy_refcounts_option = lazy
        if overlap is not None:
            self.overlap_kinds = overlap
            self.overlap_checks = bool(overlap)
        if discard_request is not None:
            self.refcounts.discard_passthrough[DISCARD_REQUEST] = discard_request
        if self.header.incompatible_features & INCOMPAT_CORRUPT and read_write:
            raise OpenError("qcow2: Image is corrupt; cannot be opened read/write", errno.EACCES)
        if not read_write and self.flags.read_write:
            await self.flush_caches()
            await self.mark_clean()

    # =====================================================================================
    # Status and information
    # =====================================================================================
    async def drv_block_status(
        self, offset: int, length: int, want_zero: bool
    ) -> BlockStatus | None:
        await self.lock.acquire()
        try:
            if self.metadata_preallocation is None:
                self.metadata_preallocation = await self._detect_metadata_preallocation()
            run = await self.map.get_host_offset(offset, min(length, (1 << 31) - 1))
        finally:
            self.lock.release()
        status = BlockStatus(run.length)
        if run.type in (SC_NORMAL, SC_ZERO_ALLOC, SC_UNALLOCATED_ALLOC):
            status.offset = run.host_offset
            status.node = self.data_file
        if run.type in (SC_ZERO_PLAIN, SC_ZERO_ALLOC):
            status.zero = True
        elif run.type not in (SC_UNALLOCATED_PLAIN, SC_UNALLOCATED_ALLOC):
            status.data = True
        status.compressed = run.type == SC_COMPRESSED
        if self.metadata_preallocation and status.data and status.node is not None:
            status.recurse = True
        return status

    async def _detect_metadata_preallocation(self) -> bool:
        """Are more clusters refcounted than the file really has allocated (preallocation=
        metadata)?  Then data clusters may be holes that read as zeros."""
        allocated = self.image_file.allocated_file_size()
        if allocated is None:
            return False
        real_clusters = allocated // self.cluster_size
        threshold = max(real_clusters * 10 // 9, real_clusters + 2)
        end_cluster = -(-self.image_file.getlength() // self.cluster_size)
        count = 0
        for index in range(end_cluster):
            if count >= threshold:
                break
            try:
                count += 1 if await self.refcounts.get(index) else 0
            except BlockError:
                return False
        return count >= threshold

    def drv_get_info(self) -> DriverInfo | None:
        return DriverInfo(
            self.cluster_size,
            vm_state_offset(self.header),
            bool(self.header.incompatible_features & INCOMPAT_DIRTY),
        )

    def specific_info(self) -> SpecificInfo | None:
        h = self.header
        fields: list[tuple[str, Any]] = []
        if h.version == 2:
            fields = [
                ("compat", "0.10"),
                ("compression-type", "zlib"),
                ("refcount-bits", h.refcount_bits),
            ]
            return SpecificInfo("qcow2", fields)
        fields.append(("compat", "1.1"))
        fields.append(
            ("compression-type", COMPRESSION_NAMES.get(h.compression_type, str(h.compression_type)))
        )
        fields.append(("lazy-refcounts", h.lazy_refcounts))
        bitmaps = self.bitmaps.info()
        if bitmaps:
            fields.append(("bitmaps", bitmaps))
        fields.append(("refcount-bits", h.refcount_bits))
        if h.has_data_file:
            if h.data_file:  # QEMU names it only when the image records a name
                fields.append(("data-file", h.data_file))
            fields.append(("data-file-raw", h.data_file_raw))
        fields.append(("corrupt", bool(h.incompatible_features & INCOMPAT_CORRUPT)))
        fields.append(("extended-l2", h.extended_l2))
        return SpecificInfo("qcow2", fields)


__all__ = ["Qcow2Node", "QEMU_FEATURE_TABLE"]
