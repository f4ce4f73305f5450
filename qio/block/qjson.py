"""QEMU's JSON reader, for ``json:`` filenames.

Python's ``json`` module accepts and rejects different inputs than QEMU and words its errors
differently, and both show in qemu-io's "can't open device" line.  This module follows QEMU
7.2's three stages:

* a byte-level lexer (a table-driven state machine in QEMU): strings in double *or single*
  quotes, integers/floats in JSON's grammar, ``[a-z]+`` keywords (rejected later by the parser
  unless true/false/null); a character that cannot continue a token makes an error token of
  everything read so far, after which characters are skipped up to the next structural
  character;
* a streamer that cuts the token stream into top-level values at bracket balance, turning an
  error token into ``JSON parse error, stray '...'``;
* a recursive-descent parser with QEMU's messages (``premature EOI``, ``expecting value``,
  ``key is not a string in object``, ``missing : in object pair``, ``expected separator in
  dict``/``list``, ``duplicate key``, ``invalid keyword 'x'``, string escape and UTF-8 errors).

``parse`` returns the single value, or raises ``JSONError`` with QEMU's message
(``Expecting a JSON value``, ``Expecting at most one JSON value`` or the first parse error).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INT64_MIN, INT64_MAX, UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
MAX_NESTING = 1 << 10  # open brackets and braces at once


class JSONError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# Token kinds
LCURLY, RCURLY, LSQUARE, RSQUARE, COLON, COMMA = "{", "}", "[", "]", ":", ","
INTEGER, FLOAT, KEYWORD, STRING, ERROR = "int", "float", "keyword", "string", "error"
STRUCTURAL = {ord(c): c for c in "{}[]:,"}
WHITESPACE = b" \t\r\n"


@dataclass(frozen=True)
class Token:
    kind: str
    text: bytes


def _is_digit(b: int) -> bool:
    return 0x30 <= b <= 0x39


def lex(data: bytes) -> list[Token]:
    """Tokens of ``data``; error tokens carry the text that could not form a token."""
    tokens: list[Token] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b in WHITESPACE:
            i += 1
            continue
        if b in STRUCTURAL:
            tokens.append(Token(STRUCTURAL[b], data[i : i + 1]))
            i += 1
            continue
        start = i
        if b in (0x22, 0x27):  # " or '
            end, ok = _lex_string(data, i)
        elif b == 0x2D or _is_digit(b):
            end, ok, kind = _lex_number(data, i)
            if ok:
                tokens.append(Token(kind, data[start:end]))
                i = end
                continue
        elif 0x61 <= b <= 0x7A:  # a-z
            end = i
            while end < n and 0x61 <= data[end] <= 0x7A:
                end += 1
            tokens.append(Token(KEYWORD, data[start:end]))
            i = end
            continue
        else:
            end, ok = i + 1, False
        if ok:
            tokens.append(Token(STRING, data[start:end]))
            i = end
            continue
        tokens.append(Token(ERROR, data[start:end]))
        i = _recover(data, end)
    return tokens


def _lex_string(data: bytes, i: int) -> tuple[int, bool]:
    """(end, ok): ok when the closing quote was found; else end includes the offending byte
    (or stops at the end of input)."""
    quote = data[i]
    i += 1
    n = len(data)
    while i < n:
        b = data[i]
        if b < 0x20 or b > 0xFD:
            return i + 1, False
        if b == 0x5C:  # backslash: any non-control byte may follow
            i += 1
            if i >= n:
                return i, False
            if data[i] < 0x20 or data[i] > 0xFD:
                return i + 1, False
        elif b == quote:
            return i + 1, True
        i += 1
    return i, False


# The number automaton of QEMU's lexer: state -> (byte class -> next state).  A state with a
# token kind ends the number at any other byte; a state without one makes an error token of
# the bytes read plus the offending byte.
_NUMBER_STATES: dict[str, dict[str, str]] = {
    "sign": {"0": "zero", "digit": "digits"},
    "zero": {".": "mantissa", "0": "error", "digit": "error"},
    "digits": {"0": "digits", "digit": "digits", "e": "exp_e", ".": "mantissa"},
    "mantissa": {"0": "mantissa_digits", "digit": "mantissa_digits"},
    "mantissa_digits": {"0": "mantissa_digits", "digit": "mantissa_digits", "e": "exp_e"},
    "exp_e": {"sign": "exp_sign", "0": "exp_digits", "digit": "exp_digits"},
    "exp_sign": {"0": "exp_digits", "digit": "exp_digits"},
    "exp_digits": {"0": "exp_digits", "digit": "exp_digits"},
}
_NUMBER_KIND = {"zero": INTEGER, "digits": INTEGER, "mantissa_digits": FLOAT, "exp_digits": FLOAT}


def _byte_class(b: int) -> str:
    if b == 0x30:
        return "0"
    if _is_digit(b):
        return "digit"
    if b in b"eE":
        return "e"
    if b in b"+-":
        return "sign"
    if b == 0x2E:
        return "."
    return "other"


def _lex_number(data: bytes, i: int) -> tuple[int, bool, str]:
    """(end, ok, kind) of the number starting at ``i`` (a digit or '-')."""
    b = data[i]
    state = "sign" if b == 0x2D else "zero" if b == 0x30 else "digits"
    j = i + 1
    while j < len(data):
        nxt = _NUMBER_STATES[state].get(_byte_class(data[j]))
        if nxt is None:
            kind = _NUMBER_KIND.get(state)
            if kind is not None:
                return j, True, kind
            return j + 1, False, ERROR
        if nxt == "error":
            return j + 1, False, ERROR
        state = nxt
        j += 1
    kind = _NUMBER_KIND.get(state)
    return j, kind is not None, kind or ERROR


def _recover(data: bytes, i: int) -> int:
    """After an error token, skip to a structural character, a control character other
    than tab, or an impossible UTF-8 byte (0xFE/0xFF)."""
    n = len(data)
    while i < n:
        b = data[i]
        if b in STRUCTURAL or (b < 0x20 and b != 0x09) or b >= 0xFE:
            return i
        i += 1
    return i


# -- streamer and parser -------------------------------------------------------------------------
def parse(data: bytes) -> Any:
    """The one JSON value in ``data`` (QEMU's qobject_from_json)."""
    result: list[Any] = []
    error: list[str] = []

    def emit(value: Any, err: str | None) -> None:
        if result:
            result.clear()
            error.append("Expecting at most one JSON value")
        if error:
            return
        if err is not None:
            error.append(err)
        else:
            result.append(value)

    pending: list[Token] = []
    braces = brackets = 0
    for token in lex(data):
        if token.kind == ERROR:
            pending.clear()
            braces = brackets = 0
            emit(None, f"JSON parse error, stray '{_text(token.text)}'")
            continue
        braces += {LCURLY: 1, RCURLY: -1}.get(token.kind, 0)
        brackets += {LSQUARE: 1, RSQUARE: -1}.get(token.kind, 0)
        if braces + brackets > MAX_NESTING:
            pending.clear()
            braces = brackets = 0
            emit(None, "JSON nesting depth limit exceeded")
            continue
        pending.append(token)
        if (braces > 0 or brackets > 0) and braces >= 0 and brackets >= 0:
            continue
        _emit_parsed(pending, emit)
        pending = []
        braces = brackets = 0
    if pending:
        _emit_parsed(pending, emit)
    if error:
        raise JSONError(error[0])
    if not result:
        raise JSONError("Expecting a JSON value")
    return result[0]


def _emit_parsed(tokens: list[Token], emit: Callable[[Any, str | None], None]) -> None:
    parser = _Parser(tokens)
    # Nesting is limited to MAX_NESTING levels, two parser frames each.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 3 * MAX_NESTING + 200))
    try:
        value = parser.value()
    finally:
        sys.setrecursionlimit(limit)
    if parser.error is not None:
        emit(None, f"JSON parse error, {parser.error}")
    else:
        emit(value, None)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _Parser:
    """Recursive descent over one top-level value's tokens; the first error sticks."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.error: str | None = None

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def pop(self) -> Token | None:
        token = self.peek()
        if token is not None:
            self.pos += 1
        return token

    def value(self) -> Any:
        token = self.peek()
        if token is None:
            self.fail("premature EOI")
            return None
        if token.kind == LCURLY:
            return self.object()
        if token.kind == LSQUARE:
            return self.array()
        self.pop()
        if token.kind == STRING:
            return self.string(token)
        if token.kind == INTEGER:
            return _integer(token.text)
        if token.kind == FLOAT:
            return float(token.text)
        if token.kind == KEYWORD:
            word = _text(token.text)
            if word in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[word]
            self.fail(f"invalid keyword '{word}'")
            return None
        self.fail("expecting value")
        return None

    def object(self) -> dict[str, Any] | None:
        self.pop()
        result: dict[str, Any] = {}
        first = self.peek()
        if first is None:
            self.fail("premature EOI")
            return None
        if first.kind == RCURLY:
            self.pop()
            return result
        if not self.pair(result):
            return None
        while True:
            token = self.pop()
            if token is None:
                self.fail("premature EOI")
                return None
            if token.kind == RCURLY:
                return result
            if token.kind != COMMA:
                self.fail("expected separator in dict")
                return None
            if not self.pair(result):
                return None

    def pair(self, into: dict[str, Any]) -> bool:
        if self.peek() is None:
            self.fail("premature EOI")
            return False
        first = self.peek()
        key = self.value()
        if self.error is not None:
            return False
        if first is None or first.kind != STRING or not isinstance(key, str):
            self.fail("key is not a string in object")
            return False
        token = self.pop()
        if token is None:
            self.fail("premature EOI")
            return False
        if token.kind != COLON:
            self.fail("missing : in object pair")
            return False
        value = self.value()
        if self.error is not None:
            return False
        if key in into:
            self.fail("duplicate key")
            return False
        into[key] = value
        return True

    def array(self) -> list[Any] | None:
        self.pop()
        result: list[Any] = []
        token = self.peek()
        if token is None:
            self.fail("premature EOI")
            return None
        if token.kind == RSQUARE:
            self.pop()
            return result
        while True:
            item = self.value()
            if self.error is not None:
                return None
            result.append(item)
            token = self.pop()
            if token is None:
                self.fail("premature EOI")
                return None
            if token.kind == RSQUARE:
                return result
            if token.kind != COMMA:
                self.fail("expected separator in list")
                return None

    def string(self, token: Token) -> str | None:
        raw = token.text
        quote = raw[0]
        out = bytearray()
        i = 1
        while raw[i] != quote:
            b = raw[i]
            if b == 0x5C:
                begin = i
                i += 1
                esc = raw[i]
                i += 1
                simple = {
                    0x22: b'"',
                    0x27: b"'",
                    0x5C: b"\\",
                    0x2F: b"/",
                    0x62: b"\b",
                    0x66: b"\f",
                    0x6E: b"\n",
                    0x72: b"\r",
                    0x74: b"\t",
                }
                if esc in simple:
                    out += simple[esc]
                    continue
                if esc != 0x75:  # u
                    self.fail("invalid escape sequence in string")
                    return None
                cp = _hex4(raw, i)
                i += 4
                if 0xD800 <= cp <= 0xDBFF and raw[i : i + 2] == b"\\u":
                    trailing = _hex4(raw, i + 2)
                    if 0xDC00 <= trailing <= 0xDFFF:
                        cp = 0x10000 + ((cp & 0x3FF) << 10) + (trailing & 0x3FF)
                        i += 6
                    else:
                        cp = -1
                encoded = _mod_utf8_encode(cp)
                if encoded is None:
                    shown = _text(raw[begin : min(i, len(raw))])
                    self.fail(f"{shown} is not a valid Unicode character")
                    return None
                out += encoded
                continue
            cp, length = _mod_utf8_decode(raw, i)
            if cp < 0:
                self.fail("invalid UTF-8 sequence in string")
                return None
            out += raw[i : i + length]
            i += length
        # Valid modified UTF-8; only an encoded NUL (C0 80) is not plain UTF-8.
        return out.decode("utf-8", "surrogateescape")


def _integer(text: bytes) -> int | float:
    value = int(text)
    if INT64_MIN <= value <= UINT64_MAX:
        return value
    return float(text)


def _hex4(raw: bytes, i: int) -> int:
    digits = raw[i : i + 4]
    if len(digits) < 4 or any(chr(d) not in "0123456789abcdefABCDEF" for d in digits):
        return -1
    return int(digits, 16)


def _mod_utf8_encode(cp: int) -> bytes | None:
    """QEMU's mod_utf8_encode: U+0000 as C0 80; surrogates and non-characters refused."""
    if cp < 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF or _noncharacter(cp):
        return None
    if cp == 0:
        return b"\xc0\x80"
    return chr(cp).encode("utf-8")


def _noncharacter(cp: int) -> bool:
    return 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE


def _mod_utf8_decode(raw: bytes, i: int) -> tuple[int, int]:
    """QEMU's mod_utf8_codepoint on at most 6 bytes: (code point or -1, length consumed)."""
    b = raw[i]
    if b < 0x80:
        return (b if b else -1), 1
    if b < 0xC0 or b > 0xF7:
        return -1, 1
    length = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
    cp = b & (0x7F >> length)
    for k in range(1, length):
        if i + k >= len(raw) or raw[i + k] & 0xC0 != 0x80:
            return -1, k
        cp = (cp << 6) | (raw[i + k] & 0x3F)
    overlong = cp < (0x80, 0x800, 0x10000)[length - 2] and not (length == 2 and cp == 0)
    if overlong or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF or _noncharacter(cp):
        return -1, length
    return cp, length


# -- writing ---------------------------------------------------------------------------------
def to_json_pretty(value: Any) -> str:
    """QEMU's qobject_to_json_pretty: four spaces per level, ``"key": value``.

    A ``dict`` is a QDict: its keys come out in QDict iteration order (hash buckets, see
    qio.block.options.qdict_order), whatever order they were inserted in.  A list of
    ``(key, value)`` pairs is an object whose order is already decided by the caller.  An
    empty object or array still spans two lines, as in QEMU.
    """
    out: list[str] = []
    _write(out, value, 0)
    return "".join(out)


def _is_pairs(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)
    )


def _write(out: list[str], value: Any, level: int) -> None:
    from qio.block.options import qdict_order

    if isinstance(value, dict) or _is_pairs(value):
        if isinstance(value, dict):
            items = [(k, value[k]) for k in qdict_order(list(value))]
        else:
            items = list(value)
        out.append("{")
        for i, (key, item) in enumerate(items):
            out.append(("," if i else "") + "\n" + " " * (4 * (level + 1)))
            out.append(_json_string(key) + ": ")
            _write(out, item, level + 1)
        out.append("\n" + " " * (4 * level) + "}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            out.append(("," if i else "") + "\n" + " " * (4 * (level + 1)))
            _write(out, item, level + 1)
        out.append("\n" + " " * (4 * level) + "]")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(repr(value))
    else:
        out.append(_json_string(str(value)))


_ESCAPES = {
    0x22: '\\"',
    0x5C: "\\\\",
    0x08: "\\b",
    0x0C: "\\f",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
}


def _json_string(text: str) -> str:
    """QEMU's string output: ASCII printable as is, everything else as \\uXXXX (invalid
    UTF-8 as U+FFFD, beyond the BMP as a surrogate pair)."""
    raw = text.encode("utf-8", "surrogateescape")
    parts = ['"']
    i = 0
    while i < len(raw):
        cp, n = _mod_utf8_decode(raw, i)
        i += n
        if cp in _ESCAPES:
            parts.append(_ESCAPES[cp])
            continue
        if cp < 0:
            cp = 0xFFFD
        if cp > 0xFFFF:
            cp -= 0x10000
            parts.append("\\u%04X\\u%04X" % (0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)))
        elif cp < 0x20 or cp >= 0x7F:
            parts.append("\\u%04X" % cp)
        else:
            parts.append(chr(cp))
    parts.append('"')
    return "".join(parts)
