"""qio-img compare: qemu-img 7.2's img_compare, plus qio's ``--all``.

Both images are walked by block status through their backing chains.  Runs that read as
zeros in both are skipped; runs allocated in both are read and compared sector by sector;
where only one side is allocated that side must read as zeros.  A size difference is a
warning (the surplus must be zeros) unless ``-s``, which also fails on the first run whose
block status flags differ.  Exit status: 0 identical, 1 different, 2 open error, 3 block
status error, 4 read error.

``--all`` (qio's addition) does not stop at the first mismatch: it prints one
``Content mismatch at offset N, length L!`` line per maximal run of differing 512-byte
sectors (sectors counted from the start of each compared chunk, as qemu-img counts them),
then exits 1 if there was any.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from qio.block.compare import sector_runs
from qio.block.coroutine import scheduler
from qio.block.node import BlockNode
from qio.errors import BlockError
from qio.getopt import LongOption
from qio.img import opts
from qio.img.common import ImgError, OpenSpec, error, open_image, usage_error
from qio.img.progress import Progress
from qio.img.status import ALLOCATED, ZERO, status_above

IO_BUF_SIZE = 2 << 20
LONGOPTS = (
    LongOption("object", True, "object"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("force-share", False, "U"),
    LongOption("all", False, "all", extension=True),
)


class Stop(Exception):
    """End of the comparison with this exit status (the message is already printed)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Mismatches:
    """Where content differs.  Without ``--all`` the first mismatch ends the comparison;
    with it, runs of differing sectors are merged while they touch and each run is printed
    once the next one starts (or at the end)."""

    quiet: bool
    every: bool
    pending: tuple[int, int] | None = None
    count: int = 0

    def add(self, offset: int, length: int) -> None:
        if not self.every:
            _say(self.quiet, f"Content mismatch at offset {offset}!\n")
            raise Stop(1)
        self.count += 1
        if self.pending is not None and sum(self.pending) == offset:
            self.pending = (self.pending[0], self.pending[1] + length)
            return
        self.flush()
        self.pending = (offset, length)

    def flush(self) -> None:
        if self.pending is not None:
            start, length = self.pending
            _say(self.quiet, f"Content mismatch at offset {start}, length {length}!\n")
            self.pending = None

    def finish(self) -> bool:
        """Print what is left; True if anything differed."""
        self.flush()
        return self.count > 0


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        sys.stdout.write(text)


def _sector_runs(a: bytearray, b: bytearray | None) -> list[tuple[int, int]]:
    """(start, length) of the runs of 512-byte sectors where ``a`` differs from ``b``
    (from zeros when ``b`` is None), relative to the buffer start."""
    other = b if b is not None else bytes(len(a))
    return [(start, length) for start, length, differ in sector_runs(a, other) if differ]


@dataclass
class Side:
    name: str
    node: BlockNode
    size: int


async def _read(side: Side, offset: int, length: int) -> bytearray:
    buf = bytearray(length)
    try:
        await side.node.preadv(offset, memoryview(buf))
    except BlockError as exc:
        error(f"Error while reading offset {offset} of {side.name}: {exc.strerror}")
        raise Stop(4) from None
    return buf


async def _status(side: Side, offset: int) -> tuple[int, int]:
    try:
        return await status_above(side.node, offset, side.size - offset)
    except BlockError:
        error(f"Sector allocation test failed for {side.name}")
        raise Stop(3) from None


async def _check_empty(side: Side, offset: int, length: int, found: Mismatches) -> None:
    buf = await _read(side, offset, length)
    for start, run in _sector_runs(buf, None):
        found.add(offset + start, run)


async def _compare(a: Side, b: Side, strict: bool, found: Mismatches, progress: Progress) -> int:
    quiet = found.quiet
    total = min(a.size, b.size)
    progress_base = max(a.size, b.size)
    progress.print(0, 100)
    if strict and a.size != b.size:
        _say(quiet, "Strict mode: Image size mismatch!\n")
        return 1
    offset = 0
    while offset < total:
        status1, pnum1 = await _status(a, offset)
        status2, pnum2 = await _status(b, offset)
        allocated1 = status1 & ALLOCATED
        allocated2 = status2 & ALLOCATED
        chunk = min(pnum1, pnum2)
        if strict and status1 != status2:
            _say(quiet, f"Strict mode: Offset {offset} block status mismatch!\n")
            return 1
        if status1 & ZERO and status2 & ZERO:
            pass
        elif allocated1 == allocated2:
            if allocated1:
                chunk = min(chunk, IO_BUF_SIZE)
                buf1 = await _read(a, offset, chunk)
                buf2 = await _read(b, offset, chunk)
                for start, run in _sector_runs(buf1, buf2):
                    found.add(offset + start, run)
        else:
            chunk = min(chunk, IO_BUF_SIZE)
            await _check_empty(a if allocated1 else b, offset, chunk, found)
        offset += chunk
        progress.print(chunk / progress_base * 100, 100)
    if a.size != b.size:
        found.flush()
        _say(quiet, "Warning: Image size mismatch!\n")
        over = a if a.size > b.size else b
        while offset < progress_base:
            flags, chunk = await _status(over, offset)
            if flags & ALLOCATED and not flags & ZERO:
                chunk = min(chunk, IO_BUF_SIZE)
                await _check_empty(over, offset, chunk, found)
            offset += chunk
            progress.print(chunk / progress_base * 100, 100)
    if found.finish():
        return 1
    _say(quiet, "Images are identical.\n")
    return 0


def run(argv: list[str]) -> int:
    options, operands = opts.parse(argv, ":hf:F:T:pqsU", LONGOPTS)
    fmt1 = fmt2 = None
    cache = "writeback"
    show_progress = quiet = strict = force_share = image_opts = every = False
    for opt, arg in options:
        if opt == "f":
            fmt1 = arg
        elif opt == "F":
            fmt2 = arg
        elif opt == "T":
            cache = arg or ""
        elif opt == "p":
            show_progress = True
        elif opt == "q":
            quiet = True
        elif opt == "s":
            strict = True
        elif opt == "U":
            force_share = True
        elif opt == "image-opts":
            image_opts = True
        elif opt == "all":
            every = True
        elif opt == "object":
            raise ImgError("--object is not supported by qio-img", 2)
    if quiet:
        show_progress = False
    if len(operands) != 2:
        raise usage_error("Expecting two image file names")
    name1, name2 = operands
    progress = Progress(show_progress, 2.0)
    try:
        return _run(name1, name2, fmt1, fmt2, cache, image_opts, force_share, quiet,
                    strict, every, progress)
    finally:
        progress.end()


def _run(
    name1: str,
    name2: str,
    fmt1: str | None,
    fmt2: str | None,
    cache: str,
    image_opts: bool,
    force_share: bool,
    quiet: bool,
    strict: bool,
    every: bool,
    progress: Progress,
) -> int:
    from qio.block.open import CACHE_MODES

    if cache not in CACHE_MODES:
        error(f"Invalid source cache option: {cache}")
        return 2
    opened = []
    try:
        for name, fmt in ((name1, fmt1), (name2, fmt2)):
            spec = OpenSpec(name, fmt, image_opts, force_share=force_share, cache=cache,
                            quiet=quiet)
            try:
                opened.append(open_image(spec))
            except ImgError as exc:
                error(exc.message)
                return 2
        a = Side(name1, opened[0].root, opened[0].root.getlength())
        b = Side(name2, opened[1].root, opened[1].root.getlength())
        found = Mismatches(quiet, every)
        try:
            return scheduler.run_sync(_compare(a, b, strict, found, progress))
        except Stop as stop:
            return stop.status
    finally:
        for image in reversed(opened):
            image.close()
