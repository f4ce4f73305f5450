"""qio-img resize: qemu-img 7.2's img_resize.

The size is taken off the end of the command line before option parsing (so ``-1M`` is not
an option), may be relative (``+``/``-``), and is handed to the driver's truncate with
``exact``: qcow2 grows its L1 table or discards the cropped clusters, raw files change
length.  Shrinking needs ``--shrink``; preallocation only applies to growing.
"""

from __future__ import annotations

import errno
import sys

from qio.block.coroutine import scheduler
from qio.errors import BlockError, OpenError
from qio.getopt import LongOption
from qio.img import opts
from qio.img.common import ImgError, OpenSpec, error, open_image, usage_error
from qio.numbers import NumberError, parse_size

LONGOPTS = (
    LongOption("object", True, "object"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("preallocation", True, "preallocation"),
    LongOption("shrink", False, "shrink"),
)
PREALLOC_MODES = ("off", "metadata", "falloc", "full")
INT64 = 1 << 63


def _int64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= INT64 else value


def parse_size_option(text: str) -> int:
    """A QemuOpts 'size' value: qemu_strtosz with QemuOpts' error texts."""
    try:
        parsed = parse_size(text)
    except NumberError as exc:
        if exc.code == errno.ERANGE:
            raise ImgError(f"Value '{text}' is out of range for parameter 'size'") from None
        raise ImgError(
            "Parameter 'size' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively."
        ) from None
    if parsed.hex_with_suffix:
        error(f"warning: Using a multiplier suffix on hex numbers is deprecated: {text}")
    return parsed.value


def run(argv: list[str]) -> int:
    if len(argv) < 3:
        raise usage_error("Not enough arguments")
    size = argv[-1]
    options, operands = opts.parse(argv[:-1], ":f:hq", LONGOPTS)
    fmt: str | None = None
    quiet = image_opts = shrink = False
    prealloc = "off"
    for opt, arg in options:
        if opt == "f":
            fmt = arg
        elif opt == "q":
            quiet = True
        elif opt == "image-opts":
            image_opts = True
        elif opt == "preallocation":
            if arg not in PREALLOC_MODES:
                raise ImgError(f"Invalid preallocation mode '{arg}'")
            prealloc = arg
        elif opt == "shrink":
            shrink = True
        elif opt == "object":
            raise ImgError("--object is not supported by qio-img")
    if len(operands) != 1:
        raise usage_error("Expecting image file name and size")
    filename = operands[0]
    relative = 0
    if size.startswith("+"):
        relative, size = 1, size[1:]
    elif size.startswith("-"):
        relative, size = -1, size[1:]
    n = _int64(parse_size_option(size))
    image = open_image(OpenSpec(filename, fmt, image_opts, read_write=True, quiet=quiet))
    try:
        current = image.root.getlength()
        total = _int64(current + n * relative) if relative else n
        if total <= 0:
            raise ImgError("New image size must be positive")
        if total <= current and prealloc != "off":
            raise ImgError("Preallocation can only be used for growing images")
        if total < current and not shrink:
            error("Use the --shrink option to perform a shrink operation.")
            raise ImgError(
                "warning: Shrinking an image will delete all data beyond the shrunken "
                "image's end. Before performing such an operation, make sure there is no "
                "important data there."
            )
        try:
            scheduler.run_sync(image.root.truncate(total, True, prealloc))
        except OpenError as exc:
            raise ImgError(exc.message) from None
        except BlockError as exc:
            raise ImgError(exc.strerror) from None
        if not quiet:
            sys.stdout.write("Image resized.\n")
        return 0
    finally:
        image.close()
