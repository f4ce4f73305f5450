"""The ``-v`` hexdump in colour: qemu-io's columns, with escape codes around the cells.

Strip the escape codes and the text is exactly qemu-io's dump (see ``qio.render.hexdump``):
same offsets, same spacing, same character column, short last line not padded.  Colour only
separates kinds of bytes: offsets and zero bytes dimmed, the bytes qemu-io prints as
themselves (``0-9A-Za-z``) in one colour, other printable ASCII (shown as ``.`` by qemu-io) in
another, control and high bytes plain.

A multi-GiB ``read -v`` is millions of lines, so rows are assembled from per-byte cell strings
prepared once (the escape codes come from rich, so the colour system and NO_COLOR are
respected); a rich ``Text`` per line would be far too slow.

Repeated rows are never collapsed unless asked for (``QIO_DUMP_COLLAPSE=1``): then a run of
identical full rows prints its first row, a ``*`` line counting the rows left out, and its
last row, so every offset shown is still exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qio.render.hexdump import ASCII_TABLE

# style names (rich syntax)
STYLE_OFFSET = "dim"
STYLE_ZERO = "dim"
STYLE_ALNUM = "green"  # shown as itself by qemu-io
STYLE_PUNCT = "cyan"  # printable ASCII that qemu-io shows as '.'
STYLE_OTHER = ""  # control bytes and bytes >= 0x80
STYLE_REPEAT = "dim italic"

ROW = 16
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

StyleCodes = Callable[[str], tuple[str, str]]  # style -> (escape before, escape after)


def byte_style(b: int) -> str:
    if b == 0:
        return STYLE_ZERO
    if b in _ALNUM:
        return STYLE_ALNUM
    if 0x20 <= b < 0x7F:
        return STYLE_PUNCT
    return STYLE_OTHER


@dataclass
class _Pending:
    """A run of identical rows being left out (collapse mode)."""

    row: bytes
    last_offset: int  # offset of the last identical row seen
    skipped: int


class ColorDump:
    """Turns dump requests into coloured text; keeps collapse state between requests."""

    def __init__(self, codes: StyleCodes, collapse: bool = False) -> None:
        self.collapse = collapse
        self._off_pre, self._off_post = codes(STYLE_OFFSET)
        self._rep_pre, self._rep_post = codes(STYLE_REPEAT)
        # Every cell carries its own escape codes: rows are then assembled by C-level
        # joins (about 3 us a row) instead of a Python loop over runs of equal colour.
        self._hex = []
        self._chr = []
        for b in range(256):
            pre, post = codes(byte_style(b))
            self._hex.append(f"{pre}{b:02x}{post} ")
            self._chr.append(f"{pre}{chr(ASCII_TABLE[b])}{post}")
        zero_pre, zero_post = codes(STYLE_ZERO)
        # A row of zeros is the commonest row of all: one span each side, prepared once.
        self._zero_body = f"{zero_pre}{'00 ' * ROW}{zero_post} {zero_pre}{'.' * ROW}{zero_post}\n"
        self._zero_row = bytes(ROW)
        self._pending: _Pending | None = None
        self._last: bytes | None = None  # last full row printed (collapse mode)
        self._next_offset: int | None = None  # where a continuing dump would start

    def row(self, offset: int, data: bytes) -> str:
        head = f"{self._off_pre}{offset:08x}:{self._off_post}  "
        if data == self._zero_row:
            return head + self._zero_body
        return (
            head
            + "".join(map(self._hex.__getitem__, data))
            + " "
            + "".join(map(self._chr.__getitem__, data))
            + "\n"
        )

    def dump(self, data: bytes | bytearray | memoryview, offset: int) -> str:
        raw = bytes(data)
        if not self.collapse:
            row = self.row
            return "".join([row(offset + i, raw[i : i + ROW]) for i in range(0, len(raw), ROW)])
        parts: list[str] = []
        if self._next_offset != offset:
            parts.append(self.finish())
        for i in range(0, len(raw), ROW):
            chunk = raw[i : i + ROW]
            at = offset + i
            if len(chunk) == ROW and chunk == self._last:
                if self._pending is None:
                    self._pending = _Pending(chunk, at, 1)
                else:
                    self._pending.last_offset = at
                    self._pending.skipped += 1
                continue
            parts.append(self._close_run())
            parts.append(self.row(at, chunk))
            self._last = chunk if len(chunk) == ROW else None
        self._next_offset = offset + len(raw)
        return "".join(parts)

    def _close_run(self) -> str:
        """Text for a run of left-out rows: the ``*`` line and the run's last row."""
        pending = self._pending
        if pending is None:
            return ""
        self._pending = None
        text = ""
        if pending.skipped > 1:
            n = pending.skipped - 1
            text = (
                f"{self._rep_pre}*  ({n} identical line{'s' if n != 1 else ''}){self._rep_post}\n"
            )
        return text + self.row(pending.last_offset, pending.row)

    def finish(self) -> str:
        """End of a dump: whatever a collapsed run still holds back."""
        text = self._close_run()
        self._last = None
        self._next_offset = None
        return text
