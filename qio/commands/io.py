"""The data commands: read, readv, write, writev, aio_read, aio_write, aio_flush, discard, flush.

Their checks, messages and output order follow qemu-io 7.2 exactly.  Large requests are
processed in bounded chunks (pattern fill, verification, hexdump) so memory does not grow
with the request; a streamed write is still one request for the cache mode (one flush at the
end under writethrough).  Between chunks the streaming loops report progress to the renderer
and stop early when the shell's Ctrl-C set ``s.cancel`` (the report then says how much was
done: ``wrote DONE/REQUESTED bytes``).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from qio.block import hostio
from qio.block.coroutine import Task, scheduler
from qio.block.mismatch import BlkverifyMismatch
from qio.block.node import ReqFlags
from qio.block.payload import RepeatedBytes, WriteData
from qio.commands.table import command
from qio.errors import BlockError
from qio.numbers import REQUEST_MAX_BYTES, parse_pattern
from qio.results import PatternMismatch, TransferReport
from qio.session import CommandAbort, Session

CHUNK = 4 << 20  # bytes moved per step of a streamed request
RETAIN_MIN = 1 << 20  # reads from this size keep freed buffers for reuse (hostio)
DUMP_BUFFER_LIMIT = 64 << 20  # -v output is held back (as qemu-io does) up to this size
_AB_CHUNK = b"\xab" * CHUNK
_AB_VIEW = memoryview(_AB_CHUNK)


def now() -> float:
    return time.perf_counter()


def pattern_byte(s: Session, text: str) -> int:
    value = parse_pattern(text)
    if value is None:
        s.r.message(f"{text} is not a valid pattern byte")
        raise CommandAbort()
    return value


def io_failed(s: Session, what: str, exc: BlockError) -> int:
    """A failed request: ``<what> failed: <strerror>``, or a blkverify mismatch (report mode),
    which is shown and recorded instead."""
    if isinstance(exc, BlkverifyMismatch):
        s.record_mismatch(exc.mismatch)
    else:
        s.r.message(f"{what} failed: {exc.strerror}")
    return -exc.errno


def check_sector_aligned(s: Session, offset: int, count: int) -> None:
    if offset % 512:
        s.r.message(f"{offset} is not a sector-aligned value for 'offset'")
        raise CommandAbort()
    if count % 512:
        s.r.message(f"{count} is not a sector-aligned value for 'count'")
        raise CommandAbort()


def iovec_total(s: Session, args: list[str]) -> int:
    """create_iovec's checks on the lengths of readv/writev/aio_*; the total byte count."""
    count = 0
    for arg in args:
        length = s.number(arg)
        if length > REQUEST_MAX_BYTES:
            s.r.message(f"Argument '{arg}' exceeds maximum size {REQUEST_MAX_BYTES}")
            raise CommandAbort()
        if count > REQUEST_MAX_BYTES - length:
            s.r.message(f"The total number of bytes exceed the maximum size {REQUEST_MAX_BYTES}")
            raise CommandAbort()
        count += length
    return count


# -- pattern verification ----------------------------------------------------------------
def _equal(piece: memoryview | bytes, ref: bytes) -> bool:
    """``piece == ref`` at memcmp speed.

    Comparing a memoryview with ``==`` unpacks it element by element (about 100 times slower
    than memcmp); a view that spans its whole bytearray is compared through the array itself.
    """
    if isinstance(piece, memoryview):
        obj = piece.obj
        if isinstance(obj, bytearray | bytes) and len(obj) == piece.nbytes:
            return obj == ref
        return piece.tobytes() == ref
    return piece == ref


class PatternCheck:
    """Compares streamed data against one byte value, remembering the first wrong byte."""

    def __init__(self, pattern: int, start: int, length: int) -> None:
        self.pattern = pattern
        self.start = start  # relative to the request
        self.end = start + length
        self.first_bad: int | None = None
        self._ref = bytes([pattern]) * min(max(length, 1), CHUNK)
        self.window = b""
        self.window_offset = 0

    def feed(self, pos: int, data: memoryview | bytes, request_offset: int) -> None:
        """``data`` holds request bytes [pos, pos+len)."""
        if self.first_bad is not None:
            return
        lo = max(pos, self.start)
        hi = min(pos + len(data), self.end)
        at = lo
        while at < hi:
            n = min(hi - at, len(self._ref))
            piece = data[at - pos : at - pos + n]
            if not _equal(piece, self._ref[:n]):
                # lstrip runs in C: the index of the first byte that is not the pattern.
                self.first_bad = at + n - len(bytes(piece).lstrip(self._ref[:1]))
                # A window of four dump rows (aligned like the -v dump) around that byte.
                win_lo = max(pos, self.first_bad - 32)
                win_lo -= (win_lo - pos) % 16
                self.window = bytes(data[win_lo - pos : win_lo - pos + 64])
                self.window_offset = request_offset + win_lo
                return
            at += n

    def result(self, request_offset: int) -> PatternMismatch | None:
        if self.first_bad is None:
            return None
        return PatternMismatch(
            request_offset + self.start,
            self.end - self.start,
            self.pattern,
            request_offset + self.first_bad,
            self.window,
            self.window_offset,
        )


@dataclass
class ReadOutcome:
    seconds: float
    error: BlockError | None
    data: bytearray | None  # the whole buffer when it was kept (small requests, -v)
    done: int = 0  # bytes read before the request ended (less than asked when interrupted)


async def _read_request(
    s: Session,
    offset: int,
    count: int,
    check: PatternCheck | None,
    keep: bool,
    dump_live: bool,
    vmstate: bool,
) -> ReadOutcome:
    blk = s.require_blk()
    if count >= RETAIN_MIN:
        hostio.retain_freed_memory()
    if keep or count <= CHUNK or vmstate:  # (the VM state is read as one request)
        buf = bytearray(_AB_CHUNK[:count]) if count <= CHUNK else bytearray(b"\xab") * count
        view = memoryview(buf)
        t1 = now()
        try:
            if vmstate:
                await blk.load_vmstate(offset, view)
            else:
                await blk.pread(offset, view)
        except BlockError as exc:
            return ReadOutcome(now() - t1, exc, None)
        t2 = now()
        if check is not None:
            check.feed(0, view, offset)
        return ReadOutcome(t2 - t1, None, buf, count)
    # A streamed request: validate it as a whole first, exactly as one request would be.
    t1 = now()
    try:
        blk.check(offset, count)
    except BlockError as exc:
        return ReadOutcome(now() - t1, exc, None)
    chunk = bytearray(CHUNK)
    view = memoryview(chunk)
    pos = 0
    # A live dump shows its own progress; a bar on stderr would only interleave with it.
    with s.r.progress("read", count, enabled=not dump_live) as progress:
        while pos < count and not s.cancel.requested:
            n = min(CHUNK, count - pos)
            part = view[:n]
            part[:] = _AB_CHUNK[:n]
            try:
                with blk.whole_request(offset, count):
                    await blk.pread(offset + pos, part)
            except BlockError as exc:
                return ReadOutcome(now() - t1, exc, None)
            if check is not None:
                check.feed(pos, part, offset)
            if dump_live:
                for sub in range(0, n, 256 << 10):
                    s.r.hexdump(offset + pos + sub, part[sub : min(n, sub + (256 << 10))])
            pos += n
            progress.update(pos)
    return ReadOutcome(now() - t1, None, None, pos)


def _dump(s: Session, offset: int, data: bytearray) -> int:
    """Dump a kept buffer; returns how many bytes were shown (fewer after Ctrl-C)."""
    view = memoryview(data)
    step = 256 << 10
    for pos in range(0, len(data), step):
        if s.cancel.requested:
            return pos
        s.r.hexdump(offset + pos, view[pos : pos + step])
    return len(data)


def _report_read(
    s: Session,
    offset: int,
    count: int,
    outcome: ReadOutcome,
    check: PatternCheck | None,
    quiet: bool,
    machine: bool,
) -> int:
    """What read and readv print after the request: mismatch, dump, report."""
    ret = 0
    if check is not None:
        mismatch = check.result(offset)
        if mismatch is not None:
            s.r.pattern_mismatch(mismatch)
            ret = -errno.EINVAL
    if outcome.done < count:
        ret = s.report_interrupted("read", outcome.done, count)
    if quiet:
        return ret
    if outcome.data is not None:
        shown = _dump(s, offset, outcome.data)
        if shown < count:
            ret = s.report_interrupted("dump", shown, count)
    s.r.transfer(TransferReport("read", offset, count, outcome.done, outcome.seconds, machine))
    return ret


READ_HELP = (
    "\n reads a range of bytes from the given offset\n\n Example:\n 'read -v 512 1k' - dumps 1 kilobyte read from"
    " 512 bytes into the file\n\n Reads a segment of the currently open file, optionally dumping it to the\n"
    " standard output stream (with -v option) for subsequent inspection.\n -b, -- read from the VM state rather"
    " than the virtual disk\n -C, -- report statistics in a machine parsable format\n -l, -- length for pattern"
    " verification (only with -P)\n -p, -- ignored for backwards compatibility\n -P, -- use a pattern to verify"
    " read data\n -q, -- quiet mode, do not show I/O statistics\n -s, -- start offset for pattern verification"
    " (only with -P)\n -v, -- dump buffer to standard output\n\n"
)


@command(
    name="read",
    altname="r",
    argmin=2,
    argmax=-1,
    args="[-abCqv] [-P pattern [-s off] [-l len]] off len",
    oneline="reads a number of bytes at a specified offset",
    optstring="bCl:pP:qs:v",
    help=READ_HELP,
)
def read_f(s: Session, argv: list[str]) -> int:
    bflag = machine = quiet = verbose = pflag = sflag = lflag = False
    pattern = 0
    pattern_offset = pattern_count = 0
    opts = s.options(argv)
    for c, arg in opts:
        if c == "b":
            bflag = True
        elif c == "C":
            machine = True
        elif c == "l":
            lflag = True
            pattern_count = s.number(arg or "")
        elif c == "P":
            pflag = True
            pattern = pattern_byte(s, arg or "")
        elif c == "q":
            quiet = True
        elif c == "s":
            sflag = True
            pattern_offset = s.number(arg or "")
        elif c == "v":
            verbose = True
    operands = opts.operands
    if len(operands) != 2:
        s.usage()
        return -errno.EINVAL
    offset = s.number(operands[0])
    count = s.number(operands[1])
    if count > REQUEST_MAX_BYTES:
        s.r.message(f"length cannot exceed {REQUEST_MAX_BYTES}, given {operands[1]}")
        return -errno.EINVAL
    if not pflag and (lflag or sflag):
        s.usage()
        return -errno.EINVAL
    if not lflag:
        pattern_count = count - pattern_offset
    if pattern_count < 0 or pattern_count + pattern_offset > count:
        s.r.message("pattern verification range exceeds end of read data")
        return -errno.EINVAL
    if bflag:
        check_sector_aligned(s, offset, count)
    check = PatternCheck(pattern, pattern_offset, pattern_count) if pflag else None
    show_dump = verbose and not quiet
    # The dump follows the pattern message, so it is held back unless it is too large.
    keep = show_dump and count <= DUMP_BUFFER_LIMIT
    dump_live = show_dump and not keep
    outcome = scheduler.run_sync(_read_request(s, offset, count, check, keep, dump_live, bflag))
    if outcome.error is not None:
        return io_failed(s, "read", outcome.error)
    if not keep:
        outcome.data = None
    return _report_read(s, offset, count, outcome, check, quiet, machine)


READV_HELP = (
    "\n reads a range of bytes from the given offset into multiple buffers\n\n Example:\n 'readv -v 512 1k 1k ' -"
    " dumps 2 kilobytes read from 512 bytes into the file\n\n Reads a segment of the currently open file,"
    " optionally dumping it to the\n standard output stream (with -v option) for subsequent inspection.\n Uses"
    " multiple iovec buffers if more than one byte range is specified.\n -C, -- report statistics in a machine"
    " parsable format\n -P, -- use a pattern to verify read data\n -v, -- dump buffer to standard output\n -q, --"
    " quiet mode, do not show I/O statistics\n\n"
)


@command(
    name="readv",
    argmin=2,
    argmax=-1,
    args="[-Cqv] [-P pattern] off len [len..]",
    oneline="reads a number of bytes at a specified offset",
    optstring="CP:qv",
    help=READV_HELP,
)
def readv_f(s: Session, argv: list[str]) -> int:
    machine = quiet = verbose = False
    pattern: int | None = None
    opts = s.options(argv)
    for c, arg in opts:
        if c == "C":
            machine = True
        elif c == "P":
            pattern = pattern_byte(s, arg or "")
        elif c == "q":
            quiet = True
        elif c == "v":
            verbose = True
    operands = opts.operands
    if len(operands) < 2:
        s.usage()
        return -errno.EINVAL
    offset = s.number(operands[0])
    count = iovec_total(s, operands[1:])
    check = PatternCheck(pattern, 0, count) if pattern is not None else None
    show_dump = verbose and not quiet
    keep = show_dump and count <= DUMP_BUFFER_LIMIT
    outcome = scheduler.run_sync(
        _read_request(s, offset, count, check, keep, show_dump and not keep, False),
        always_poll=True,
    )
    if outcome.error is not None:
        return io_failed(s, "readv", outcome.error)
    if not keep:
        outcome.data = None
    return _report_read(s, offset, count, outcome, check, quiet, machine)


# -- writes ------------------------------------------------------------------------------
class FillSource:
    """The bytes a write sends: one repeated byte, or a host file repeated cyclically."""

    def __init__(self, pattern: int = 0xCD, period: bytes | None = None) -> None:
        self.pattern = pattern
        self.period = period
        self._repeated: RepeatedBytes | None = None

    def chunk(self, pos: int, n: int) -> WriteData:
        """Request bytes [pos, pos+n): a view of a prebuilt chunk up to CHUNK bytes, a
        RepeatedBytes beyond (one request of any length in bounded memory)."""
        if self.period is None and n <= CHUNK:
            if n < CHUNK:  # (building a small buffer is cheaper than caching a chunk)
                return memoryview(bytes((self.pattern,)) * n)
            return memoryview(_pattern_chunk(self.pattern))
        if self._repeated is None:
            if self.period is None:
                block = _pattern_chunk(self.pattern)
                self._repeated = RepeatedBytes(block, 1, len(block))
            else:
                self._repeated = RepeatedBytes.of(self.period, len(self.period))
        data = RepeatedBytes(self._repeated.block, self._repeated.period, n, pos)
        return data if n > CHUNK else memoryview(bytes(data))


_pattern_cache: dict[int, bytes] = {}


def _pattern_chunk(pattern: int) -> bytes:
    chunk = _pattern_cache.get(pattern)
    if chunk is None:
        if len(_pattern_cache) > 8:
            _pattern_cache.clear()
        chunk = bytes([pattern]) * CHUNK
        _pattern_cache[pattern] = chunk
    return chunk


def load_source_file(s: Session, name: str, count: int) -> bytes | None:
    """qemu_io_alloc_from_file: up to ``count`` bytes of the file (errors on stderr)."""
    try:
        with open(name, "rb") as f:
            data = f.read(count)
    except OSError as exc:
        s.r.error(f"{name}: {os.strerror(exc.errno or errno.EIO)}")
        return None
    if not data:
        s.r.error(f"{name}: file is empty")
        return None
    return data


async def _write_request(
    s: Session, offset: int, count: int, source: FillSource, flags: ReqFlags
) -> tuple[float, int]:
    """(seconds, bytes written); fewer bytes than asked when Ctrl-C interrupted it."""
    blk = s.require_blk()
    t1 = now()
    if count <= CHUNK or not s.cancel.armed:
        # One request, as qemu-io sends it (a qcow2 image allocates differently when a big
        # write arrives in pieces); only the interactive shell streams, so Ctrl-C can stop.
        await blk.pwrite(offset, source.chunk(0, count), flags)
        return now() - t1, count
    blk.check(offset, count)
    pos = 0
    with blk.whole_request(offset, count), s.r.progress("write", count) as progress:
        while pos < count and not s.cancel.requested:
            n = min(CHUNK, count - pos)
            last = pos + n == count
            await blk.pwrite(offset + pos, source.chunk(pos, n), flags, final=last)
            pos += n
            progress.update(pos)
    if pos < count and blk.writethrough:
        # The interrupted request still honours write-through: what it wrote is flushed.
        await blk.flush()
    return now() - t1, pos


WRITE_HELP = (
    "\n writes a range of bytes from the given offset\n\n Example:\n 'write 512 1k' - writes 1 kilobyte at 512 bytes"
    " into the open file\n\n Writes into a segment of the currently open file, using a buffer\n filled with a set"
    " pattern (0xcdcdcdcd).\n -b, -- write to the VM state rather than the virtual disk\n -c, -- write compressed"
    " data with blk_write_compressed\n -f, -- use Force Unit Access semantics\n -n, -- with -z, don't allow slow"
    " fallback\n -p, -- ignored for backwards compatibility\n -P, -- use different pattern to fill file\n -s, --"
    " use a pattern file to fill the write buffer\n -C, -- report statistics in a machine parsable format\n -q, --"
    " quiet mode, do not show I/O statistics\n -u, -- with -z, allow unmapping\n -z, -- write zeroes using"
    " blk_co_pwrite_zeroes\n\n"
)


@command(
    name="write",
    altname="w",
    argmin=2,
    argmax=-1,
    args="[-bcCfnquz] [-P pattern | -s source_file] off len",
    oneline="writes a number of bytes at a specified offset",
    optstring="bcCfnpP:qs:uz",
    needs_write=True,
    help=WRITE_HELP,
)
def write_f(s: Session, argv: list[str]) -> int:
    bflag = cflag = machine = quiet = pflag = sflag = zflag = False
    flags = ReqFlags.NONE
    pattern = 0xCD
    file_name = ""
    opts = s.options(argv)
    for c, arg in opts:
        if c == "b":
            bflag = True
        elif c == "c":
            cflag = True
        elif c == "C":
            machine = True
        elif c == "f":
            flags |= ReqFlags.FUA
        elif c == "n":
            flags |= ReqFlags.NO_FALLBACK
        elif c == "P":
            pflag = True
            pattern = pattern_byte(s, arg or "")
        elif c == "q":
            quiet = True
        elif c == "s":
            sflag = True
            file_name = arg or ""
        elif c == "u":
            flags |= ReqFlags.MAY_UNMAP
        elif c == "z":
            zflag = True
    operands = opts.operands
    if len(operands) != 2:
        s.usage()
        return -errno.EINVAL
    if bflag and zflag:
        s.r.message("-b and -z cannot be specified at the same time")
        return -errno.EINVAL
    if flags:  # (flag enum arithmetic is slow; most writes have none)
        if flags & ReqFlags.FUA and (bflag or cflag):
            s.r.message("-f and -b or -c cannot be specified at the same time")
            return -errno.EINVAL
        if flags & ReqFlags.NO_FALLBACK and not zflag:
            s.r.message("-n requires -z to be specified")
            return -errno.EINVAL
        if flags & ReqFlags.MAY_UNMAP and not zflag:
            s.r.message("-u requires -z to be specified")
            return -errno.EINVAL
    if zflag + pflag + sflag > 1:
        s.r.message("Only one of -z, -P, and -s can be specified at the same time")
        return -errno.EINVAL
    offset = s.number(operands[0])
    count = s.number(operands[1])
    if count > REQUEST_MAX_BYTES and not flags & ReqFlags.NO_FALLBACK:
        s.r.message(f"length cannot exceed {REQUEST_MAX_BYTES} without -n, given {operands[1]}")
        return -errno.EINVAL
    if bflag or cflag:
        check_sector_aligned(s, offset, count)
    source = FillSource(pattern)
    if sflag and not zflag:
        period = load_source_file(s, file_name, count)
        if period is None:
            return -errno.EINVAL
        source = FillSource(period=period)
    blk = s.require_blk()
    done = count
    try:
        if bflag:
            data = (
                source.chunk(0, count)
                if count <= CHUNK
                else memoryview(bytes(source.chunk(0, count)))
            )
            t1 = now()
            scheduler.run_sync(blk.save_vmstate(offset, data))
            seconds = now() - t1
        elif zflag:
            t1 = now()
            scheduler.run_sync(blk.pwrite_zeroes(offset, count, flags))
            seconds = now() - t1
        elif cflag:
            data = memoryview(bytes(source.chunk(0, count)))
            t1 = now()
            scheduler.run_sync(blk.pwrite_compressed(offset, data))
            seconds = now() - t1
        else:
            seconds, done = scheduler.run_sync(_write_request(s, offset, count, source, flags))
    except BlockError as exc:
        return io_failed(s, "write", exc)
    ret = 0 if done == count else s.report_interrupted("write", done, count)
    if not quiet:
        s.r.transfer(TransferReport("wrote", offset, count, done, seconds, machine))
    return ret


WRITEV_HELP = (
    "\n writes a range of bytes from the given offset source from multiple buffers\n\n Example:\n 'writev 512 1k"
    " 1k' - writes 2 kilobytes at 512 bytes into the open file\n\n Writes into a segment of the currently open"
    " file, using a buffer\n filled with a set pattern (0xcdcdcdcd).\n -P, -- use different pattern to fill"
    " file\n -C, -- report statistics in a machine parsable format\n -f, -- use Force Unit Access semantics\n"
    " -q, -- quiet mode, do not show I/O statistics\n\n"
)


@command(
    name="writev",
    argmin=2,
    argmax=-1,
    args="[-Cfq] [-P pattern] off len [len..]",
    oneline="writes a number of bytes at a specified offset",
    optstring="CfqP:",
    needs_write=True,
    help=WRITEV_HELP,
)
def writev_f(s: Session, argv: list[str]) -> int:
    machine = quiet = False
    flags = ReqFlags.NONE
    pattern = 0xCD
    opts = s.options(argv)
    for c, arg in opts:
        if c == "C":
            machine = True
        elif c == "f":
            flags |= ReqFlags.FUA
        elif c == "q":
            quiet = True
        elif c == "P":
            pattern = pattern_byte(s, arg or "")
    operands = opts.operands
    if len(operands) < 2:
        s.usage()
        return -errno.EINVAL
    offset = s.number(operands[0])
    count = iovec_total(s, operands[1:])
    try:
        seconds, done = scheduler.run_sync(
            _write_request(s, offset, count, FillSource(pattern), flags), always_poll=True
        )
    except BlockError as exc:
        return io_failed(s, "writev", exc)
    ret = 0 if done == count else s.report_interrupted("writev", done, count)
    if not quiet:
        s.r.transfer(TransferReport("wrote", offset, count, done, seconds, machine))
    return ret


# -- asynchronous requests -----------------------------------------------------------------
AIO_READ_HELP = (
    "\n asynchronously reads a range of bytes from the given offset\n\n Example:\n 'aio_read -v 512 1k 1k ' - dumps"
    " 2 kilobytes read from 512 bytes into the file\n\n Reads a segment of the currently open file, optionally"
    " dumping it to the\n standard output stream (with -v option) for subsequent inspection.\n The read is"
    " performed asynchronously and the aio_flush command must be\n used to ensure all outstanding aio requests"
    " have been completed.\n Note that due to its asynchronous nature, this command will be\n considered"
    " successful once the request is submitted, independently\n of potential I/O errors or pattern mismatches.\n"
    " -C, -- report statistics in a machine parsable format\n -P, -- use a pattern to verify read data\n -i, --"
    " treat request as invalid, for exercising stats\n -v, -- dump buffer to standard output\n -q, -- quiet mode,"
    " do not show I/O statistics\n\n"
)


@command(
    name="aio_read",
    argmin=2,
    argmax=-1,
    args="[-Ciqv] [-P pattern] off len [len..]",
    oneline="asynchronously reads a number of bytes",
    optstring="CP:iqv",
    help=AIO_READ_HELP,
)
def aio_read_f(s: Session, argv: list[str]) -> int:
    machine = quiet = verbose = False
    pattern: int | None = None
    opts = s.options(argv)
    for c, arg in opts:
        if c == "C":
            machine = True
        elif c == "P":
            pattern = pattern_byte(s, arg or "")
        elif c == "i":
            s.r.message("injecting invalid read request")
            return 0
        elif c == "q":
            quiet = True
        elif c == "v":
            verbose = True
    operands = opts.operands
    if len(operands) < 2:
        s.usage()
        return -errno.EINVAL
    offset = s.number(operands[0])
    count = iovec_total(s, operands[1:])
    blk = s.require_blk()
    buf = bytearray(b"\xab") * count
    t1 = now()

    async def request() -> None:
        await blk.pread(offset, memoryview(buf))

    def done(task: Task) -> None:
        seconds = now() - t1
        error = task.error
        if isinstance(error, BlockError):
            io_failed(s, "readv", error)
            return
        if error is not None:
            raise error
        if pattern is not None:
            check = PatternCheck(pattern, 0, count)
            check.feed(0, memoryview(buf), offset)
            mismatch = check.result(offset)
            if mismatch is not None:
                s.r.pattern_mismatch(mismatch)
        if quiet:
            return
        if verbose:
            _dump(s, offset, buf)
        s.r.transfer(TransferReport("read", offset, count, count, seconds, machine))

    scheduler.spawn(request(), done, "aio_read")
    return 0


AIO_WRITE_HELP = (
    "\n asynchronously writes a range of bytes from the given offset source\n from multiple buffers\n\n Example:\n"
    " 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n\n Writes into a segment of the"
    " currently open file, using a buffer\n filled with a set pattern (0xcdcdcdcd).\n The write is performed"
    " asynchronously and the aio_flush command must be\n used to ensure all outstanding aio requests have been"
    " completed.\n Note that due to its asynchronous nature, this command will be\n considered successful once"
    " the request is submitted, independently\n of potential I/O errors or pattern mismatches.\n -P, -- use"
    " different pattern to fill file\n -C, -- report statistics in a machine parsable format\n -f, -- use Force"
    " Unit Access semantics\n -i, -- treat request as invalid, for exercising stats\n -q, -- quiet mode, do not"
    " show I/O statistics\n -u, -- with -z, allow unmapping\n -z, -- write zeroes using blk_aio_pwrite_zeroes\n\n"
)


@command(
    name="aio_write",
    argmin=2,
    argmax=-1,
    args="[-Cfiquz] [-P pattern] off len [len..]",
    oneline="asynchronously writes a number of bytes",
    optstring="CfiqP:uz",
    needs_write=True,
    help=AIO_WRITE_HELP,
)
def aio_write_f(s: Session, argv: list[str]) -> int:
    machine = quiet = zflag = False
    flags = ReqFlags.NONE
    pattern = 0xCD
    opts = s.options(argv)
    for c, arg in opts:
        if c == "C":
            machine = True
        elif c == "f":
            flags |= ReqFlags.FUA
        elif c == "q":
            quiet = True
        elif c == "u":
            flags |= ReqFlags.MAY_UNMAP
        elif c == "P":
            pattern = pattern_byte(s, arg or "")
        elif c == "i":
            s.r.message("injecting invalid write request")
            return 0
        elif c == "z":
            zflag = True
    operands = opts.operands
    if len(operands) < 2:
        s.usage()
        return -errno.EINVAL
    if zflag and len(operands) != 2:
        s.r.message("-z supports only a single length parameter")
        return -errno.EINVAL
    if flags & ReqFlags.MAY_UNMAP and not zflag:
        s.r.message("-u requires -z to be specified")
        return -errno.EINVAL
    offset = s.number(operands[0])
    blk = s.require_blk()
    if zflag:
        count = s.number(operands[1])
        # qemu-io never takes the start time of a zero write: the duration it reports is the
        # host's monotonic clock.
        t1 = now() - time.monotonic()

        async def request() -> None:
            await blk.pwrite_zeroes(offset, count, flags)

    else:
        count = iovec_total(s, operands[1:])
        data = FillSource(pattern).chunk(0, count)
        t1 = now()

        async def request() -> None:
            await blk.pwrite(offset, data, flags)

    def done(task: Task) -> None:
        seconds = now() - t1
        error = task.error
        if isinstance(error, BlockError):
            io_failed(s, "aio_write", error)
            return
        if error is not None:
            raise error
        if not quiet:
            s.r.transfer(TransferReport("wrote", offset, count, count, seconds, machine))

    scheduler.spawn(request(), done, "aio_write")
    return 0


@command(name="aio_flush", oneline="completes all outstanding aio requests")
def aio_flush_f(s: Session, argv: list[str]) -> int:
    if not scheduler.drain():
        # qemu-io would wait forever for these.
        s.error_report("requests are suspended at blkdebug breakpoints; resume them first")
        return -errno.EDEADLK
    return 0


@command(name="flush", altname="f", oneline="flush all in-core file state to disk")
def flush_f(s: Session, argv: list[str]) -> int:
    try:
        scheduler.run_sync(s.require_blk().flush())
    except BlockError as exc:
        return -exc.errno
    return 0


DISCARD_HELP = (
    "\n discards a range of bytes from the given offset\n\n Example:\n 'discard 512 1k' - discards 1 kilobyte from"
    " 512 bytes into the file\n\n Discards a segment of the currently open file.\n -C, -- report statistics in a"
    " machine parsable format\n -q, -- quiet mode, do not show I/O statistics\n\n"
)


@command(
    name="discard",
    altname="d",
    argmin=2,
    argmax=-1,
    args="[-Cq] off len",
    oneline="discards a number of bytes at a specified offset",
    optstring="Cq",
    needs_write=True,
    help=DISCARD_HELP,
)
def discard_f(s: Session, argv: list[str]) -> int:
    machine = quiet = False
    opts = s.options(argv)
    for c, _arg in opts:
        if c == "C":
            machine = True
        elif c == "q":
            quiet = True
    operands = opts.operands
    if len(operands) != 2:
        s.usage()
        return -errno.EINVAL
    offset = s.number(operands[0])
    count = s.number(operands[1])
    if count > REQUEST_MAX_BYTES:
        s.r.message(f"length cannot exceed {REQUEST_MAX_BYTES}, given {operands[1]}")
        return -errno.EINVAL
    blk = s.require_blk()
    t1 = now()
    try:
        scheduler.run_sync(blk.pdiscard(offset, count))
    except BlockError as exc:
        return io_failed(s, "discard", exc)
    seconds = now() - t1
    if not quiet:
        s.r.transfer(TransferReport("discard", offset, count, count, seconds, machine))
    return 0
