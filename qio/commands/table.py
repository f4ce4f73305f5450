"""The command table: every command declared once.

Each entry carries what qemu-io's ``cmdinfo_t`` carries (name, alias, argument counts,
synopsis, one-line and long help, flags, the write permission it needs) plus its getopt
option string, so help, argument checking, option parsing and shell completion all come from
this one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qio.session import Session

NOFILE_OK = 1  # runs without an open image (open, sleep, sigraise, abort)
GLOBAL = 2  # always runs, not even the argument count is checked specially (help, quit)


@dataclass(frozen=True)
class Command:
    name: str
    func: Callable[[Session, list[str]], int]
    oneline: str
    args: str | None = None
    altname: str | None = None
    argmin: int = 0
    argmax: int = 0  # -1: no maximum
    flags: int = 0
    needs_write: bool = False
    optstring: str = ""
    help: str | None = None  # the extended help block of ``help NAME``
    qio_only: bool = False  # qio's own addition (not in qemu-io)

    def usage_line(self) -> str:
        return (
            f"{self.name} {self.args} -- {self.oneline}"
            if self.args is not None
            else f"{self.name} (null) -- {self.oneline}"
        )

    def help_line(self, as_name: str | None = None) -> str:
        name = as_name or self.name
        if self.args is not None:
            return f"{name} {self.args} -- {self.oneline}"
        return f"{name} -- {self.oneline}"

    def option_letters(self) -> list[str]:
        return [c for c in self.optstring if c != ":"]


_TABLE: dict[str, Command] = {}


def register(cmd: Command) -> Command:
    _TABLE[cmd.name] = cmd
    return cmd


def command(
    **spec: object,
) -> Callable[[Callable[[Session, list[str]], int]], Callable[[Session, list[str]], int]]:
    """Decorator: ``@command(name="read", oneline=..., ...)`` declares a command."""

    def wrap(func: Callable[[Session, list[str]], int]) -> Callable[[Session, list[str]], int]:
        register(Command(func=func, **spec))  # type: ignore[arg-type]
        return func

    return wrap


def all_commands() -> list[Command]:
    _load()
    return [_TABLE[k] for k in sorted(_TABLE)]


def find(name: str) -> Command | None:
    _load()
    cmd = _TABLE.get(name)
    if cmd is not None:
        return cmd
    for c in _TABLE.values():
        if c.altname == name:
            return c
    return None


_loaded = False


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from qio.commands import blkverify_cmds, debug, image, io, misc  # noqa: F401
