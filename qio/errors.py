"""Error types shared by the block layer and the commands.

Block requests fail with an errno, as in QEMU; qemu-io prints ``strerror(errno)``, which is
exactly what ``os.strerror`` returns on the same C library.  Opening a node fails with a message
(QEMU's ``Error`` text), which qemu-io prints after ``can't open device NAME: ``.
"""

from __future__ import annotations

import errno
import os


class BlockError(Exception):
    """A failed block request; ``errno`` is what the command reports."""

    def __init__(self, err: int, detail: str | None = None) -> None:
        super().__init__(detail or os.strerror(err))
        self.errno = err
        self.detail = detail

    @property
    def strerror(self) -> str:
        return os.strerror(self.errno)


class OpenError(Exception):
    """Opening (or reconfiguring) a node failed; ``message`` is QEMU's error text."""

    def __init__(self, message: str, err: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.message = message
        self.errno = err


class OptionError(OpenError):
    """A malformed option string or value (reported before anything is opened)."""


def eio() -> BlockError:
    return BlockError(errno.EIO)
