"""qio-img convert: qemu-img 7.2's img_convert.

The sources (several are concatenated) are walked by block status in qemu-img's order: each
run is data (read, then written unless it is all zeros), zeros (skipped on a new target,
which reads as zeros, otherwise written as zeroes with MAY_UNMAP) or, with a backing file for
the target (``-B``), left unallocated where the source's top layer is.  Data is scanned for
zero sectors (``-S``, default 4 KiB): runs of at least that many zero sectors are not
written, so the target stays sparse.  Writes go out in order (qemu-img's default), so the
target's allocation follows the source's.  ``-c`` writes every cluster compressed; ``-p``
prints qemu-img's progress meter.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qio.block.coroutine import scheduler
from qio.block.node import BlockNode, ReqFlags, is_zero
from qio.errors import BlockError, OpenError, OptionError
from qio.getopt import LongOption
from qio.img import opts
from qio.img.common import ImgError, OpenedImage, OpenSpec, cvtnum, error, open_image
from qio.img.progress import Progress
from qio.img.status import DATA, ZERO, status_above
from qio.numbers import strtol_base0

if TYPE_CHECKING:
    from qio.img.create import CreateOptions

SECTOR = 512
IO_BUF_SIZE = 2 << 20
MAX_BUF_SECTORS = 32768
REQUEST_MAX_SECTORS = ((1 << 31) - 1) >> 9
MAX_COROUTINES = 16
BLK_ZERO, BLK_DATA, BLK_BACKING_FILE = range(3)

LONGOPTS = (
    LongOption("object", True, "object"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("force-share", False, "U"),
    LongOption("target-image-opts", False, "target-image-opts"),
    LongOption("salvage", False, "salvage"),
    LongOption("target-is-zero", False, "target-is-zero"),
    LongOption("bitmaps", False, "bitmaps"),
    LongOption("skip-broken-bitmaps", False, "skip-broken-bitmaps"),
)


@dataclass
class Source:
    name: str
    node: BlockNode
    sectors: int
    alignment: int  # sectors: request alignment or cluster size, whichever is larger


@dataclass
class Convert:
    """ImgConvertState: the copy's parameters and its walking position."""

    sources: list[Source]
    target: BlockNode
    total_sectors: int
    min_sparse: int = 8
    alignment: int = 8
    buf_sectors: int = IO_BUF_SIZE // SECTOR
    cluster_sectors: int = 0
    compressed: bool = False
    target_has_backing: bool = False
    target_is_new: bool = True
    has_zero_init: bool = False
    target_backing_sectors: int = -1
    salvage: bool = False
    quiet: bool = False
    rate_limit: int = 0
    status: int = BLK_DATA
    sector_next_status: int = 0
    allocated_sectors: int = 0
    allocated_done: int = 0
    progress: Progress = field(default_factory=lambda: Progress(False, 1.0))
    started: float = field(default_factory=time.monotonic)
    written: int = 0

    def select_part(self, sector_num: int) -> tuple[int, int]:
        """(source index, its first sector in the concatenation) for ``sector_num``."""
        offset = 0
        for index, src in enumerate(self.sources):
            if sector_num < offset + src.sectors:
                return index, offset
            offset += src.sectors
        return len(self.sources) - 1, offset - self.sources[-1].sectors

    async def iteration_sectors(self, sector_num: int) -> int:
        """convert_iteration_sectors: how many sectors from ``sector_num`` share a status."""
        index, src_offset = self.select_part(sector_num)
        src = self.sources[index]
        n = min(self.total_sectors - sector_num, REQUEST_MAX_SECTORS)
        post_backing_zero = False
        if self.target_backing_sectors >= 0:
            if sector_num >= self.target_backing_sectors:
                post_backing_zero = True
            elif sector_num + n > self.target_backing_sectors:
                n = self.target_backing_sectors - sector_num
        if self.sector_next_status <= sector_num:
            offset = (sector_num - src_offset) * SECTOR
            base = src.node.backing if self.target_has_backing else None
            n = min(n, src.sectors - (sector_num - src_offset))
            while True:
                try:
                    flags, count = await status_above(src.node, offset, n * SECTOR, base)
                    break
                except BlockError as exc:
                    if not self.salvage:
                        error(
                            "error while reading block status of sector "
                            f"{sector_num - src_offset}: {exc.strerror}"
                        )
                        raise Failed(exc.errno) from None
                    if n == 1:
                        if not self.quiet:
                            error(
                                "warning: error while reading block status at offset "
                                f"{offset}: {exc.strerror}"
                            )
                        flags, count = DATA, SECTOR  # just try to read the data, then
                        break
                    n = -(-n // 4)  # retry on a shorter range
            n = -(-count // SECTOR)
            tail = (sector_num - src_offset + n) % src.alignment
            if n > tail:
                n -= tail
            if flags & ZERO:
                self.status = BLK_BACKING_FILE if post_backing_zero else BLK_ZERO
            elif flags & DATA:
                self.status = BLK_DATA
            else:
                self.status = BLK_BACKING_FILE if self.target_has_backing else BLK_DATA
            self.sector_next_status = sector_num + n
        n = min(n, self.sector_next_status - sector_num)
        if self.status == BLK_DATA:
            n = min(n, self.buf_sectors)
        if self.compressed:
            # compressed clusters are written whole: a short run counts as data
            if n < self.cluster_sectors:
                n = min(self.cluster_sectors, self.total_sectors - sector_num)
                self.status = BLK_DATA
            else:
                n -= n % self.cluster_sectors
        return n

    async def read(self, sector_num: int, nb_sectors: int, buf: memoryview) -> None:
        """convert_co_read: possibly across the boundary between two sources; with
        ``--salvage`` a failed read is retried sector by sector and unreadable sectors
        become zeros."""
        pos = 0
        single_read_until = 0
        while nb_sectors > 0:
            index, src_offset = self.select_part(sector_num)
            src = self.sources[index]
            offset = (sector_num - src_offset) * SECTOR
            n = min(nb_sectors, src.sectors - (sector_num - src_offset))
            if single_read_until > offset:
                n = 1
            part = buf[pos : pos + n * SECTOR]
            try:
                await src.node.preadv(offset, part)
            except BlockError as exc:
                if not self.salvage:
                    raise
                if n != 1:
                    single_read_until = offset + n * SECTOR
                    continue
                if not self.quiet:
                    error(f"warning: error while reading offset {offset}: {exc.strerror}")
                part[:] = bytes(len(part))
            sector_num += n
            nb_sectors -= n
            pos += n * SECTOR

    async def write(self, sector_num: int, nb_sectors: int, buf: memoryview, status: int) -> None:
        """convert_co_write."""
        pos = 0
        while nb_sectors > 0:
            n = nb_sectors
            chunk = buf[pos : pos + n * SECTOR]
            offset = sector_num * SECTOR
            if status == BLK_DATA:
                write = not self.min_sparse
                if not write and not self.compressed:
                    write, n = is_allocated_sectors_min(
                        chunk, n, self.min_sparse, sector_num, self.alignment
                    )
                elif not write:
                    write = not is_zero(chunk)
                if write:
                    data = buf[pos : pos + n * SECTOR]
                    if self.compressed:
                        await self.target.pwrite_compressed(offset, data)
                    else:
                        await self.target.pwritev(offset, data)
                    await self._throttle(n * SECTOR)
                    status_done = True
                else:
                    status_done = False
            else:
                status_done = status == BLK_BACKING_FILE
            if not status_done and not self.has_zero_init:
                await self.target.pwrite_zeroes(offset, n * SECTOR, ReqFlags.MAY_UNMAP)
            sector_num += n
            nb_sectors -= n
            pos += n * SECTOR

    async def _throttle(self, nbytes: int) -> None:
        """-r: keep the average write rate at or below the limit."""
        if not self.rate_limit:
            return
        self.written += nbytes
        ahead = self.written / self.rate_limit - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)

    async def run(self) -> None:
        """convert_do_copy."""
        if self.compressed:
            if self.cluster_sectors <= 0 or self.cluster_sectors > self.buf_sectors:
                error("invalid cluster size")
                raise Failed(errno.EINVAL)
            self.buf_sectors = self.cluster_sectors
        sector_num = 0
        while sector_num < self.total_sectors:
            n = await self.iteration_sectors(sector_num)
            if self.status == BLK_DATA or (not self.min_sparse and self.status == BLK_ZERO):
                self.allocated_sectors += n
            sector_num += n
        self.sector_next_status = 0
        buf = bytearray(self.buf_sectors * SECTOR)
        sector_num = 0
        while sector_num < self.total_sectors:
            n = await self.iteration_sectors(sector_num)
            status = self.status
            if not self.min_sparse and status == BLK_ZERO:
                n = min(n, self.buf_sectors)
            if status == BLK_DATA or (not self.min_sparse and status == BLK_ZERO):
                self.allocated_done += n
                self.progress.print(100.0 * self.allocated_done / self.allocated_sectors, 0)
            view = memoryview(buf)[: n * SECTOR]
            if status == BLK_DATA:
                try:
                    await self.read(sector_num, n, view)
                except BlockError as exc:
                    error(f"error while reading at byte {sector_num * SECTOR}: {exc.strerror}")
                    raise Failed(exc.errno) from None
            elif not self.min_sparse and status == BLK_ZERO:
                status = BLK_DATA
                view[:] = bytes(len(view))
            try:
                await self.write(sector_num, n, view, status)
            except BlockError as exc:
                error(f"error while writing at byte {sector_num * SECTOR}: {exc.strerror}")
                raise Failed(exc.errno) from None
            sector_num += n
        if self.compressed:
            # "signal EOF to align": qcow2 truncates its file to its current length
            file = self.target.file
            if file is not None:
                await file.truncate(file.getlength(), False, "off")


class Failed(Exception):
    """The conversion stopped; the message is already printed."""

    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.errno = err


def _is_allocated_sectors(
    buf: memoryview, n: int, sector_num: int, alignment: int
) -> tuple[bool, int]:
    """is_allocated_sectors: (first sector holds data, run length), the run's end aligned."""
    if n <= 0:
        return False, 0
    zero = is_zero(buf[:SECTOR])
    i = 1
    while i < n:
        if is_zero(buf[i * SECTOR : (i + 1) * SECTOR]) != zero:
            break
        i += 1
    if i == n:
        return not zero, i
    tail = (sector_num + i) & (alignment - 1)
    if tail:
        if zero and i <= tail:
            zero = False  # the data after it will rewrite this tail anyway (RMW)
        if not zero:
            i = min(i + alignment - tail, n)
        else:
            i -= tail
    return not zero, i


def is_allocated_sectors_min(
    buf: memoryview, n: int, min_sparse: int, sector_num: int, alignment: int
) -> tuple[bool, int]:
    """is_allocated_sectors_min: like the above, but when the buffer starts with data, zero
    runs shorter than ``min_sparse`` sectors do not split the write."""
    if n < min_sparse:
        min_sparse = n
    allocated, pnum = _is_allocated_sectors(buf, n, sector_num, alignment)
    if not allocated:
        return False, pnum
    used = checked = pnum
    pos = pnum
    while pos < n:
        allocated, pnum = _is_allocated_sectors(
            buf[pos * SECTOR :], n - pos, sector_num + pos, alignment
        )
        pos += pnum
        checked += pnum
        if allocated:
            used = checked
        elif pnum >= min_sparse:
            break
    return True, used


@dataclass
class Args:
    sources: list[str] = field(default_factory=list)
    target: str = ""
    fmt: str | None = None
    out_fmt: str | None = None
    out_baseimg: str | None = None
    backing_fmt: str | None = None
    options: list[str] = field(default_factory=list)
    snapshot_name: str | None = None
    snapshot_opts: dict[str, str] | None = None
    compress: bool = False
    copy_range: bool = False
    min_sparse: int = 8
    explicit_min_sparse: bool = False
    show_progress: bool = False
    cache: str = "unsafe"  # qemu-img convert's default target cache mode
    src_cache: str = "writeback"
    quiet: bool = False
    skip_create: bool = False
    force_share: bool = False
    image_opts: bool = False
    target_image_opts: bool = False
    salvage: bool = False
    target_is_zero: bool = False
    bitmaps: bool = False
    skip_broken_bitmaps: bool = False
    rate_limit: int = 0


def _parse_snapshot_opts(text: str) -> dict[str, str]:
    """-l snapshot.id=ID,snapshot.name=NAME (QemuOpts with those two keys)."""
    from qio.block.options import OptionError, parse_option_string

    try:
        parsed = parse_option_string(text)
    except OptionError as exc:
        error(str(exc))
        raise ImgError(f"Failed in parsing snapshot param '{text}'") from None
    result: dict[str, str] = {}
    for key, raw in parsed.items():
        value = str(raw)
        if key not in ("snapshot.id", "snapshot.name"):
            error(f"Invalid parameter '{key}'")
            raise ImgError(f"Failed in parsing snapshot param '{text}'")
        result[key] = value
    return result


def parse_args(argv: list[str]) -> Args:
    options, operands = opts.parse(argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", LONGOPTS)
    a = Args()
    for opt, arg in options:
        value = arg or ""
        if opt == "f":
            a.fmt = value
        elif opt == "O":
            a.out_fmt = value
        elif opt == "B":
            a.out_baseimg = value
        elif opt == "C":
            a.copy_range = True
        elif opt == "c":
            a.compress = True
        elif opt == "F":
            a.backing_fmt = value
        elif opt == "o":
            from qio.img.create import is_valid_option_list

            if not is_valid_option_list(value):
                raise ImgError(f"Invalid option list: {value}")
            a.options.append(value)
        elif opt == "l":
            if value.startswith("snapshot."):
                a.snapshot_opts = _parse_snapshot_opts(value)
            else:
                a.snapshot_name = value
        elif opt == "S":
            size = _cvtnum("buffer size for sparse output", value)
            if size % SECTOR or size // SECTOR > MAX_BUF_SECTORS:
                raise ImgError(
                    "Invalid buffer size for sparse output specified. Valid sizes are "
                    f"multiples of {SECTOR} up to {MAX_BUF_SECTORS * SECTOR}. Select 0 to "
                    "disable sparse detection (fully allocates output)."
                )
            a.min_sparse = size // SECTOR
            a.explicit_min_sparse = True
        elif opt == "p":
            a.show_progress = True
        elif opt == "t":
            a.cache = value
        elif opt == "T":
            a.src_cache = value
        elif opt == "q":
            a.quiet = True
        elif opt == "n":
            a.skip_create = True
        elif opt == "m":
            count = strtol_base0(value)  # qemu_strtol(optarg, NULL, 0, ...)
            if count is None or count < 1 or count > MAX_COROUTINES:
                raise ImgError(
                    "Invalid number of coroutines. Allowed number of coroutines is between "
                    f"1 and {MAX_COROUTINES}"
                )
        elif opt == "W":
            pass  # out-of-order writes: qio always writes in order (same result)
        elif opt == "U":
            a.force_share = True
        elif opt == "r":
            a.rate_limit = _cvtnum("rate limit", value)
        elif opt == "object":
            raise ImgError("--object is not supported by qio-img")
        elif opt == "image-opts":
            a.image_opts = True
        elif opt == "target-image-opts":
            a.target_image_opts = True
        elif opt == "salvage":
            a.salvage = True
        elif opt == "target-is-zero":
            a.target_is_zero = True
        elif opt == "bitmaps":
            a.bitmaps = True
        elif opt == "skip-broken-bitmaps":
            a.skip_broken_bitmaps = True
    if a.out_fmt is None and not a.target_image_opts:
        a.out_fmt = "raw"
    if a.skip_broken_bitmaps and not a.bitmaps:
        raise ImgError("--skip-broken-bitmaps requires --bitmaps")
    if a.compress and a.copy_range:
        raise ImgError("Cannot enable copy offloading when -c is used")
    if a.explicit_min_sparse and a.copy_range:
        raise ImgError("Cannot enable copy offloading when -S is used")
    if a.copy_range and a.salvage:
        raise ImgError("Cannot use copy offloading in salvaging mode")
    if a.target_image_opts and not a.skip_create:
        raise ImgError("--target-image-opts requires use of -n flag")
    if a.skip_create and a.options:
        raise ImgError("-o has no effect when skipping image creation")
    if a.target_is_zero and not a.skip_create:
        raise ImgError("--target-is-zero requires use of -n flag")
    if operands:
        a.target = operands[-1]
        a.sources = operands[:-1]
    if a.bitmaps:
        raise ImgError("--bitmaps is not supported by qio-img")
    return a


def _cvtnum(name: str, text: str) -> int:
    return cvtnum(name, text)


def has_zero_init(node: BlockNode) -> bool:
    """bdrv_has_zero_init: does a newly created ``node`` read as zeros everywhere?"""
    from qio.block.qcow2.driver import Qcow2Node

    if isinstance(node, Qcow2Node):
        l1 = node.map.l1_table
        if not l1 or not l1[0]:
            return True
        return has_zero_init(node.data_file)
    if node.format_name == "raw" and node.file is not None:
        return has_zero_init(node.file)
    if node.protocol_name == "file":
        return os.path.isfile(node.filename)
    return False


def run(argv: list[str]) -> int:
    try:
        a = parse_args(argv)
    except ImgError as exc:
        if exc.usage_hint or exc.message:
            raise
        return 1
    if a.options:
        from qio.img.create import has_help_option, option_help

        if has_help_option(",".join(a.options)):
            try:
                sys.stdout.write(option_help(a.target or None, a.out_fmt or "raw"))
            except ImgError as exc:
                error(exc.message)
                return 1
            return 0
    if not a.sources:
        error("Must specify image file name")
        return 1
    from qio.block.open import CACHE_MODES

    if a.src_cache not in CACHE_MODES:
        error(f"Invalid source cache option: {a.src_cache}")
        return 1
    if a.quiet:
        a.show_progress = False
    progress = Progress(a.show_progress, 1.0)
    progress.print(0, 100)
    opened: list[OpenedImage] = []
    try:
        status = _convert(a, progress, opened)
        if status == 0:
            progress.print(100, 0)
        return status
    except ImgError as exc:
        if exc.message:
            error(exc.message)
        return 1
    finally:
        progress.end()
        for image in reversed(opened):
            image.close()


def _convert(a: Args, progress: Progress, opened: list[OpenedImage]) -> int:
    from qio.block.open import CACHE_MODES

    sources: list[Source] = []
    total = 0
    for name in a.sources:
        spec = OpenSpec(name, a.fmt, a.image_opts, force_share=a.force_share, cache=a.src_cache,
                        quiet=a.quiet)
        image = open_image(spec)
        opened.append(image)
        node = image.root
        sectors = -(-node.getlength() // SECTOR)
        alignment = -(-node.request_alignment // SECTOR)
        info = node.get_info()
        if info is not None and info.cluster_size:
            alignment = max(alignment, info.cluster_size // SECTOR)
        sources.append(Source(name, node, sectors, alignment))
        total += sectors
    if a.snapshot_opts is not None or a.snapshot_name is not None:
        _load_snapshot(a, sources)
    out_baseimg = a.out_baseimg
    create_opts = None
    protocol = "file"
    if not a.skip_create:
        create_opts, protocol = _prepare_create(a, total * SECTOR)
        out_baseimg = create_opts.text("backing_file")
    target_has_backing = out_baseimg is not None
    if a.target_is_zero and target_has_backing:
        # qemu-img 7.2 reports this but leaves with ret still 0: exit status 0, nothing copied
        error("Cannot use --target-is-zero when the destination image has a backing file")
        return 0
    if len(sources) > 1 and out_baseimg is not None:
        raise ImgError(
            "Having a backing file for the target makes no sense when concatenating multiple "
            "input images"
        )
    if create_opts is not None:
        _check_create(a, create_opts)
        _create(a, create_opts, protocol, total * SECTOR)
    if a.cache not in CACHE_MODES:
        raise ImgError(f"Invalid cache option: {a.cache}")
    if a.skip_create:
        spec = OpenSpec(a.target, a.out_fmt, a.target_image_opts, read_write=True,
                        cache=a.cache, quiet=a.quiet)
    else:
        spec = OpenSpec(a.target, a.out_fmt, read_write=True, cache=a.cache, quiet=a.quiet)
    target_image = open_image(spec)
    opened.append(target_image)
    target = target_image.root
    if a.compress and target.format_name != "qcow2":
        raise ImgError("Compression not supported for this file format")
    buf_sectors = min(
        MAX_BUF_SECTORS,
        max(IO_BUF_SIZE // SECTOR, target.pdiscard_alignment // SECTOR),
    )
    alignment = max(
        1 << (a.min_sparse.bit_length() - 1) if a.min_sparse else 0,
        -(-target.request_alignment // SECTOR),
    )
    if a.skip_create and target.getlength() // SECTOR < total:
        raise ImgError("output file is smaller than input file")
    target_backing_sectors = -1
    if target_has_backing and not a.skip_create and target.backing is not None:
        target_backing_sectors = target.backing.getlength() // SECTOR
    state = Convert(
        sources,
        target,
        total,
        min_sparse=a.min_sparse,
        alignment=alignment,
        buf_sectors=buf_sectors,
        compressed=a.compress,
        target_has_backing=target_has_backing,
        target_is_new=not a.skip_create,
        has_zero_init=a.target_is_zero,
        target_backing_sectors=target_backing_sectors,
        salvage=a.salvage,
        quiet=a.quiet,
        rate_limit=a.rate_limit,
        progress=progress,
    )
    info = target.get_info()
    if info is None:
        if a.compress:
            raise ImgError("could not get block driver info")
    else:
        state.cluster_sectors = info.cluster_size // SECTOR
    if (
        not state.has_zero_init
        and state.target_is_new
        and state.min_sparse
        and not state.target_has_backing
    ):
        state.has_zero_init = has_zero_init(target)
    try:
        scheduler.run_sync(state.run())
        scheduler.run_sync(target.flush())
    except Failed:
        return 1
    except BlockError as exc:
        error(f"error while writing: {exc.strerror}")
        return 1
    return 0


def _load_snapshot(a: Args, sources: list[Source]) -> None:
    """-l: read the first source as of an internal snapshot (bdrv_snapshot_load_tmp)."""
    from qio.block.qcow2 import internal_snapshots as ops
    from qio.block.qcow2.driver import Qcow2Node

    node = sources[0].node
    if a.snapshot_opts is not None:
        candidates = [(a.snapshot_opts.get("snapshot.id"), a.snapshot_opts.get("snapshot.name"))]
    else:
        if len(sources) > 1:
            raise ImgError("No support for concatenating multiple snapshot")
        candidates = [(a.snapshot_name, None), (None, a.snapshot_name)]
    if not isinstance(node, Qcow2Node):
        raise ImgError(
            f"Failed to load snapshot: Block format '{node.format_name}' used by device '' "
            "does not support temporarily loading internal snapshots"
        )
    message = "Can't find snapshot"
    for id_str, name in candidates:
        try:
            scheduler.run_sync(ops.load_tmp(node, id_str, name))
            return
        except ops.SnapshotError as exc:
            message = exc.message or os.strerror(exc.errno)
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                break
    raise ImgError(f"Failed to load snapshot: {message}")


def _prepare_create(a: Args, size: int) -> tuple[CreateOptions, str]:
    """The target's creation options as img_convert builds them before anything is written:
    the format's and protocol's option lists, ``-o``, the size, ``-B``/``-F``.  Returns
    them with the protocol that creates the target."""
    from qio.img.create import (
        CreateOptions,
        check_format,
        create_opts_list,
        find_protocol,
        option_pairs,
    )

    fmt = a.out_fmt or "raw"
    try:
        check_format(fmt)
        protocol = find_protocol(a.target)
        opts = CreateOptions(create_opts_list(fmt, protocol))
        for name, text in option_pairs(",".join(a.options)) if a.options else []:
            opts.set(name, text)
    except OptionError as exc:
        raise ImgError(exc.message) from None
    opts.set_number("size", size)
    if a.out_baseimg is not None:
        if opts.find_desc("backing_file") is None:
            raise ImgError(f"Backing file not supported for file format '{fmt}'")
        opts.set("backing_file", a.out_baseimg)
    if a.backing_fmt is not None:
        if opts.find_desc("backing_fmt") is None:
            raise ImgError(f"Backing file format not supported for file format '{fmt}'")
        opts.set("backing_fmt", a.backing_fmt)
    return opts, protocol


def _check_create(a: Args, opts: CreateOptions) -> None:
    """The checks between building the options and creating the target."""
    if opts.text("backing_file") is not None and opts.text("backing_fmt") is None:
        raise ImgError("Use of backing file requires explicit backing format")
    if a.compress:
        if a.out_fmt != "qcow2":
            raise ImgError("Compression not supported for this file format")
        if opts.flag("encryption") or opts.text("encrypt.format") is not None:
            raise ImgError("Compression and encryption not supported at the same time")
        prealloc = opts.text("preallocation")
        if prealloc is not None and prealloc != "off":
            raise ImgError("Compression and preallocation not supported at the same time")


def _create(a: Args, opts: CreateOptions, protocol: str, size: int) -> None:
    """bdrv_create: silent; its errors name the target and format."""
    from qio.img.create import create_with_options

    fmt = a.out_fmt or "raw"
    try:
        create_with_options(a.target, fmt, protocol, opts, size)
    except OpenError as exc:
        raise ImgError(f"{a.target}: error while converting {fmt}: {exc.message}") from None
