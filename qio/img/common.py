"""What every qio-img subcommand shares: error reporting and opening images.

qemu-img reports errors as ``qemu-img: TEXT`` on stderr; usage errors add the
``Try 'qemu-img --help'`` line.  Subcommands raise :class:`ImgError` (or call :func:`error`)
and return an exit status; they never print tracebacks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from qio.block.node import BlockNode, OpenFlags

PROGRAM = "qio-img"


class ImgError(Exception):
    """A failure qemu-img reports with one line and an exit status (1 unless told)."""

    def __init__(self, message: str, status: int = 1, usage_hint: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.usage_hint = usage_hint


def error(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"{PROGRAM}: {message}\n")
    sys.stderr.flush()


def usage_error(message: str) -> ImgError:
    """qemu-img's error_exit(): the message plus the --help hint, status 1."""
    return ImgError(message, 1, usage_hint=True)


def report(exc: ImgError) -> int:
    error(exc.message)
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
    flags.check = spec.check
    flags.direct, flags.no_flush, _ = CACHE_MODES[spec.cache]
    if spec.image_opts:
        options = parse_option_string(spec.filename)
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
