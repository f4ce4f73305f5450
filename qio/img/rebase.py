"""qio-img rebase: qemu-img 7.2's img_rebase.

Unsafe mode (``-u``) opens the image without its backing file and only rewrites the backing
file name and format in the header.  Safe mode first makes the image's content independent
of the switch: wherever the image itself has nothing allocated, the old and new backing
files are read (past a backing file's end it reads as zeros) and every run of 512-byte
sectors where they differ is written into the image from the old backing file.  ``-b ""``
detaches the backing file, so everything the old one provided is copied in.
"""

from __future__ import annotations

import errno
import os

from qio.block.compare import sector_runs
from qio.block.coroutine import scheduler
from qio.block.node import BlockNode
from qio.errors import BlockError, OpenError
from qio.getopt import LongOption
from qio.img import opts
from qio.img.common import ImgError, OpenedImage, OpenSpec, error, open_image, usage_error
from qio.img.progress import Progress
from qio.img.status import allocated_above

IO_BUF_SIZE = 2 << 20
LONGOPTS = (
    LongOption("object", True, "object"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("force-share", False, "U"),
)


def _known_format(name: str) -> bool:
    from qio.block import registry

    # bdrv_find_format knows QEMU's drivers, including those qio cannot open
    return name in registry.driver_names() or name in registry.UNSUPPORTED_FORMATS


def _chain_node_for(root: BlockNode, path: str) -> BlockNode | None:
    """bdrv_find_backing_image: the image in ``root``'s backing chain stored at ``path``.

    As in QEMU, ``path`` (already resolved against the overlay's directory) is resolved once
    more against each layer's directory, and both sides must exist (realpath): rebasing
    ``dir/top`` onto a relative name therefore does not find the chain's image and opens
    it anew."""
    from qio.block.open import resolve_backing_path

    layer: BlockNode | None = root
    while layer is not None and layer.supports_backing and layer.backing is not None:
        below = layer.backing
        name = _image_filename(layer)
        candidate = resolve_backing_path(name, path)
        recorded = resolve_backing_path(name, layer.backing_file) if layer.backing_file else ""
        if (
            recorded
            and os.path.exists(candidate)
            and os.path.exists(recorded)
            and os.path.realpath(candidate) == os.path.realpath(recorded)
        ):
            return below
        layer = below
    return None


def _image_filename(node: BlockNode) -> str:
    file = node.file if node.file is not None else node
    return file.filename or node.filename


def run(argv: list[str]) -> int:
    options, operands = opts.parse(argv, ":hf:F:b:upt:T:qU", LONGOPTS)
    fmt = out_basefmt = out_baseimg = None
    cache = src_cache = "writeback"
    unsafe = show_progress = quiet = image_opts = force_share = False
    for opt, arg in options:
        if opt == "f":
            fmt = arg
        elif opt == "F":
            out_basefmt = arg
        elif opt == "b":
            out_baseimg = arg
        elif opt == "u":
            unsafe = True
        elif opt == "p":
            show_progress = True
        elif opt == "t":
            cache = arg or ""
        elif opt == "T":
            src_cache = arg or ""
        elif opt == "q":
            quiet = True
        elif opt == "image-opts":
            image_opts = True
        elif opt == "U":
            force_share = True
        elif opt == "object":
            raise ImgError("--object is not supported by qio-img")
    if quiet:
        show_progress = False
    if len(operands) != 1:
        raise usage_error("Expecting one image file name")
    if not unsafe and out_baseimg is None:
        raise usage_error("Must specify backing file (-b) or use unsafe mode (-u)")
    progress = Progress(show_progress, 2.0)
    progress.print(0, 100)
    try:
        return _rebase(
            operands[0], fmt, out_baseimg, out_basefmt, cache, src_cache, unsafe, quiet,
            image_opts, force_share, progress,
        )
    finally:
        progress.end()


def _rebase(
    filename: str,
    fmt: str | None,
    out_baseimg: str | None,
    out_basefmt: str | None,
    cache: str,
    src_cache: str,
    unsafe: bool,
    quiet: bool,
    image_opts: bool,
    force_share: bool,
    progress: Progress,
) -> int:
    from qio.block.open import CACHE_MODES

    if cache not in CACHE_MODES:
        error(f"Invalid cache option: {cache}")
        return 1
    if src_cache not in CACHE_MODES:
        error(f"Invalid source cache option: {src_cache}")
        return 1
    spec = OpenSpec(filename, fmt, image_opts, read_write=True, no_backing=unsafe,
                    cache=cache, quiet=quiet)
    try:
        image = open_image(spec)
    except ImgError as exc:
        error(exc.message)
        return 1
    new_backing: OpenedImage | None = None
    try:
        root = image.root
        if out_basefmt is not None and not _known_format(out_basefmt):
            error(f"Invalid format name: '{out_basefmt}'")
            return 1
        if not unsafe:
            assert out_baseimg is not None
            new_node: BlockNode | None = None
            prefix: BlockNode | None = None
            if out_baseimg:
                from qio.block.open import resolve_backing_path

                real_path = resolve_backing_path(root.filename or filename, out_baseimg)
                prefix = _chain_node_for(root, real_path)
                if prefix is not None:
                    new_node = prefix
                else:
                    extra = {"force-share": "on"} if force_share else {}
                    new_spec = OpenSpec(real_path, out_basefmt, cache=src_cache, extra=extra)
                    try:
                        new_backing = open_image(new_spec)
                    except ImgError as exc:
                        reason = exc.message.removeprefix(f"Could not open '{real_path}': ")
                        error(f"Could not open new backing file '{out_baseimg}': {reason}")
                        return 1
                    new_node = new_backing.root
            status = scheduler.run_sync(_copy_differences(root, new_node, prefix, progress))
            if status:
                return status
        status = scheduler.run_sync(_change_backing(root, out_baseimg, out_basefmt))
        progress.print(100, 0)
        return status
    finally:
        if new_backing is not None:
            new_backing.close()
        image.close()


async def _copy_differences(
    root: BlockNode, new: BlockNode | None, prefix: BlockNode | None, progress: Progress
) -> int:
    old = root.backing if root.supports_backing else None
    size = root.getlength()
    old_size = old.getlength() if old is not None else 0
    new_size = new.getlength() if new is not None else 0
    step = 0.0
    if size:
        from qio.img.progress import f32

        step = f32(100 / f32(size // min(size, IO_BUF_SIZE)))
    offset = 0
    while offset < size:
        n = min(IO_BUF_SIZE, size - offset)
        try:
            status = await root.block_status(offset, n, want_zero=False)
            allocated, n = status.allocated, status.length
            if allocated:
                offset += n
                continue
            if prefix is not None and old is not None:
                allocated, n = await allocated_above(old, offset, n, prefix)
                if not allocated:
                    offset += n
                    continue
        except BlockError as exc:
            error(f"error while reading image metadata: {exc.strerror}")
            return 1
        old_is_zero = offset >= old_size
        if old_is_zero:
            buf_old = bytearray(n)
        else:
            n = min(n, old_size - offset)
            buf_old = bytearray(n)
            try:
                assert old is not None
                await old.preadv(offset, memoryview(buf_old))
            except BlockError:
                error("error while reading from old backing file")
                return 1
        if new is None or offset >= new_size:
            buf_new = bytearray(n)
        else:
            n = min(n, new_size - offset)
            buf_new = bytearray(n)
            try:
                await new.preadv(offset, memoryview(buf_new))
            except BlockError:
                error("error while reading from new backing file")
                return 1
        if len(buf_old) > n:
            del buf_old[n:]
        for start, length, differ in sector_runs(buf_old, buf_new):
            if not differ:
                continue
            try:
                if old_is_zero:
                    await root.pwrite_zeroes(offset + start, length)
                else:
                    await root.pwritev(offset + start, memoryview(buf_old)[start : start + length])
            except BlockError as exc:
                error(f"Error while writing to COW image: {exc.strerror}")
                return 1
        offset += n
        progress.print(step, 100)
    return 0


async def _change_backing(root: BlockNode, backing: str | None, fmt: str | None) -> int:
    """bdrv_change_backing_file (with ``require``) and its error reports."""
    name = backing or None
    if name is None:
        fmt = None  # qemu-img passes neither name nor format when detaching
    code = 0
    if name is not None and fmt is None:
        code = errno.EINVAL
    elif root.format_name != "qcow2":
        code = errno.ENOTSUP
    else:
        code = await _qcow2_change_backing(root, name, fmt)
    if code == 0:
        return 0
    if code == errno.ENOSPC:
        error(f"Could not change the backing file to '{backing}': "
              "No space left in the file header")
    elif code == errno.EINVAL and backing and fmt is None:
        error(f"Could not change the backing file to '{backing}': "
              "backing format must be specified")
    else:
        error(f"Could not change the backing file to '{backing}': {os.strerror(code)}")
    return 1


async def _qcow2_change_backing(node: BlockNode, name: str | None, fmt: str | None) -> int:
    """qcow2_change_backing_file: record the new name and format and rewrite the header
    (extensions included) as qcow2_update_header lays it out."""
    from qio.block.qcow2.driver import Qcow2Node

    assert isinstance(node, Qcow2Node)
    h = node.header
    if name is not None and h.data_file_raw:
        return errno.EINVAL
    if name is not None and len(name.encode("utf-8", "surrogateescape")) > 1023:
        return errno.EINVAL
    old = (h.backing_file, h.backing_format)
    h.backing_file = name or ""
    h.backing_format = fmt or ""
    try:
        await node.update_header()
        await node.image_file.flush()
    except (BlockError, OpenError) as exc:
        h.backing_file, h.backing_format = old
        return exc.errno
    node.backing_file = h.backing_file
    node.backing_format = h.backing_format
    return 0
