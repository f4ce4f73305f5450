"""What every qio-img subcommand shares: error reporting and opening images.

qemu-img reports errors as ``qemu-img: TEXT`` on stderr; usage errors add the
``Try 'qemu-img --help'`` line.  Subcommands raise :class:`ImgError` (or call :func:`error`)
and return an exit status; they never print tracebacks.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass, field

from qio.block.node import BlockNode, OpenFlags
from qio.getopt import Getopt, GetoptError, LongOption
from qio.numbers import INT64_MAX, NumberError, parse_size

PROGRAM = "qio-img"


class ImgError(Exception):
    """A failure qemu-img reports with one line and an exit status (1 unless told)."""

    def __init__(
        self, message: str, status: int = 1, usage_hint: bool = False, end: str = "\n"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.usage_hint = usage_hint
        self.end = end  # QEMU prints some hints without a final newline


def error(message: str, end: str = "\n") -> None:
    sys.stdout.flush()
    sys.stderr.write(f"{PROGRAM}: {message}{end}")
    sys.stderr.flush()


def usage_error(message: str) -> ImgError:
    """qemu-img's error_exit(): the message plus the --help hint, status 1."""
    return ImgError(message, 1, usage_hint=True)


def report(exc: ImgError) -> int:
    error(exc.message, exc.end)
    if exc.usage_hint:
        sys.stderr.write(f"Try '{PROGRAM} --help' for more information\n")
        sys.stderr.flush()
    return exc.status


@dataclass
class OpenSpec:
    """How a subcommand wants an image opened (qemu-img's img_open arguments)."""

    filename: str
    fmt: str | None = None
    image_opts: bool = False
    read_write: bool = False
    force_share: bool = False
    no_backing: bool = False
    cache: str = "writeback"  # qemu-img's BDRV_DEFAULT_CACHE
    check: bool = False  # BDRV_O_CHECK (qemu-img check)
    quiet: bool = False
    no_io: bool = False  # BDRV_O_NO_IO: metadata only (qemu-img info)
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class OpenedImage:
    root: BlockNode
    ctx: object

    def close(self) -> None:
        from qio.block.coroutine import scheduler

        scheduler.run_sync(self.root.close())


def open_image(spec: OpenSpec) -> OpenedImage:
    """Open a whole graph as qemu-img's img_open does; errors become ImgError.

    The message is qemu-img's ``Could not open 'NAME': REASON``.
    """
    if spec.image_opts and spec.fmt is not None:
        raise ImgError("--image-opts and --format are mutually exclusive")
    from qio.block.coroutine import scheduler
    from qio.block.open import CACHE_MODES, Notice, OpenContext, open_node
    from qio.block.options import Options, parse_option_string
    from qio.errors import OpenError

    def notify(notice: Notice) -> None:
        stream = sys.stderr if notice.stream == "err" else sys.stdout
        stream.write(notice.text)
        stream.flush()

    ctx = OpenContext(notify, PROGRAM)
    flags = OpenFlags()
    flags.read_write = spec.read_write
    flags.force_share = spec.force_share
    flags.no_backing = spec.no_backing
    flags.no_io = spec.no_io
    flags.check = spec.check
    flags.direct, flags.no_flush, _ = CACHE_MODES[spec.cache]
    if spec.image_opts:
        text = spec.filename
        first = text.split(",", 1)[0]
        if "=" not in first and text:
            # qemu-img's "source" option list has "file" as its implied first key
            text = f"file={text}"
        options = parse_option_string(text)
        name = None
    else:
        options = Options()
        if spec.fmt is not None:
            options.set("driver", spec.fmt)
        name = spec.filename
    for key, value in spec.extra.items():
        options.set(key, value)
    try:
        root = scheduler.run_sync(open_node(ctx, name, options, flags))
    except OpenError as exc:
        raise ImgError(f"Could not open '{spec.filename}': {exc.message}") from None
    return OpenedImage(root, ctx)


def parse_command_line(
    argv: list[str], shortopts: str, longopts: tuple[LongOption, ...] = ()
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """A subcommand's getopt_long loop with qemu-img's ``:`` error handling.

    qemu-img reports getopt failures itself, naming ``argv[optind - 1]``:
    ``missing argument for option '-f'`` and ``unrecognized option '-x'`` (usage errors).
    """
    g = Getopt(argv, shortopts, longopts)
    options: list[tuple[str, str | None]] = []
    for item in g:
        if isinstance(item, GetoptError):
            if "requires an argument" in item.message:
                raise usage_error(f"missing argument for option '{item.arg}'")
            raise usage_error(f"unrecognized option '{item.arg}'")
        options.append(item)
    return options, g.operands


def cvtnum(name: str, value: str, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """qemu-img's cvtnum_full: a size with suffixes, or its two-line error (status 1)."""
    try:
        parsed = parse_size(value)
    except NumberError as exc:
        if exc.code != errno.ERANGE:
            raise ImgError(
                f"Invalid {name} specified. You may use k, M, G, T, P or E suffixes for\n"
                f"{PROGRAM}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
            ) from None
        parsed = None
    if parsed is not None and parsed.hex_with_suffix:
        error(f"warning: Using a multiplier suffix on hex numbers is deprecated: {value}")
    if parsed is None or not minimum <= parsed.value <= maximum:
        raise ImgError(f"Invalid {name} specified. Must be between {minimum} and {maximum}.")
    return parsed.value
