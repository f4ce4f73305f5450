"""Breakpoint commands for blkdebug: break, remove_break, resume, wait_break.

They act on the first blkdebug node down the root's primary chain; without one they fail
with "Operation not supported", as in qemu-io.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

from qio.block.coroutine import scheduler
from qio.commands.table import command
from qio.session import Session


class Breakpoints(Protocol):
    def set_breakpoint(self, event: str, tag: str) -> int: ...
    def remove_breakpoint(self, tag: str) -> int: ...
    def resume(self, tag: str) -> int: ...
    def is_suspended(self, tag: str) -> bool: ...


def _target(s: Session) -> Breakpoints | None:
    node = s.require_blk().root.find_debug_target()
    return node  # type: ignore[return-value]


@command(
    name="break",
    argmin=2,
    argmax=2,
    args="event tag",
    oneline="sets a breakpoint on event and tags the stopped request as tag",
)
def break_f(s: Session, argv: list[str]) -> int:
    target = _target(s)
    ret = -errno.ENOTSUP if target is None else target.set_breakpoint(argv[1], argv[2])
    if ret < 0:
        s.r.message(f"Could not set breakpoint: {os.strerror(-ret)}")
    return ret


@command(name="remove_break", argmin=1, argmax=1, args="tag", oneline="remove a breakpoint by tag")
def remove_break_f(s: Session, argv: list[str]) -> int:
    target = _target(s)
    ret = -errno.ENOTSUP if target is None else target.remove_breakpoint(argv[1])
    scheduler.run_ready()
    if ret < 0:
        s.r.message(f"Could not remove breakpoint {argv[1]}: {os.strerror(-ret)}")
    return ret


@command(name="resume", argmin=1, argmax=1, args="tag", oneline="resumes the request tagged as tag")
def resume_f(s: Session, argv: list[str]) -> int:
    target = _target(s)
    ret = -errno.ENOTSUP if target is None else target.resume(argv[1])
    scheduler.run_ready()
    if ret < 0:
        s.r.message(f"Could not resume request: {os.strerror(-ret)}")
    return ret


@command(
    name="wait_break",
    argmin=1,
    argmax=1,
    args="tag",
    oneline="waits for the suspension of a request",
)
def wait_break_f(s: Session, argv: list[str]) -> int:
    target = _target(s)
    tag = argv[1]
    if target is not None and scheduler.run_until(lambda: target.is_suspended(tag)):
        return 0
    # qemu-io would poll forever here: nothing in flight can reach the breakpoint any more.
    s.error_report(f"no request is suspended at '{argv[1]}' and none can be any more")
    return -errno.EDEADLK
