"""The qcow2 on-disk format: header, header extensions, table entries.

Everything here is pure data handling (bytes in, dataclasses out and back), shared by the
driver, image creation and the checker.  Field names follow QEMU's docs/interop/qcow2.txt.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = b"QFI\xfb"
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104
QEMU_HEADER_LENGTH = 112  # what QEMU 7.2 writes (104 + compression_type byte, padded to 8)
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_BACKING_NAME = 1023
MAX_L1_BYTES = 32 << 20  # QEMU's implementation limit on the L1 table size
MAX_REFTABLE_BYTES = 8 << 20
COMPRESSED_SECTOR = 512

# Table entry bits.
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
SUBCLUSTERS_PER_CLUSTER = 32
L2_BITMAP_ALL_ALLOC = 0xFFFFFFFF
L2_BITMAP_ALL_ZEROES = 0xFFFFFFFF << 32

# Feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
)
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
AUTOCLEAR_KNOWN = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2

# Header extension types.
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

FEATURE_INCOMPATIBLE, FEATURE_COMPATIBLE, FEATURE_AUTOCLEAR = 0, 1, 2

# The feature name table QEMU writes into every version 3 image.
QEMU_FEATURE_TABLE: tuple[tuple[int, int, str], ...] = (
    (FEATURE_INCOMPATIBLE, 0, "dirty bit"),
    (FEATURE_INCOMPATIBLE, 1, "corrupt bit"),
    (FEATURE_INCOMPATIBLE, 2, "external data file"),
    (FEATURE_INCOMPATIBLE, 3, "compression type"),
    (FEATURE_INCOMPATIBLE, 4, "extended L2 entries"),
    (FEATURE_COMPATIBLE, 0, "lazy refcounts"),
    (FEATURE_AUTOCLEAR, 0, "bitmaps"),
    (FEATURE_AUTOCLEAR, 1, "raw external data"),
)

_HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # through snapshots_offset (72 bytes)
_HEADER_V3_TAIL = struct.Struct(">QQQII")  # features, refcount_order, header_length


class LayoutError(ValueError):
    """The bytes are not a usable qcow2 header; the message is QEMU's wording."""

    def __init__(self, message: str, errno_value: int = 22) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno_value


@dataclass
class Extension:
    kind: int
    data: bytes


@dataclass
class Header:
    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = QEMU_HEADER_LENGTH
    compression_type: int = 0
    extra_header_bytes: bytes = b""  # fields past 104 we do not know, kept on rewrite
    # From the extension area:
    backing_file: str = ""
    backing_format: str = ""
    data_file: str = ""
    feature_names: list[tuple[int, int, str]] = field(default_factory=list)
    bitmaps_ext: bytes | None = None
    crypto_ext: bytes | None = None
    unknown_extensions: list[Extension] = field(default_factory=list)

    # -- derived ---------------------------------------------------------------------------
    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def l2_entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.l2_entry_size

    @property
    def has_data_file(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DATA_FILE)

    @property
    def data_file_raw(self) -> bool:
        return bool(self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW)

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.compatible_features & COMPAT_LAZY_REFCOUNTS)

    def feature_name(self, kind: int, bit: int) -> str | None:
        for k, b, name in self.feature_names:
            if k == kind and b == bit:
                return name
        return None


def parse_header(buf: bytes) -> Header:
    """Parse the header and its extensions from the start of the image (first cluster).

    Only the checks that need nothing but these bytes are made here; the driver validates
    offsets against the file.
    """
    if len(buf) < V2_HEADER_LENGTH or buf[:4] != MAGIC:
        raise LayoutError("Image is not in qcow2 format")
    (
        _magic,
        version,
        backing_file_offset,
        backing_file_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = _HEADER_V2.unpack_from(buf, 0)
    if version < 2 or version > 3:
        raise LayoutError(f"Unsupported qcow2 version {version}", 95)
    h = Header(
        version=version,
        backing_file_offset=backing_file_offset,
        backing_file_size=backing_file_size,
        cluster_bits=cluster_bits,
        size=size,
        crypt_method=crypt_method,
        l1_size=l1_size,
        l1_table_offset=l1_table_offset,
        refcount_table_offset=refcount_table_offset,
        refcount_table_clusters=refcount_table_clusters,
        nb_snapshots=nb_snapshots,
        snapshots_offset=snapshots_offset,
    )
    if cluster_bits < MIN_CLUSTER_BITS or cluster_bits > MAX_CLUSTER_BITS:
        raise LayoutError(f"Unsupported cluster size: 2^{cluster_bits}")
    if version == 2:
        h.header_length = V2_HEADER_LENGTH
        h.refcount_order = 4
    else:
        if len(buf) < V3_HEADER_LENGTH:
            raise LayoutError("qcow2 header too short")
        (
            h.incompatible_features,
            h.compatible_features,
            h.autoclear_features,
            h.refcount_order,
            h.header_length,
        ) = _HEADER_V3_TAIL.unpack_from(buf, V2_HEADER_LENGTH)
        if h.header_length < V3_HEADER_LENGTH:
            raise LayoutError("qcow2 header too short")
        if h.header_length > h.cluster_size:
            raise LayoutError("qcow2 header exceeds cluster size")
        if h.header_length > len(buf):
            raise LayoutError("qcow2 header too short")
        if h.header_length > V3_HEADER_LENGTH:
            h.compression_type = buf[V3_HEADER_LENGTH]
            h.extra_header_bytes = bytes(buf[V3_HEADER_LENGTH + 1 : h.header_length])
    if h.backing_file_offset > h.cluster_size:
        raise LayoutError("Invalid backing file offset")
    if h.refcount_order > 6:
        raise LayoutError("Reference count entry width too large; may not exceed 64 bits")
    _parse_extensions(h, buf)
    if h.backing_file_offset:
        if (
            h.backing_file_size > MAX_BACKING_NAME
            or h.backing_file_size >= h.cluster_size - h.backing_file_offset
        ):
            raise LayoutError("Backing file name too long")
        start = h.backing_file_offset
        h.backing_file = bytes(buf[start : start + h.backing_file_size]).decode(
            "utf-8", "surrogateescape"
        )
    return h


def _parse_extensions(h: Header, buf: bytes) -> None:
    offset = h.header_length
    end = h.backing_file_offset if h.backing_file_offset else h.cluster_size
    end = min(end, len(buf))
    while offset < end:
        if offset + 8 > end:
            raise LayoutError("Invalid extension header", 22)
        kind, length = struct.unpack_from(">II", buf, offset)
        offset += 8
        if length > end - offset:  # checked before the type: even for the end marker
            raise LayoutError("Header extension too large", 22)
        if kind == EXT_END:
            return
        data = bytes(buf[offset : offset + length])
        if kind == EXT_BACKING_FORMAT:
            h.backing_format = data.decode("utf-8", "surrogateescape")
        elif kind == EXT_DATA_FILE:
            h.data_file = data.decode("utf-8", "surrogateescape")
        elif kind == EXT_FEATURE_TABLE:
            for pos in range(0, len(data) - 47, 48):
                name = data[pos + 2 : pos + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
                h.feature_names.append((data[pos], data[pos + 1], name))
        elif kind == EXT_BITMAPS:
            h.bitmaps_ext = data
        elif kind == EXT_CRYPTO:
            h.crypto_ext = data
        else:
            h.unknown_extensions.append(Extension(kind, data))
        offset += (length + 7) & ~7


def _ext(kind: int, data: bytes) -> bytes:
    pad = (-len(data)) % 8
    return struct.pack(">II", kind, len(data)) + data + bytes(pad)


def serialize_header(h: Header) -> bytes:
    """Header + extensions + backing file name, as QEMU's qcow2_update_header lays them out.

    ``backing_file_offset``/``backing_file_size`` are recomputed.  The result must fit in the
    first cluster; a LayoutError says otherwise.
    """
    if h.version == 2:
        head = bytearray(V2_HEADER_LENGTH)
        header_length = V2_HEADER_LENGTH
    else:
        header_length = max(h.header_length, QEMU_HEADER_LENGTH)
        head = bytearray(header_length)
    exts = bytearray()
    if h.backing_format:
        exts += _ext(EXT_BACKING_FORMAT, h.backing_format.encode("utf-8", "surrogateescape"))
    if h.data_file:
        exts += _ext(EXT_DATA_FILE, h.data_file.encode("utf-8", "surrogateescape"))
    if h.crypto_ext is not None:
        exts += _ext(EXT_CRYPTO, h.crypto_ext)
    if h.version >= 3 and h.cluster_size > 4096:  # QEMU leaves the names out of small clusters
        table = bytearray()
        for kind, bit, name in QEMU_FEATURE_TABLE:
            table += bytes([kind, bit]) + name.encode().ljust(46, b"\0")
        exts += _ext(EXT_FEATURE_TABLE, bytes(table))
    if h.bitmaps_ext is not None:
        exts += _ext(EXT_BITMAPS, h.bitmaps_ext)
    for e in h.unknown_extensions:
        exts += _ext(e.kind, e.data)
    exts += struct.pack(">II", EXT_END, 0)
    backing = h.backing_file.encode("utf-8", "surrogateescape")
    backing_offset = header_length + len(exts) if backing else 0
    _HEADER_V2.pack_into(
        head,
        0,
        MAGIC,
        h.version,
        backing_offset,
        len(backing),
        h.cluster_bits,
        h.size,
        h.crypt_method,
        h.l1_size,
        h.l1_table_offset,
        h.refcount_table_offset,
        h.refcount_table_clusters,
        h.nb_snapshots,
        h.snapshots_offset,
    )
    if h.version >= 3:
        _HEADER_V3_TAIL.pack_into(
            head,
            V2_HEADER_LENGTH,
            h.incompatible_features,
            h.compatible_features,
            h.autoclear_features,
            h.refcount_order,
            header_length,
        )
        head[V3_HEADER_LENGTH] = h.compression_type
        extra = h.extra_header_bytes[: header_length - V3_HEADER_LENGTH - 1]
        head[V3_HEADER_LENGTH + 1 : V3_HEADER_LENGTH + 1 + len(extra)] = extra
    blob = bytes(head) + bytes(exts) + backing
    if len(blob) > h.cluster_size:
        raise LayoutError(
            "Cannot update the image header: it does not fit in the first cluster", 28
        )
    h.header_length = header_length
    h.backing_file_offset = backing_offset
    h.backing_file_size = len(backing)
    return blob


# -- entries ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompressedGeometry:
    """Bit layout of compressed-cluster descriptors for one cluster size."""

    csize_shift: int
    csize_mask: int
    offset_mask: int

    @classmethod
    def for_cluster_bits(cls, cluster_bits: int) -> CompressedGeometry:
        shift = 62 - (cluster_bits - 8)
        return cls(shift, (1 << (cluster_bits - 8)) - 1, (1 << shift) - 1)

    def parse(self, entry: int) -> tuple[int, int]:
        """(host byte offset, bytes occupied) of a compressed cluster's data."""
        coffset = entry & self.offset_mask
        sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        return coffset, sectors * COMPRESSED_SECTOR - (coffset & (COMPRESSED_SECTOR - 1))

    def make(self, coffset: int, nbytes: int) -> int:
        sectors = (coffset + nbytes - 1) // COMPRESSED_SECTOR - coffset // COMPRESSED_SECTOR
        return OFLAG_COMPRESSED | (sectors << self.csize_shift) | coffset


def vm_state_offset(h: Header) -> int:
    """Where the VM state starts: the virtual size rounded up to what one L1 entry maps."""
    per_l1 = h.l2_entries * h.cluster_size
    return -(-h.size // per_l1) * per_l1


def l1_entries_needed(size: int, cluster_bits: int, extended_l2: bool) -> int:
    entries_per_l2 = (1 << cluster_bits) // (16 if extended_l2 else 8)
    clusters = -(-size // (1 << cluster_bits))
    return -(-clusters // entries_per_l2)


# -- refcount blocks -------------------------------------------------------------------------
def refcount_get(block: bytes | bytearray | memoryview, index: int, order: int) -> int:
    """Entry ``index`` of a refcount block whose entries are ``1 << order`` bits wide."""
    if order >= 3:
        width = 1 << (order - 3)
        return int.from_bytes(block[index * width : (index + 1) * width], "big")
    bits = 1 << order
    per_byte = 8 // bits
    byte = block[index // per_byte]
    shift = (index % per_byte) * bits
    return (byte >> shift) & ((1 << bits) - 1)


def refcount_set(block: bytearray | memoryview, index: int, order: int, value: int) -> None:
    if order >= 3:
        width = 1 << (order - 3)
        block[index * width : (index + 1) * width] = value.to_bytes(width, "big")
        return
    bits = 1 << order
    per_byte = 8 // bits
    shift = (index % per_byte) * bits
    mask = ((1 << bits) - 1) << shift
    pos = index // per_byte
    block[pos] = (block[pos] & ~mask) | ((value << shift) & mask)


def refcount_block_entries(cluster_bits: int, order: int) -> int:
    return (1 << cluster_bits) * 8 >> order
