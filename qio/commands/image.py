"""Commands about the image as a whole: alloc, map, info, length, truncate, open, close, reopen."""

from __future__ import annotations

import errno

from qio.block import open as block_open
from qio.block.coroutine import scheduler
from qio.block.node import OpenFlags
from qio.block.options import Options, parse_option_string, to_bool
from qio.commands.table import NOFILE_OK, command
from qio.errors import BlockError, OpenError
from qio.results import AllocResult, InfoResult, MapRun
from qio.session import OpenRequest, Session

PREALLOC_MODES = ("off", "metadata", "falloc", "full")


@command(
    name="alloc",
    altname="a",
    argmin=1,
    argmax=2,
    args="offset [count]",
    oneline="checks if offset is allocated in the file",
)
def alloc_f(s: Session, argv: list[str]) -> int:
    start = s.number(argv[1])
    count = s.number(argv[2]) if len(argv) == 3 else 512
    root = s.require_blk().root

    async def walk() -> tuple[int, int]:
        offset, remaining, allocated, total = start, count, 0, count
        while remaining:
            is_alloc, num = await root.is_allocated(offset, remaining)
            offset += num
            remaining -= num
            if is_alloc:
                allocated += num
            if num == 0:
                total -= remaining
                remaining = 0
        return allocated, total

    try:
        allocated, total = scheduler.run_sync(walk())
    except BlockError as exc:
        s.r.message(f"is_allocated failed: {exc.strerror}")
        return -exc.errno
    s.r.alloc(AllocResult(start, allocated, total))
    return 0


async def map_runs(root, length: int):  # type: ignore[no-untyped-def]
    """(offset, length, allocated) runs of equal allocation status, as qemu-io's map_f."""
    runs: list[MapRun] = []
    offset = 0
    remaining = length
    while remaining:
        first, num = await root.is_allocated(offset, remaining)
        total = num
        pos, left = offset, remaining
        while left > 0:
            pos += num
            left -= num
            if left <= 0:
                break
            allocated, num = await root.is_allocated(pos, left)
            if allocated == first and num:
                total += num
            else:
                break
        if not total:
            raise OpenError("Unexpected end of image", errno.EIO)
        runs.append(MapRun(offset, total, first))
        offset += total
        remaining -= total
    return runs


@command(name="map", args="", oneline="prints the allocated areas of a file")
def map_f(s: Session, argv: list[str]) -> int:
    blk = s.require_blk()
    if not blk.available:
        s.error_report("Failed to query image length: No medium found")
        return -errno.ENOMEDIUM
    try:
        runs = scheduler.run_sync(map_runs(blk.root, blk.getlength()))
    except BlockError as exc:
        s.error_report(f"Failed to get allocation status: {exc.strerror}")
        return -exc.errno
    except OpenError as exc:
        s.error_report(exc.message)
        return -exc.errno
    s.r.map(runs)
    return 0


@command(name="info", altname="i", oneline="prints information about the current file")
def info_f(s: Session, argv: list[str]) -> int:
    root = s.require_blk().root
    names = [root.format_name]
    if root.protocol_name is not None:
        names.append(root.protocol_name)
    info = root.get_info()
    if info is None:
        s.r.info(InfoResult(names))
        return -errno.ENOTSUP
    specific = root.specific_info()
    s.r.info(
        InfoResult(
            names, info.cluster_size, info.vm_state_offset, specific.fields if specific else None
        )
    )
    return 0


@command(name="length", altname="l", oneline="gets the length of the current file")
def length_f(s: Session, argv: list[str]) -> int:
    blk = s.require_blk()
    if not blk.available:
        s.r.message("getlength: No medium found")
        return -errno.ENOMEDIUM
    s.r.length(blk.getlength())
    return 0


@command(
    name="truncate",
    altname="t",
    argmin=1,
    argmax=3,
    args="[-m prealloc_mode] off",
    oneline="truncates the current file at the given offset",
    optstring="m:",
    needs_write=True,
)
def truncate_f(s: Session, argv: list[str]) -> int:
    prealloc = "off"
    opts = s.options(argv)
    for c, arg in opts:
        if c == "m":
            if arg not in PREALLOC_MODES:
                s.error_report(f"Invalid preallocation mode '{arg}'")
                return -errno.EINVAL
            prealloc = arg
    operands = opts.operands
    if not operands:
        # qemu-io 7.2 dereferences a missing size and crashes; qio says what is missing.
        s.usage()
        return -errno.EINVAL
    # qemu-io names argv[1] in a parse error, whichever word failed to parse.
    size = s.number(operands[0], shown=argv[1])
    blk = s.require_blk()
    if not blk.available:
        s.error_report("No medium inserted")
        return -errno.ENOMEDIUM
    try:
        scheduler.run_sync(blk.root.truncate(size, False, prealloc))
    except OpenError as exc:
        s.error_report(exc.message)
        return -exc.errno
    except BlockError as exc:
        s.error_report(exc.strerror)
        return -exc.errno
    return 0


def parse_cache_mode(mode: str) -> tuple[bool, bool, bool] | None:
    """(direct, no_flush, writethrough) for a cache mode name."""
    return block_open.CACHE_MODES.get(mode)


OPEN_HELP = (
    "\n opens a new file in the requested mode\n\n Example:\n 'open -n -o driver=raw /tmp/data' - opens raw data"
    " file read-write, uncached\n\n Opens a file for subsequent use by all of the other qemu-io commands.\n -r, --"
    " open file read-only\n -s, -- use snapshot file\n -C, -- use copy-on-read\n -n, -- disable host cache, short"
    " for -t none\n -U, -- force shared permissions\n -k, -- use kernel AIO implementation (Linux only, prefer use"
    " of -i)\n -i, -- use AIO mode (threads, native or io_uring)\n -t, -- use the given cache mode for the image\n"
    " -d, -- use the given discard mode for the image\n -o, -- options to be given to the block driver\n"
)


def parse_options_noisily(s: Session, text: str, into: Options) -> bool:
    warnings: list[str] = []
    parsed = parse_option_string(text, warnings)
    for w in warnings:
        s.warn_report(w)
    for key, value in parsed.items():
        into.set(key, value)
    return True


@command(
    name="open",
    altname="o",
    argmin=1,
    argmax=-1,
    flags=NOFILE_OK,
    args="[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
    oneline="open the file specified by path",
    optstring="snCro:ki:t:d:U",
    help=OPEN_HELP,
)
def open_f(s: Session, argv: list[str]) -> int:
    flags = OpenFlags()
    writethrough = True
    readonly = False
    native_aio = False
    force_share = False
    options = Options()
    opts = s.options(argv)
    for c, arg in opts:
        arg = arg or ""
        if c == "s":
            flags.snapshot = True
        elif c == "n":
            flags.direct = True
            writethrough = False
        elif c == "C":
            flags.copy_on_read = True
        elif c == "r":
            readonly = True
        elif c == "k":
            native_aio = True
        elif c == "t":
            mode = parse_cache_mode(arg)
            if mode is None:
                s.error_report(f"Invalid cache option: {arg}")
                return -errno.EINVAL
            flags.direct, flags.no_flush, writethrough = mode
        elif c == "d":
            if arg not in block_open.DISCARD_MODES:
                s.error_report(f"Invalid discard option: {arg}")
                return -errno.EINVAL
            flags.unmap = block_open.DISCARD_MODES[arg]
        elif c == "i":
            if arg not in block_open.AIO_MODES:
                s.error_report(f"Invalid aio option: {arg}")
                return -errno.EINVAL
            flags.aio = arg
        elif c == "o":
            if s.image_opts:
                s.r.message("--image-opts and 'open -o' are mutually exclusive")
                return -errno.EINVAL
            parse_options_noisily(s, arg, options)
        elif c == "U":
            force_share = True
    if native_aio:
        flags.aio = "native"
    flags.read_write = not readonly
    flags.force_share = force_share
    operands = opts.operands
    name: str | None = None
    if s.image_opts and len(operands) == 1:
        parse_options_noisily(s, operands[0], options)
        operands = []
    if len(operands) == 1:
        name = operands[0]
    elif operands:
        s.usage()
        return -errno.EINVAL
    ok = s.openfile(OpenRequest(name, options, flags, writethrough, force_share))
    return 0 if ok else -errno.EINVAL


@command(name="close", altname="c", oneline="close the current open file")
def close_f(s: Session, argv: list[str]) -> int:
    s.close_image()
    return 0


REOPEN_HELP = (
    "\n Changes the open options of an already opened image\n\n Example:\n 'reopen -o lazy-refcounts=on' - activates"
    " lazy refcount writeback on a qcow2 image\n\n -r, -- Reopen the image read-only\n -w, -- Reopen the image"
    " read-write\n -c, -- Change the cache mode to the given value\n -o, -- Changes block driver options (cf."
    " 'open' command)\n\n"
)


@command(
    name="reopen",
    argmin=0,
    argmax=-1,
    args="[(-r|-w)] [-c cache] [-o options]",
    oneline="reopens an image with new options",
    optstring="c:o:rw",
    help=REOPEN_HELP,
)
def reopen_f(s: Session, argv: list[str]) -> int:
    blk = s.require_blk()
    root = blk.root
    read_write = root.flags.read_write
    direct, no_flush = root.flags.direct, root.flags.no_flush
    writethrough = blk.writethrough
    has_rw = has_cache = False
    options = Options()
    opts = s.options(argv)
    for c, arg in opts:
        arg = arg or ""
        if c == "c":
            mode = parse_cache_mode(arg)
            if mode is None:
                s.error_report(f"Invalid cache option: {arg}")
                return -errno.EINVAL
            direct, no_flush, writethrough = mode
            has_cache = True
        elif c == "o":
            parse_options_noisily(s, arg, options)
        elif c in "rw":
            if has_rw:
                s.error_report("Only one -r/-w option may be given")
                return -errno.EINVAL
            read_write = c == "w"
            has_rw = True
    if opts.operands:
        s.usage()
        return -errno.EINVAL
    if not read_write:
        # qemu-io gives up the backend's write permission before anything else is checked.
        scheduler.drain()
        blk.write_permission = False
    if "read-only" in options:
        if has_rw:
            s.error_report("Cannot set both -r/-w and 'read-only'")
            return -errno.EINVAL
    else:
        options.set("read-only", not read_write)
    if "cache.direct" in options or "cache.no-flush" in options:
        if has_cache:
            s.error_report("Cannot set both -c and the cache options")
            return -errno.EINVAL
    else:
        options.set("cache.direct", direct)
        options.set("cache.no-flush", no_flush)
    from qio.block.reopen import reopen

    try:
        scheduler.drain()
        if blk.write_permission and to_bool("read-only", options.get("read-only")):
            raise OpenError(
                f"Read-only block node '{root.node_name}' cannot support read-write users"
            )
        scheduler.run_sync(reopen(root, options))
    except OpenError as exc:
        s.error_report(exc.message)
        return -errno.EINVAL
    blk.writethrough = writethrough
    return 0
