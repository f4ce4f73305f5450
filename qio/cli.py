"""``qio``: qemu-io's command line.

``qio [OPTIONS]... [-c STRING]... [file]`` parses options exactly as qemu-io does (GNU
getopt_long, the same messages and exit statuses), opens the image, then runs the ``-c``
commands in order, or reads commands from standard input: the interactive shell on a
terminal, a plain line loop otherwise.
"""

from __future__ import annotations

import os
import signal
import sys

from qio import __version__
from qio.block.coroutine import FatalError, scheduler
from qio.block.node import OpenFlags
from qio.block.open import AIO_MODES, CACHE_MODES, DISCARD_MODES
from qio.block.options import Options, parse_option_string
from qio.getopt import Getopt, GetoptError, LongOption
from qio.objects import ObjectError, ObjectHelp, ObjectRegistry
from qio.output import Console
from qio.render.plain import PlainRenderer
from qio.session import OpenRequest, QuitProgram, Session
from qio.trace_events import TRACE_EVENTS
from qio.trace_option import TraceOptionError, open_log_file, parse_trace_option

PROGRAM = "qio"
PIPE_PROMPT = "qemu-io> "  # what qemu-io prints when reading piped commands (scripts filter it)
MAX_LINE = 1023  # qemu-io reads piped lines with fgets() into a 1024-byte buffer

SHORT_OPTS = "hVc:d:f:rsnCmki:t:T:U"
LONG_OPTS = (
    LongOption("help", False, "h"),
    LongOption("version", False, "V"),
    LongOption("cmd", True, "c"),
    LongOption("format", True, "f"),
    LongOption("read-only", False, "r"),
    LongOption("snapshot", False, "s"),
    LongOption("nocache", False, "n"),
    LongOption("copy-on-read", False, "C"),
    LongOption("misalign", False, "m"),
    LongOption("native-aio", False, "k"),
    LongOption("aio", True, "i"),
    LongOption("discard", True, "d"),
    LongOption("cache", True, "t"),
    LongOption("trace", True, "T"),
    LongOption("object", True, "object"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("force-share", False, "U"),
    LongOption("color", True, "color", extension=True),
)

USAGE = """Usage: {prog} [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
      --color=WHEN     colour terminal output: auto (default), always, never
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See '{prog} -c help' for information on available commands.

qio is a Python re-implementation of QEMU's qemu-io; see its README and docs/.
"""


def main(argv: list[str] | None = None) -> int:
    args = [PROGRAM] + (sys.argv[1:] if argv is None else argv)
    try:
        status = run(args)
    except KeyboardInterrupt:
        status = 130
    except Exception as exc:  # a bug in qio: one clear line, the traceback only on request
        if os.environ.get("QIO_DEBUG"):
            raise
        sys.stdout.flush()
        sys.stderr.write(
            f"{PROGRAM}: internal error: {type(exc).__name__}: {exc} (set QIO_DEBUG=1 for details)\n"
        )
        status = 1
    return status


def run(args: list[str]) -> int:
    console = Console()
    color = "auto"
    commands: list[str] = []
    fmt: str | None = None
    flags = OpenFlags()
    writethrough = True
    image_opts = False
    force_share = False
    objects = ObjectRegistry()
    native_aio = False
    trace_log: str | None = None

    def die(message: str) -> int:
        console.err.write(f"{PROGRAM}: {message}\n")
        console.flush()
        return 1

    getopt = Getopt(args, SHORT_OPTS, LONG_OPTS)
    for item in getopt:
        if isinstance(item, GetoptError):
            console.err.write(f"{PROGRAM}: {item.message}\n")
            console.out.write(USAGE.format(prog=PROGRAM))
            console.flush()
            return 1
        opt, arg = item
        arg = arg or ""
        if opt == "s":
            flags.snapshot = True
        elif opt == "n":
            flags.direct = True
            writethrough = False
        elif opt == "C":
            flags.copy_on_read = True
        elif opt == "d":
            if arg not in DISCARD_MODES:
                return die(f"Invalid discard option: {arg}")
            flags.unmap = DISCARD_MODES[arg]
        elif opt == "f":
            fmt = arg
        elif opt == "c":
            commands.append(arg)
        elif opt == "r":
            flags.read_write = False
        elif opt == "m":
            pass  # misaligned buffers only matter for O_DIRECT in C
        elif opt == "k":
            native_aio = True
        elif opt == "i":
            if arg not in AIO_MODES:
                return die(f"Invalid aio option: {arg}")
            flags.aio = arg
        elif opt == "t":
            mode = CACHE_MODES.get(arg)
            if mode is None:
                return die(f"Invalid cache option: {arg}")
            flags.direct, flags.no_flush, writethrough = mode
        elif opt == "T":
            try:
                trace = parse_trace_option(arg)
            except TraceOptionError as exc:
                for line in exc.warnings:
                    console.err.write(f"{PROGRAM}{line}\n")
                console.err.write(f"{PROGRAM}{exc.message}\n")
                console.flush()
                return 1
            for line in trace.warnings:
                console.err.write(f"{PROGRAM}{line}\n")
            if trace.list_events:
                console.out.write("".join(f"{name}\n" for name in TRACE_EVENTS))
                console.flush()
                return 0
            trace_log = trace.log_file  # the last -T decides, as in qemu-io
        elif opt == "V":
            console.out.write(
                f"{PROGRAM} version {__version__} (a Python qemu-io, compatible with qemu-io 7.2)\n"
                "Copyright (c) the qio developers; QEMU is (c) Fabrice Bellard and the QEMU Project developers\n"
            )
            console.flush()
            return 0
        elif opt == "h":
            console.out.write(USAGE.format(prog=PROGRAM))
            console.flush()
            return 0
        elif opt == "U":
            force_share = True
        elif opt == "object":
            # Only encrypted formats would use an object (qio refuses them); still, the
            # option is checked as qemu-io checks it.
            try:
                objects.add(arg)
            except ObjectHelp as exc:
                console.out.write(exc.text)
                console.flush()
                return 0
            except ObjectError as exc:
                return die(str(exc))
        elif opt == "image-opts":
            image_opts = True
        elif opt == "color":
            if arg not in ("auto", "always", "never"):
                return die(f"Invalid color option: {arg}")
            color = arg
    operands = getopt.operands
    if len(operands) > 1:
        console.out.write(USAGE.format(prog=PROGRAM))
        console.flush()
        return 1
    if fmt is not None and image_opts:
        return die("--image-opts and -f are mutually exclusive")
    if trace_log is not None:
        try:
            open_log_file(trace_log)
        except TraceOptionError as exc:
            console.err.write(f"{PROGRAM}{exc.message}\n")
            console.flush()
            return 1
    if native_aio:
        flags.aio = "native"

    interactive_shell = not commands and _stdin_is_tty()
    renderer = _make_renderer(console, color)
    session = Session(renderer, PROGRAM, image_opts)
    if not interactive_shell:
        # Like qemu-io, die of SIGINT/SIGTERM instead of unwinding.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    flags.force_share = force_share

    try:
        if operands:
            if image_opts:
                warnings: list[str] = []
                options = parse_option_string(operands[0], warnings)
                for w in warnings:
                    session.warn_report(w)
                request = OpenRequest(None, options, flags, writethrough, force_share)
            else:
                options = Options()
                if fmt is not None:
                    options.set("driver", fmt)
                request = OpenRequest(operands[0], options, flags, writethrough, force_share)
            if not session.openfile(request):
                console.flush()
                return 1
        if commands:
            for line in commands:
                if session.quit:
                    break
                session.run_line(line)
        elif interactive_shell:
            from qio.shell import run_shell

            run_shell(session)
        else:
            _piped_loop(session, console)
        scheduler.drain()
        session.close_image()
    except FatalError as fatal:
        # Raised outside any command: by a request completing at exit or between piped lines.
        try:
            session.fatal(fatal)
        except QuitProgram as quit_:
            return quit_.status
    except QuitProgram as quit_:
        console.flush()
        return quit_.status
    finally:
        console.flush()
    return 1 if session.last_error < 0 else 0


def _stdin_is_tty() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


def _make_renderer(console: Console, color: str) -> PlainRenderer:
    use_rich = color == "always" or (
        color == "auto" and console.out.isatty and not os.environ.get("NO_COLOR")
    )
    if use_rich:
        from qio.render.terminal import TerminalRenderer

        return TerminalRenderer(console)
    return PlainRenderer(console)


def _piped_loop(session: Session, console: Console) -> None:
    """qemu-io's command_loop without a terminal: prompt, read a line, run it."""
    stdin = sys.stdin.buffer
    while not session.quit:
        console.out.write(PIPE_PROMPT)
        console.out.flush()
        scheduler.poll()
        raw = stdin.readline(MAX_LINE)
        if not raw:
            break
        # fgets() fills a C string: a NUL byte ends the line as far as qemu-io can see.
        line = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if line.endswith("\n"):
            line = line[:-1]
        session.run_line(line)
