"""help, quit, sleep, sigraise, abort."""

from __future__ import annotations

import errno
import os
import signal
import time

from qio.block.coroutine import scheduler
from qio.commands import table
from qio.commands.table import GLOBAL, NOFILE_OK, command
from qio.numbers import strtol_base0
from qio.session import Session

NSIG = 65  # glibc's NSIG on Linux


@command(
    name="help",
    altname="?",
    argmin=0,
    argmax=1,
    flags=GLOBAL,
    args="[command]",
    oneline="help for one or all commands",
)
def help_f(s: Session, argv: list[str]) -> int:
    if len(argv) == 1:
        s.r.help_list(table.all_commands())
        return 0
    cmd = table.find(argv[1])
    if cmd is None:
        s.r.message(f"command {argv[1]} not found")
        return -errno.EINVAL
    s.r.help_command(cmd, argv[1])
    return 0


@command(name="quit", altname="q", argmin=-1, argmax=-1, flags=GLOBAL, oneline="exit the program")
def quit_f(s: Session, argv: list[str]) -> int:
    s.quit = True
    return 0


@command(
    name="sleep",
    argmin=1,
    argmax=1,
    flags=NOFILE_OK,
    oneline="waits for the given value in milliseconds",
)
def sleep_f(s: Session, argv: list[str]) -> int:
    ms = strtol_base0(argv[1])
    if ms is None or ms < 0:
        s.r.message(f"{argv[1]} is not a valid number")
        return -errno.EINVAL
    s.r.flush()
    seconds = sleep_duration_ns(ms, time.time_ns()) / 1e9
    time.sleep(seconds)
    # The event loop runs while qemu-io sleeps: requests in flight complete meanwhile.
    scheduler.advance(seconds * 1e6)
    return 0


def _wrap_int64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def sleep_duration_ns(ms: int, now_ns: int) -> int:
    """How long qemu-io's sleep timer really waits: it arms a host-clock timer at
    ``now + ms * 1000000`` in int64 arithmetic, so huge values wrap into the past and
    expire at once."""
    deadline = _wrap_int64(now_ns + _wrap_int64(ms * 1_000_000))
    return max(0, deadline - now_ns)


SIGRAISE_HELP = (
    "\n raises the given signal\n\n Example:\n 'sigraise 15' - raises SIGTERM\n\n Invokes raise(signal), where"
    ' "signal" is the mandatory integer argument\n given to sigraise.\n\n'
)


@command(
    name="sigraise",
    argmin=1,
    argmax=1,
    flags=NOFILE_OK,
    args="signal",
    oneline="raises a signal",
    help=SIGRAISE_HELP,
)
def sigraise_f(s: Session, argv: list[str]) -> int:
    sig = s.number(argv[1])
    if sig > NSIG:
        s.r.message(f"signal argument '{argv[1]}' is too large to be a valid signal")
        return -errno.EINVAL
    s.r.flush()
    if sig == 0:
        return 0
    try:
        if sig in (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGPIPE,
            signal.SIGHUP,
            signal.SIGUSR1,
            signal.SIGUSR2,
        ):
            current = signal.getsignal(sig)
            if current is not signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    except (OSError, ValueError):
        pass
    return 0


@command(name="abort", flags=NOFILE_OK, oneline="simulate a program crash using abort(3)")
def abort_f(s: Session, argv: list[str]) -> int:
    # abort() does not flush stdio: what stdout still buffers is lost, as in qemu-io.
    s.r.console.out.discard()
    signal.signal(signal.SIGABRT, signal.SIG_DFL)
    os.abort()
