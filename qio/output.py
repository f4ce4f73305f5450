"""Standard output and error with C stdio's buffering.

qemu-io writes through C stdio: stdout is line buffered on a terminal and fully buffered (in
4096-byte blocks) on a pipe or file; stderr is unbuffered.  The difference is visible: ``abort``
loses whatever stdout still held, ``sigraise`` flushes first.  These streams reproduce that.
"""

from __future__ import annotations

import os

BLOCK = 4096


class Stream:
    def __init__(self, fd: int, buffered: bool) -> None:
        self.fd = fd
        try:
            self.isatty = os.isatty(fd)
        except OSError:
            self.isatty = False
        self.buffered = buffered and not self.isatty
        self.line_buffered = buffered and self.isatty
        self._pending: list[bytes] = []
        self._size = 0
        self.broken = False

    def write(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8", "surrogateescape"))

    def write_bytes(self, data: bytes) -> None:
        if not data:
            return
        if not self.buffered and not self.line_buffered:
            self._raw_write(data)
            return
        self._pending.append(data)
        self._size += len(data)
        if self.line_buffered:
            if b"\n" in data:
                self.flush()
        elif self._size >= BLOCK:
            self._flush_blocks()

    def _flush_blocks(self) -> None:
        blob = b"".join(self._pending)
        cut = len(blob) - len(blob) % BLOCK
        self._raw_write(blob[:cut])
        rest = blob[cut:]
        self._pending = [rest] if rest else []
        self._size = len(rest)

    def flush(self) -> None:
        if self._pending:
            blob = b"".join(self._pending)
            self._pending = []
            self._size = 0
            self._raw_write(blob)

    def discard(self) -> None:
        """Drop buffered output, as a process killed by abort() does."""
        self._pending = []
        self._size = 0

    def _raw_write(self, data: bytes) -> None:
        if self.broken:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BrokenPipeError:
                self.broken = True
                return
            except InterruptedError:
                continue
            view = view[n:]


class Console:
    """The two streams a command writes to."""

    def __init__(self, out: Stream | None = None, err: Stream | None = None) -> None:
        self.out = out or Stream(1, buffered=True)
        self.err = err or Stream(2, buffered=False)

    def flush(self) -> None:
        self.out.flush()
        self.err.flush()
