"""Number parsing and formatting exactly as qemu-io does it.

qemu-io parses offsets and lengths with QEMU's ``qemu_strtosz`` (decimal, optional 0x hex,
fractions only with a scaling suffix, suffixes B/K/M/G/T/P/E in powers of 1024), pattern bytes
and ``sleep`` arguments with C's ``strtol(s, &end, 0)`` (which means octal after a leading 0),
and prints sizes with its own ``cvtstr`` (three decimals, trimmed at ``.000``).  Every
difference here shows up in a script's output, so these functions follow the C code's rules
rather than Python's.
"""

from __future__ import annotations

import errno
import math
import re
from dataclasses import dataclass

INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
# BDRV_REQUEST_MAX_BYTES: the largest single request qemu-io accepts (2 GiB - 512).
REQUEST_MAX_BYTES = 2147483136

_C_SPACE = " \t\n\v\f\r"
_SUFFIX_SHIFT = {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}


class NumberError(ValueError):
    """A number qemu-io would refuse; ``code`` is the errno it reports (EINVAL or ERANGE)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    def message(self) -> str:
        """qemu-io's ``print_cvtnum_err`` wording (printed on stdout)."""
        if self.code == errno.ERANGE:
            return f"Parsing error: argument too large -- {self.text}"
        return (
            f"Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {self.text}"
        )


@dataclass(frozen=True)
class ParsedSize:
    value: int
    hex_with_suffix: bool  # QEMU 7.2 accepts 0x10k but warns that it is deprecated


def _strtoull(s: str, pos: int, base: int) -> tuple[int, int, bool]:
    """C ``strtoull`` from ``pos``: (value, end position, overflowed).

    Returns end == pos when no digits were found (the caller treats that as EINVAL).
    """
    i = pos
    n = len(s)
    while i < n and s[i] in _C_SPACE:
        i += 1
    negative = False
    if i < n and s[i] in "+-":
        negative = s[i] == "-"
        i += 1
    if (
        base == 16
        and i + 1 < n
        and s[i] == "0"
        and s[i + 1] in "xX"
        and i + 2 < n
        and _digit(s[i + 2], 16) >= 0
    ):
        i += 2
    start = i
    i = _DIGIT_RUN[base].match(s, i).end()  # type: ignore[union-attr]  # always matches
    if i == start:
        return 0, pos, False
    value = int(s[start:i], base)
    overflow = value > UINT64_MAX
    if negative and not overflow:
        value = (-value) & UINT64_MAX
    return value, i, overflow


# The longest run of ASCII digits of a base (what strtoull consumes), found in C by re.
_DIGIT_RUN = {
    8: re.compile(r"[0-7]*"),
    10: re.compile(r"[0-9]*"),
    16: re.compile(r"[0-9a-fA-F]*"),
}


def _digit(ch: str, base: int) -> int:
    if "0" <= ch <= "9":
        d = ord(ch) - 48
    elif "a" <= ch <= "z":
        d = ord(ch) - 87
    elif "A" <= ch <= "Z":
        d = ord(ch) - 55
    else:
        return -1
    return d if d < base else -1


def _fraction(s: str, pos: int) -> tuple[float | None, int]:
    """C ``strtod`` on text starting with '.': (value or None when no digits, end)."""
    i = pos + 1
    n = len(s)
    start = i
    while i < n and s[i].isdigit() and s[i].isascii():
        i += 1
    if i == start:
        return None, pos
    end = i
    # An exponent is consumed by strtod only when digits follow it.
    if i < n and s[i] in "eE":
        j = i + 1
        if j < n and s[j] in "+-":
            j += 1
        k = j
        while k < n and s[k].isdigit() and s[k].isascii():
            k += 1
        if k > j:
            end = k
    return float("0" + s[pos:end]), end


# Plain decimal digits and an optional unit: the shape of nearly every number in a script,
# parsed without the general strtoull/strtod walk.
_PLAIN_SIZE = re.compile(r"([0-9]{1,18})([bBkKmMgGtTpPeE]?)")
_PLAIN_SUFFIX_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(text: str, default_suffix: str = "B") -> ParsedSize:
    """QEMU's ``qemu_strtosz`` (unit 1024): raises NumberError(EINVAL/ERANGE)."""
    plain = _PLAIN_SIZE.fullmatch(text)
    if plain is not None and (plain[2] or default_suffix in "bB"):
        value = int(plain[1]) << _PLAIN_SUFFIX_SHIFT[plain[2].lower()]
        if value <= UINT64_MAX:
            return ParsedSize(value, False)
    return _parse_size_general(text, default_suffix)


def _parse_size_general(text: str, default_suffix: str) -> ParsedSize:
    value, end, overflow = _strtoull(text, 0, 10)
    if end == 0:
        raise NumberError(errno.EINVAL, text)
    if overflow:
        # qemu_strtou64 stops with ERANGE; trailing garbage still turns it into EINVAL.
        raise NumberError(errno.ERANGE if end == len(text) else errno.EINVAL, text)
    if "-" in text[:end]:
        raise NumberError(errno.EINVAL, text)
    hex_input = False
    frac_fixed = 0  # 64.64 fixed-point fraction
    if value == 0 and end < len(text) and text[end] in "xX":
        value, end, overflow = _strtoull(text, 0, 16)
        if end == 0:
            raise NumberError(errno.EINVAL, text)
        if overflow:
            raise NumberError(errno.ERANGE if end == len(text) else errno.EINVAL, text)
        if end < len(text) and text[end] == ".":
            raise NumberError(errno.EINVAL, text)
        hex_input = True
    elif end < len(text) and text[end] == ".":
        fraction, fend = _fraction(text, end)
        if fraction is None:
            end += 1  # "1.k" and "1." are accepted: the dot alone is skipped
        elif "e" in text[end:fend].lower():
            raise NumberError(errno.EINVAL, text)
        else:
            end = fend
            # C's (uint64_t)(fraction * 0x1p64): a fraction that rounded up to 1.0 (as
            # ".99999999999999999999" does) overflows, and on x86-64 that conversion yields 0.
            frac_fixed = int(fraction * 2.0**64) if fraction < 1.0 else 0
    suffix = text[end].upper() if end < len(text) else ""
    hex_with_suffix = False
    if suffix in _SUFFIX_SHIFT:
        shift = _SUFFIX_SHIFT[suffix]
        hex_with_suffix = hex_input
        end += 1
    else:
        shift = _SUFFIX_SHIFT[default_suffix.upper()]
    if end != len(text):
        raise NumberError(errno.EINVAL, text)
    if shift == 0:
        if frac_fixed:
            raise NumberError(errno.EINVAL, text)
        result = value
    else:
        exact = (value << 64) + frac_fixed
        exact <<= shift
        result = exact >> 64
        result += (exact >> 63) & 1  # round 0.5 upward, like QEMU
        if result > UINT64_MAX:
            raise NumberError(errno.ERANGE, text)
    return ParsedSize(result, hex_with_suffix)


_CVTNUM_MEMO: dict[str, ParsedSize] = {}
_PATTERN_MEMO: dict[str, int | None] = {}
_MEMO_LIMIT = 1 << 16  # entries; a memo that fills up starts again


def cvtnum(text: str) -> ParsedSize:
    """qemu-io's ``cvtnum``: a size that must also fit in int64.

    Valid answers are memoised: a script repeats its offsets and lengths.
    """
    parsed = _CVTNUM_MEMO.get(text)
    if parsed is not None:
        return parsed
    parsed = parse_size(text)
    if parsed.value > INT64_MAX:
        raise NumberError(errno.ERANGE, text)
    if len(_CVTNUM_MEMO) >= _MEMO_LIMIT:
        _CVTNUM_MEMO.clear()
    _CVTNUM_MEMO[text] = parsed
    return parsed


def strtol_base0(text: str) -> int | None:
    """``strtol(text, &end, 0)`` accepted only when it consumes everything; None otherwise.

    Out-of-range values saturate as in C (LONG_MIN/LONG_MAX).
    """
    i = 0
    n = len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    negative = False
    if i < n and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    base = 10
    if i < n and text[i] == "0":
        if i + 2 < n and text[i + 1] in "xX" and _digit(text[i + 2], 16) >= 0:
            base = 16
            i += 2
        else:
            base = 8
    start = i
    i = _DIGIT_RUN[base].match(text, i).end()  # type: ignore[union-attr]  # always matches
    value = int(text[start:i], base) if i > start else 0
    if i == start:
        # No digits: strtol returns 0 and leaves end at the start of the text.
        return 0 if n == 0 else None
    if i != n:
        return None
    value = -value if negative else value
    return max(-(1 << 63), min(INT64_MAX, value))


def parse_pattern(text: str) -> int | None:
    """A ``-P`` byte: strtol base 0 in 0..255, else None (caller prints the error)."""
    if text in _PATTERN_MEMO:
        return _PATTERN_MEMO[text]
    value = strtol_base0(text)
    if value is None or not 0 <= value <= 255:
        value = None
    if len(_PATTERN_MEMO) >= _MEMO_LIMIT:
        _PATTERN_MEMO.clear()
    _PATTERN_MEMO[text] = value
    return value


def cvtstr(value: float) -> str:
    """qemu-io's ``cvtstr``: largest binary unit not above the value, ``.000`` trimmed."""
    units = ((60, " EiB"), (50, " PiB"), (40, " TiB"), (30, " GiB"), (20, " MiB"), (10, " KiB"))
    suffix = " bytes"
    text = "%f" % value
    for shift, unit in units:
        if value >= float(1 << shift):
            suffix = unit
            text = "%.3f" % (value / float(1 << shift))
            break
    trim = text.find(".000")
    if trim >= 0:
        return text[:trim] + suffix
    return text + suffix


def timestr(seconds: float, verbose: bool) -> str:
    """qemu-io's ``timestr``: ``SS.ss sec`` under a second, else ``H:MM:SS.ss``."""
    whole = int(seconds)
    frac = seconds - whole
    if verbose or whole:
        return "%u:%02u:%05.2f" % (whole // 3600, (whole % 3600) // 60, whole % 60 + frac)
    return "%05.2f sec" % frac


def _tdiv(value: float, seconds: float) -> float:
    if seconds == 0:
        return float("inf") if value else float("nan")
    return value / seconds


def report_lines(
    verb: str, seconds: float, offset: int, count: int, total: int, ops: int, machine: bool
) -> str:
    """qemu-io's ``print_report``: the two transfer lines, or the one ``-C`` line."""
    ts = timestr(seconds, machine)
    if machine:
        return "%d,%d,%s,%.3f,%.3f\n" % (total, ops, ts, _tdiv(total, seconds), _tdiv(ops, seconds))
    return "%s %d/%d bytes at offset %d\n%s, %d ops; %s (%s/sec and %.4f ops/sec)\n" % (
        verb,
        total,
        count,
        offset,
        cvtstr(float(total)),
        ops,
        ts,
        cvtstr(_tdiv(float(total), seconds)),
        _tdiv(float(ops), seconds),
    )


def hexc(value: int) -> str:
    """C's ``%#x``: ``0x`` prefix except for zero, which prints as ``0``."""
    return "0" if value == 0 else f"{value:#x}"


def size_to_str(value: int) -> str:
    """QEMU's size_to_str (qemu-img info's sizes): three significant digits and a binary
    unit, switching to the next unit from 1000 on (``1000 KiB`` shows as ``0.977 MiB``)."""
    suffixes = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
    _mantissa, exponent = math.frexp(value / (1000.0 / 1024.0))
    i = (exponent - 1) // 10 if exponent > 0 else 0
    return "%0.3g %sB" % (value / float(1 << (i * 10)), suffixes[i])
