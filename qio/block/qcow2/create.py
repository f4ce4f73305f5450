"""Creating qcow2 images the way QEMU 7.2's qcow2_co_create_opts/qcow2_co_create do.

The bytes of a new image are whatever QEMU's steps leave behind, so the steps are QEMU's, run
on qio's own driver rather than computed from a formula:

1. the image file (and an external data file) is created empty (file-posix's create);
2. a minimal header (size 0, no L1 table) is written into cluster 0 and a refcount table
   pointing at one empty refcount block into clusters 1-2;
3. the image is opened as qcow2, the first three clusters get their refcounts and the full
   header (feature name table, data file name) is written;
4. the image is truncated to its size with the requested preallocation, which allocates the
   L1 table (and, for preallocation, L2 tables, data clusters, refcount blocks);
5. the backing file name and format are recorded in the header.

Every failure is a :class:`CreateError` with QEMU's message; the files made so far are removed
again, as QEMU's ``bdrv_co_delete_file_noerr`` does.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from qio.block.drivers.file_create import create_protocol
from qio.block.node import BlockNode, OpenFlags
from qio.block.open import OpenContext, open_node
from qio.block.options import Options
from qio.block.qcow2.layout import (
    AUTOCLEAR_DATA_FILE_RAW,
    COMPAT_LAZY_REFCOUNTS,
    INCOMPAT_COMPRESSION,
    INCOMPAT_DATA_FILE,
    INCOMPAT_EXTL2,
    MAGIC,
    MAX_BACKING_NAME,
    MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
    QEMU_HEADER_LENGTH,
    SUBCLUSTERS_PER_CLUSTER,
)
from qio.errors import BlockError, OpenError

DEFAULT_CLUSTER_SIZE = 65536
PREALLOC_MODES = ("off", "metadata", "falloc", "full")
VERSIONS = {"v2": 2, "v3": 3}
COMPRESSION_TYPES = {"zlib": 0, "zstd": 1}
# QAPI's BlockdevDriver enumeration in QEMU 7.2 (what backing-fmt is checked against).
BLOCKDEV_DRIVERS = frozenset(
    (
        "blkdebug blklogwrites blkreplay blkverify bochs cloop compress copy-before-write "
        "copy-on-read dmg file snapshot-access ftp ftps gluster host_cdrom host_device http "
        "https io_uring iscsi luks nbd nfs null-aio null-co nvme nvme-io_uring parallels "
        "preallocate qcow qcow2 qed quorum raw rbd replication ssh throttle vdi vhdx "
        "virtio-blk-vfio-pci virtio-blk-vhost-user virtio-blk-vhost-vdpa vmdk vpc vvfat"
    ).split()
)


class CreateError(Exception):
    """Image creation failed; ``message`` is QEMU's text, ``errno`` its error code."""

    def __init__(self, message: str, err: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.message = message
        self.errno = err


@dataclass
class Qcow2CreateOptions:
    """BlockdevCreateOptionsQcow2 with QEMU's defaults.

    The enumerations (``version``, ``preallocation``, ``compression_type``, ``backing_fmt``)
    are kept as the strings the user gave: QEMU checks them only after the file exists (its
    QAPI visitor runs then), and a bad value removes the file again.
    """

    size: int
    version: str = "v3"
    cluster_size: int = DEFAULT_CLUSTER_SIZE
    extended_l2: bool = False
    preallocation: str = "off"
    lazy_refcounts: bool = False
    refcount_bits: int = 16
    compression_type: str = "zlib"
    backing_file: str | None = None
    backing_fmt: str | None = None
    data_file: str | None = None
    data_file_raw: bool = False
    # Options of the protocol layer, for the image file and the data file.
    nocow: bool = False
    extent_size_hint: int | None = None


def _visit(opts: Qcow2CreateOptions) -> None:
    """The QAPI visitor's enumeration checks, in BlockdevCreateOptionsQcow2 field order."""
    checks = (
        ("version", opts.version, VERSIONS),
        ("preallocation", opts.preallocation, PREALLOC_MODES),
        ("compression-type", opts.compression_type, COMPRESSION_TYPES),
        ("backing-fmt", opts.backing_fmt, BLOCKDEV_DRIVERS),
    )
    for name, value, allowed in checks:
        if value is not None and value not in allowed:
            raise CreateError(f"Parameter '{name}' does not accept value '{value}'")


def validate_cluster_size(cluster_size: int, extended_l2: bool) -> None:
    bits = cluster_size.bit_length() - 1
    if bits < MIN_CLUSTER_BITS or bits > MAX_CLUSTER_BITS or cluster_size != 1 << bits:
        raise CreateError(
            f"Cluster size must be a power of two between {1 << MIN_CLUSTER_BITS} and "
            f"{1 << (MAX_CLUSTER_BITS - 10)}k"
        )
    minimum = (1 << MIN_CLUSTER_BITS) * SUBCLUSTERS_PER_CLUSTER
    if extended_l2 and cluster_size < minimum:
        raise CreateError(
            f"Extended L2 entries are only supported with cluster sizes of at least {minimum} bytes"
        )


def _validate(opts: Qcow2CreateOptions) -> int:
    """qcow2_co_create's checks, in its order; returns the version number.

    May change ``opts.preallocation`` (data-file-raw needs at least metadata).
    """
    version = VERSIONS[opts.version]
    if opts.extended_l2 and version < 3:
        raise CreateError(
            "Extended L2 entries are only supported with compatibility level 1.1 and above "
            "(use version=v3 or greater)"
        )
    validate_cluster_size(opts.cluster_size, opts.extended_l2)
    if opts.backing_file and opts.preallocation != "off" and not opts.extended_l2:
        raise CreateError(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on"
        )
    if opts.backing_fmt is not None and not opts.backing_file:
        raise CreateError("Backing format cannot be used without backing file")
    if version < 3 and opts.lazy_refcounts:
        raise CreateError(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use "
            "version=v3 or greater)"
        )
    bits = opts.refcount_bits
    if bits > 64 or bits <= 0 or bits & (bits - 1):
        raise CreateError("Refcount width must be a power of two and may not exceed 64 bits")
    if version < 3 and bits != 16:
        raise CreateError(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above "
            "(use version=v3 or greater)"
        )
    if opts.data_file_raw and not opts.data_file:
        raise CreateError("data-file-raw requires data-file")
    if opts.data_file_raw and opts.backing_file:
        raise CreateError("Backing file and data-file-raw cannot be used at the same time")
    if opts.data_file_raw and opts.preallocation == "off":
        # The L1/L2 tables must map the raw data file 1:1, so its reads agree with qcow2's.
        opts.preallocation = "metadata"
    if opts.data_file and version < 3:
        raise CreateError(
            "External data files are only supported with compatibility level 1.1 and above "
            "(use version=v3 or greater)"
        )
    if opts.compression_type != "zlib" and version < 3:
        raise CreateError(
            "Non-zlib compression type is only supported with compatibility level 1.1 and "
            "above (use version=v3 or greater)"
        )
    return version


def _initial_header(opts: Qcow2CreateOptions, version: int) -> bytes:
    """Cluster 0 as qcow2_co_create first writes it: a 112-byte header, nothing else."""
    incompatible = 0
    if opts.data_file:
        incompatible |= INCOMPAT_DATA_FILE
    compression = COMPRESSION_TYPES[opts.compression_type]
    if compression:
        incompatible |= INCOMPAT_COMPRESSION
    if opts.extended_l2:
        incompatible |= INCOMPAT_EXTL2
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQIIB7x",
        MAGIC,
        version,
        0,  # backing file offset
        0,  # backing file name length
        opts.cluster_size.bit_length() - 1,
        0,  # size: the image starts empty and is resized later
        0,  # no encryption
        0,  # l1_size
        0,  # l1_table_offset
        opts.cluster_size,  # refcount table in cluster 1
        1,  # refcount table clusters
        0,  # snapshots
        0,  # snapshots offset
        incompatible,
        COMPAT_LAZY_REFCOUNTS if opts.lazy_refcounts else 0,
        AUTOCLEAR_DATA_FILE_RAW if opts.data_file_raw else 0,
        opts.refcount_bits.bit_length() - 1,
        QEMU_HEADER_LENGTH,
        compression,
    )
    return header + bytes(opts.cluster_size - len(header))


def _node_options(**items: str) -> Options:
    return Options(dict(items))


def _local_path(filename: str | None) -> str | None:
    if filename is None:
        return None
    return filename[len("file:") :] if filename.startswith("file:") else filename


async def _delete(node: BlockNode | None, path: str | None) -> None:
    if node is not None:
        try:
            await node.close()
        except (BlockError, OpenError, OSError):
            pass
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


async def create_qcow2(filename: str, opts: Qcow2CreateOptions, program: str = "qio") -> list[str]:
    """qcow2_co_create_opts: make ``filename`` a new qcow2 image described by ``opts``.

    ``opts.size`` is rounded up to 512 bytes as QEMU does silently.  Returns the warnings
    QEMU would print (from the file layer).
    """
    ctx = OpenContext(None, program)  # private: creation leaves no nodes behind
    flags = OpenFlags()
    flags.read_write = True
    flags.no_backing = True
    # QEMU syncs the file after each metadata update here; the bytes do not depend on it
    # and fdatasync after every refcount block would make large images slow to create.
    flags.no_flush = True
    from qio.block import registry

    file_opts = {"nocow": opts.nocow, "extent_size_hint": opts.extent_size_hint}
    protocol = registry.protocol_for(filename)
    warnings = await create_protocol(filename, protocol, 0, "off", program=program, **file_opts)
    file_node: BlockNode | None = None
    data_node: BlockNode | None = None
    created_data = False
    try:
        file_node = await open_node(ctx, filename, Options(), flags, protocol=True, top=False)
        if opts.data_file is not None:
            data_protocol = registry.protocol_for(opts.data_file)
            warnings += await create_protocol(
                opts.data_file,
                data_protocol,
                0,
                "off",
                program=program,
                **file_opts,
            )
            created_data = data_protocol == "file"  # only files are deleted on failure
            data_node = await open_node(
                ctx, opts.data_file, Options(), flags, protocol=True, top=False
            )
        _visit(opts)
        opts.size = -(-opts.size // 512) * 512
        await _create(ctx, file_node, data_node, opts)
    except BaseException as exc:
        # bdrv_co_delete_file_noerr: only the file protocol deletes anything
        await _delete(file_node, _local_path(filename) if protocol == "file" else None)
        await _delete(data_node, _local_path(opts.data_file) if created_data else None)
        if isinstance(exc, OpenError):
            raise CreateError(exc.message, exc.errno) from None
        raise
    for node in (file_node, data_node):
        if node is not None:
            await node.close()
    return warnings


async def _create(
    ctx: OpenContext,
    file_node: BlockNode,
    data_node: BlockNode | None,
    opts: Qcow2CreateOptions,
) -> None:
    """qcow2_co_create on already opened protocol nodes."""
    version = _validate(opts)
    cs = opts.cluster_size
    try:
        await file_node.pwritev(0, memoryview(_initial_header(opts, version)))
    except BlockError as exc:
        raise CreateError(f"Could not write qcow2 header: {exc.strerror}", exc.errno) from None
    reftable = bytearray(2 * cs)
    struct.pack_into(">Q", reftable, 0, 2 * cs)  # the refcount block in cluster 2
    try:
        await file_node.pwritev(cs, memoryview(reftable))
    except BlockError as exc:
        raise CreateError(f"Could not write refcount table: {exc.strerror}", exc.errno) from None

    options = _node_options(driver="qcow2", file=file_node.node_name)
    if data_node is not None:
        options.set("data-file", data_node.node_name)
    flags = OpenFlags()
    flags.read_write = True
    flags.no_flush = True
    flags.no_backing = True
    from qio.block.qcow2.driver import Qcow2Node

    node = await open_node(ctx, None, options, flags, top=False)
    assert isinstance(node, Qcow2Node)
    # Closing the qcow2 node would close the protocol nodes too; the caller closes them.
    try:
        try:
            offset = await node.refcounts.alloc_clusters(3 * cs)
        except BlockError as exc:
            raise CreateError(
                f"Could not allocate clusters for qcow2 header and refcount table: {exc.strerror}",
                exc.errno,
            ) from None
        assert offset == 0, "first cluster in an empty image is already in use"
        if data_node is not None:
            node.header.data_file = data_node.filename
        try:
            await node.update_header()
        except BlockError as exc:
            raise CreateError(f"Could not update qcow2 header: {exc.strerror}", exc.errno) from None
        try:
            await node.truncate(opts.size, False, opts.preallocation)
        except OpenError as exc:
            raise CreateError(f"Could not resize image: {exc.message}", exc.errno) from None
        if opts.backing_file:
            await _set_backing(node, opts.backing_file, opts.backing_fmt)
        await node.drv_close()
    finally:
        node.closed = True


async def _set_backing(node: BlockNode, backing_file: str, backing_fmt: str | None) -> None:
    """bdrv_change_backing_file + qcow2_change_backing_file."""
    header = node.header  # type: ignore[attr-defined]
    fmt_text = backing_fmt if backing_fmt is not None else "(null)"
    failure = f"Could not assign backing file '{backing_file}' with format '{fmt_text}'"
    if header.data_file_raw or len(backing_file.encode()) > MAX_BACKING_NAME:
        raise CreateError(f"{failure}: {os.strerror(errno.EINVAL)}", errno.EINVAL)
    header.backing_file = backing_file
    header.backing_format = backing_fmt or ""
    try:
        await node.update_header()  # type: ignore[attr-defined]
    except BlockError as exc:
        raise CreateError(f"{failure}: {exc.strerror}", exc.errno) from None
    node.backing_file = backing_file
    node.backing_format = backing_fmt or ""


def create_qcow2_sync(filename: str, opts: Qcow2CreateOptions, program: str = "qio") -> list[str]:
    from qio.block.coroutine import scheduler

    return scheduler.run_sync(create_qcow2(filename, opts, program))
