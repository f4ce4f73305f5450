"""qemu-io's ``-v`` hexdump, byte for byte.

``OOOOOOOO:  xx xx ... xx  ASCII``: absolute offsets (at least eight lower-case hex digits),
every byte followed by one space, one more space, then a character column where only
``0-9A-Za-z`` print as themselves.  A short last line is not padded.  Lines are produced by
C-level iteration (``map``/``zip`` over slices) so a large dump costs no Python bytecode per
line.
"""

from __future__ import annotations

from array import array

_PRINTABLE = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
ASCII_TABLE = bytes(b if b in _PRINTABLE else ord(".") for b in range(256))
_LINE = "%08x:  %s %s\n".__mod__


# Layout of one full line in 8-byte words for the bulk path: offset (1), ":  " (1), hex
# bytes with their spaces (6), " " (1), characters (2), newline (1); NUL padding is deleted
# afterwards (the text never contains NUL).
_TEMPLATE = (
    bytes(8) + b":  " + bytes(5) + bytes(48) + b" " + bytes(7) + bytes(16) + b"\n" + bytes(7)
)
_BULK_MIN_LINES = 256


def _bulk(raw: bytes, offset: int, lines: int) -> bytes:
    """Full lines by strided word copies: no Python-level work per line."""
    out = bytearray(_TEMPLATE) * lines
    words = memoryview(out).cast("Q")
    offsets = array("I", range(offset, offset + lines * 16, 16))
    offsets.byteswap()
    words[0::12] = memoryview(offsets.tobytes().hex().encode()).cast("Q")
    hexes = memoryview(raw.hex(" ").encode() + b" ").cast("Q")
    for j in range(6):
        words[2 + j :: 12] = hexes[j::6]
    chars = memoryview(raw.translate(ASCII_TABLE)).cast("Q")
    words[9::12] = chars[0::2]
    words[10::12] = chars[1::2]
    words.release()
    return out.translate(None, b"\0")


def hexdump_bytes(data: bytes | bytearray | memoryview, offset: int) -> bytes:
    """The dump as ASCII bytes (the fast path for large plain-text dumps)."""
    n = len(data)
    lines = n // 16
    if lines >= _BULK_MIN_LINES and offset + lines * 16 <= 1 << 32:
        head = _bulk(bytes(data[: lines * 16]), offset, lines)
        return head + hexdump(data[lines * 16 :], offset + lines * 16).encode("ascii")
    return hexdump(data, offset).encode("ascii")


def hexdump(data: bytes | bytearray | memoryview, offset: int) -> str:
    """The dump of ``data`` read at image offset ``offset``."""
    n = len(data)
    if n == 0:
        return ""
    raw = bytes(data)
    full = n - n % 16
    parts: list[str] = []
    if full:
        hexes = raw[:full].hex(" ") + " "
        chars = raw[:full].translate(ASCII_TABLE).decode("ascii")
        hex_lines = map(
            hexes.__getitem__, map(slice, range(0, full * 3, 48), range(48, full * 3 + 48, 48))
        )
        char_lines = map(
            chars.__getitem__, map(slice, range(0, full, 16), range(16, full + 16, 16))
        )
        parts.append(
            "".join(
                map(
                    _LINE, zip(range(offset, offset + full, 16), hex_lines, char_lines, strict=True)
                )
            )
        )
    if full < n:
        tail = raw[full:]
        parts.append(
            _LINE((offset + full, tail.hex(" ") + " ", tail.translate(ASCII_TABLE).decode("ascii")))
        )
    return "".join(parts)


def hexdump_lines(data: bytes, offset: int) -> list[tuple[int, bytes]]:
    """(offset, up to 16 bytes) per dump line, for renderers that draw lines themselves."""
    return [(offset + i, data[i : i + 16]) for i in range(0, len(data), 16)]
