"""One qio session: the open image, the command engine and the renderer.

The ``-c`` runner, the piped-stdin loop and the interactive shell are three front doors to
``Session.run_line``; whatever they are, a command line goes through the same steps as in
qemu-io: split on spaces, look the command up, check "no file open", check the argument
count, check the write permission, then run it.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from qio.block.backend import BlockBackend
from qio.block.coroutine import Deadlock, FatalError, scheduler
from qio.block.mismatch import BlkverifyExit
from qio.block.node import OpenFlags
from qio.block.open import Notice, OpenContext, open_node
from qio.block.options import Options
from qio.commands import table
from qio.commands.table import GLOBAL, NOFILE_OK, Command
from qio.errors import BlockError, OpenError
from qio.getopt import Getopt, GetoptError
from qio.numbers import NumberError, cvtnum
from qio.render.plain import PlainRenderer
from qio.results import Mismatch


class CommandAbort(Exception):
    """Ends the running command with a status (the message was already printed)."""

    def __init__(self, status: int = -errno.EINVAL) -> None:
        super().__init__(status)
        self.status = status


class QuitProgram(Exception):
    """Ends the whole program now with an exit status (blkverify's exit(1))."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class OpenRequest:
    """What qemu-io's ``openfile`` gets: a name, options and the open-time switches."""

    name: str | None
    options: Options
    flags: OpenFlags
    writethrough: bool = True
    force_share: bool = False


class CommandOptions:
    """getopt over a command's words; errors print glibc's message and the usage line."""

    def __init__(self, session: Session, cmd: Command, argv: list[str]) -> None:
        self.session = session
        self.cmd = cmd
        self.argv = argv
        self._getopt = Getopt(argv, cmd.optstring)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        for item in self._getopt:
            if isinstance(item, GetoptError):
                self.session.r.error(f"{self.argv[0]}: {item.message}")
                self.session.usage(self.cmd)
                raise CommandAbort()
            yield item

    @property
    def operands(self) -> list[str]:
        return self._getopt.operands


@dataclass
class Cancellation:
    """A request to stop the running command at its next chunk boundary.

    The interactive shell sets it from its SIGINT handler while a command runs; streaming
    loops (large read/write, verify) test ``requested`` between chunks, so an interrupted
    request always ends between two complete block-layer requests and the image stays
    consistent.  Outside the shell nothing sets it (Ctrl-C kills qio, as it kills qemu-io).
    """

    requested: bool = False
    armed: bool = False  # the shell is running a command: Ctrl-C may ask it to stop

    def request(self) -> None:
        self.requested = True

    def reset(self) -> None:
        self.requested = False


@dataclass
class MismatchLog:
    """blkverify mismatches recorded in report mode (for ``mismatches``)."""

    entries: list[Mismatch] = field(default_factory=list)


class Session:
    def __init__(
        self, renderer: PlainRenderer, program: str = "qio", image_opts: bool = False
    ) -> None:
        self.r = renderer
        self.program = program
        self.image_opts = image_opts
        self.blk: BlockBackend | None = None
        self.quit = False
        self.last_error = 0
        self.mismatches = MismatchLog()
        self.interactive = False
        self.current: Command | None = None
        self.cancel = Cancellation()

    # -- output helpers --------------------------------------------------------------------
    def error_report(self, text: str) -> None:
        """QEMU's error_report: ``prog: text`` on stderr."""
        self.r.error(f"{self.program}: {text}")

    def warn_report(self, text: str) -> None:
        self.r.error(f"{self.program}: warning: {text}")

    def usage(self, cmd: Command | None = None) -> None:
        """qemuio_command_usage: the synopsis line of the running command."""
        cmd = cmd or self.current
        assert cmd is not None
        self.r.message(cmd.usage_line())

    def notify(self, notice: Notice) -> None:
        self.r.notice(notice)

    def options(self, argv: list[str]) -> CommandOptions:
        """getopt over the running command's words, with its declared option string."""
        assert self.current is not None
        return CommandOptions(self, self.current, argv)

    def number(self, text: str, shown: str | None = None) -> int:
        """cvtnum plus print_cvtnum_err: the value, or the command ends.

        ``shown`` is the word the error message names when it is not ``text``.
        """
        try:
            parsed = cvtnum(text)
        except NumberError as exc:
            self.r.message(NumberError(exc.code, text if shown is None else shown).message())
            raise CommandAbort(-exc.code) from None
        if parsed.hex_with_suffix:
            self.warn_report(f"Using a multiplier suffix on hex numbers is deprecated: {text}")
        return parsed.value

    def report_interrupted(self, verb: str, done: int, total: int) -> int:
        """A streamed request stopped by Ctrl-C: say how far it got; the command's status."""
        self.error_report(f"{verb} interrupted after {done} of {total} bytes")
        return -errno.EINTR

    def require_blk(self) -> BlockBackend:
        assert self.blk is not None
        return self.blk

    # -- running commands ------------------------------------------------------------------
    def run_line(self, line: str) -> int:
        """Run one command line; returns 0 or a negative errno (qemu-io's convention)."""
        words = [w for w in line.split(" ") if w]
        if not words:
            return 0
        scheduler.command_started()
        cmd = table.find(words[0])
        if cmd is None:
            self.r.error(f'command "{words[0]}" not found')
            status = -errno.EINVAL
        else:
            status = self._run(cmd, words)
        if status < 0:
            self.last_error = status
        return status

    def _run(self, cmd: Command, argv: list[str]) -> int:
        if not cmd.flags & GLOBAL and not cmd.flags & NOFILE_OK and self.blk is None:
            self.r.error("no file open, try 'help open'")
            return -errno.EINVAL
        argc = len(argv) - 1
        if argc < cmd.argmin or (cmd.argmax != -1 and argc > cmd.argmax):
            if cmd.argmax == -1:
                self.r.error(
                    f"bad argument count {argc} to {argv[0]}, expected at least {cmd.argmin} arguments"
                )
            elif cmd.argmin == cmd.argmax:
                self.r.error(
                    f"bad argument count {argc} to {argv[0]}, expected {cmd.argmin} arguments"
                )
            else:
                self.r.error(
                    f"bad argument count {argc} to {argv[0]}, expected between {cmd.argmin} and {cmd.argmax} arguments"
                )
            return -errno.EINVAL
        if cmd.needs_write and self.blk is not None and self.blk.available:
            if not self.blk.write_permission:
                if self.blk.read_only_node() is not None:
                    self.error_report("Block node is read-only")
                    return -errno.EPERM
                self.blk.write_permission = True
        outer, self.current = self.current, cmd
        try:
            return cmd.func(self, argv)
        except CommandAbort as abort:
            return abort.status
        except Deadlock:
            self.error_report(
                "the request is suspended at a breakpoint and nothing can resume it "
                "(use aio_read/aio_write with breakpoints)"
            )
            return -errno.EDEADLK
        except FatalError as fatal:
            self.fatal(fatal)
        finally:
            self.current = outer

    def fatal(self, fatal: FatalError) -> NoReturn:
        """The program ends here (qemu-io calls exit() inside the driver)."""
        if isinstance(fatal, BlkverifyExit):
            self.r.mismatch(fatal.mismatch, fatal=True)
        elif fatal.abort:
            # abort(): what stdout still buffers is lost, stderr went out at once.
            self.r.console.out.discard()
            self.r.error(fatal.message)
            signal.signal(signal.SIGABRT, signal.SIG_DFL)
            os.abort()
        else:
            self.r.error(fatal.message)
        raise QuitProgram(fatal.status) from None

    def record_mismatch(self, mismatch: Mismatch) -> None:
        """A blkverify mismatch in report mode: shown now, listed by ``mismatches``."""
        self.mismatches.entries.append(mismatch)
        self.r.mismatch(mismatch, fatal=False)

    # -- the image -------------------------------------------------------------------------
    def new_context(self) -> OpenContext:
        return OpenContext(self.notify, self.program)

    def openfile(self, req: OpenRequest) -> bool:
        """qemu-io's openfile(): True on success (errors are printed)."""
        if self.blk is not None:
            self.error_report("file open already, try 'help close'")
            return False
        options = req.options
        if req.force_share:
            current = options.get("force-share")
            if current is not None and str(current) not in ("on", "true", "True"):
                self.error_report("-U conflicts with image options")
                return False
            options.set("force-share", "on")
        ctx = self.new_context()
        try:
            self.blk = open_backend(ctx, req)
        except OpenError as exc:
            where = f" device {req.name}" if req.name is not None else ""
            self.error_report(f"can't open{where}: {exc.message}")
            return False
        return True

    def close_image(self) -> None:
        blk = self.blk
        if blk is None:
            return
        self.blk = None
        scheduler.drain()
        try:
            scheduler.run_sync(blk.close())
        except (BlockError, OpenError) as exc:
            msg = exc.message if isinstance(exc, OpenError) else exc.strerror
            self.error_report(msg)


def open_backend(ctx: OpenContext, req: OpenRequest) -> BlockBackend:
    """blk_new_open: the whole graph for one image, with -s / -C / -U applied."""
    flags = req.flags
    options = req.options
    base_flags = flags
    if flags.snapshot:
        # The image becomes the overlay's backing node, which QEMU opens read-only whatever
        # the options say (so a probed raw image does not warn either); copy-on-read
        # belongs to the overlay.
        base_flags = flags.copy()
        base_flags.read_write = False
        base_flags.snapshot = False
        base_flags.copy_on_read = False
        options.pop("read-only")
    # force-share and copy-on-read are checked node by node as QEMU does (open_node).
    root = scheduler.run_sync(open_node(ctx, req.name, options, base_flags))
    if flags.snapshot:
        from qio.block.snapshot_overlay import append_temp_snapshot

        try:
            root = scheduler.run_sync(append_temp_snapshot(ctx, root, flags))
        except BaseException:
            scheduler.run_sync(root.close())
            raise
    if flags.copy_on_read:
        root.copy_on_read = True
    blk = BlockBackend(root, ctx, req.writethrough, req.name)
    if flags.read_write and blk.read_only_node() is not None:
        # A read-write backend needs WRITE on the whole chain (options can make a node
        # read-only: read-only=on, file.read-only=on).
        scheduler.run_sync(root.close())
        raise OpenError("Block node is read-only")
    blk.write_permission = flags.read_write
    return blk
