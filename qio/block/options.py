"""The options tree of a block graph, in QEMU's flat form.

Three spellings build one tree: ``--image-opts``/``open -o`` option strings
(``driver=qcow2,file.filename=x``), ``json:{...}`` filenames (nested objects, flattened) and
the options a protocol prefix expands to (``blkverify:a:b``).  Like QEMU's QDict, keys are
dotted paths (``file.filename``); a driver takes the keys it knows and hands ``file.*`` to its
child; whatever is left over at the end is an error naming the first unknown key.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

from qio.errors import OptionError
from qio.numbers import _C_SPACE, NumberError, parse_size
from qio.numbers import _strtoull as strtoull

Value = str | int | float | bool | None

_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


class Options:
    """A flat, ordered mapping of dotted option keys to values."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, Value] | None = None) -> None:
        self._items: dict[str, Value] = dict(items or {})

    # -- mapping basics -------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"Options({self._items!r})"

    def get(self, key: str, default: Value = None) -> Value:
        return self._items.get(key, default)

    def set(self, key: str, value: Value) -> None:
        self._items[key] = value

    def setdefault(self, key: str, value: Value) -> None:
        self._items.setdefault(key, value)

    def pop(self, key: str, default: Value = None) -> Value:
        return self._items.pop(key, default)

    def items(self) -> list[tuple[str, Value]]:
        return list(self._items.items())

    def copy(self) -> Options:
        return Options(self._items)

    def as_dict(self) -> dict[str, Value]:
        return dict(self._items)

    def merge_missing(self, other: Options) -> None:
        """Add the keys of ``other`` that are not set here (existing keys win, as qdict_join)."""
        for key, value in other._items.items():
            self._items.setdefault(key, value)

    def first_key(self) -> str | None:
        """The key QEMU's ``qdict_first`` returns (the "first" unknown option of an error)."""
        return qdict_first(list(self._items))

    def in_qdict_order(self) -> list[str]:
        """All keys in the order QEMU iterates its QDict (see ``qdict_order``)."""
        return qdict_order(list(self._items))

    # -- children -------------------------------------------------------------------------
    def extract(self, prefix: str) -> Options:
        """Remove and return every ``prefix.*`` key, with the prefix stripped."""
        dotted = prefix + "."
        child = Options()
        for key in list(self._items):
            if key.startswith(dotted):
                child._items[key[len(dotted) :]] = self._items.pop(key)
        return child

    def has_prefix(self, prefix: str) -> bool:
        dotted = prefix + "."
        return any(k.startswith(dotted) for k in self._items)

    def list_indices(self, prefix: str) -> list[int]:
        """Indices of ``prefix.N.*`` entries (QEMU's flattened lists)."""
        dotted = prefix + "."
        found: set[int] = set()
        for key in self._items:
            if key.startswith(dotted):
                head = key[len(dotted) :].split(".", 1)[0]
                if head.isdigit():
                    found.add(int(head))
        return sorted(found)

    # -- typed accessors (QemuOpts conversion rules) ----------------------------------------
    def pop_str(self, key: str, default: str | None = None) -> str | None:
        if key not in self._items:
            return default
        value = self._items.pop(key)
        if value is None:
            return None
        if isinstance(value, bool):
            return "on" if value else "off"
        return str(value)

    def pop_bool(self, key: str, default: bool) -> bool:
        if key not in self._items:
            return default
        value = self._items.pop(key)
        return to_bool(key, value)

    def pop_int(self, key: str, default: int) -> int:
        if key not in self._items:
            return default
        value = self._items.pop(key)
        if isinstance(value, bool) or value is None:
            raise OptionError(f"Parameter '{key}' expects a number")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return int(value)
        return parse_option_number(key, str(value))

    def pop_size(self, key: str, default: int) -> int:
        if key not in self._items:
            return default
        value = self._items.pop(key)
        return to_size(key, value)


QDICT_BUCKETS = 512


def qdict_bucket(key: str) -> int:
    """The hash bucket of ``key`` in QEMU's QDict (its tdb_hash, modulo 512 buckets)."""
    data = key.encode("utf-8", "surrogateescape")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % QDICT_BUCKETS


def qdict_order(keys: list[str]) -> list[str]:
    """``keys`` (in insertion order) in the order a QDict iterates them.  QDict is a hash
    table: by hash bucket, and within a bucket the most recently inserted first.  Error
    messages that name "the first" unknown option follow this order."""
    ranked = sorted(enumerate(keys), key=lambda item: (qdict_bucket(item[1]), -item[0]))
    return [key for _, key in ranked]


def qdict_first(keys: list[str]) -> str | None:
    ordered = qdict_order(keys)
    return ordered[0] if ordered else None


def parse_option_number(key: str, text: str) -> int:
    """QEMU's parse_option_number: qemu_strtou64 with base 0 (so ``010`` is octal and
    ``-5`` wraps to 2^64 - 5); the result is the unsigned 64-bit value."""
    i = len(text) - len(text.lstrip(_C_SPACE))
    j = i + 1 if text[i : i + 1] in ("+", "-") else i
    if text[j : j + 2].lower() == "0x":
        base = 16
    elif text[j : j + 1] == "0":
        base = 8
    else:
        base = 10
    value, end, overflow = strtoull(text, 0, base)
    if end == 0 or end != len(text):
        raise OptionError(f"Parameter '{key}' expects a number")
    if overflow:
        raise OptionError(f"Value '{text}' is too large for parameter '{key}'")
    return value


def to_bool(key: str, value: Value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"Parameter '{key}' expects 'on' or 'off'")


def to_size(key: str, value: Value) -> int:
    if isinstance(value, bool) or value is None:
        raise OptionError(f"Parameter '{key}' expects a size")
    if isinstance(value, int):
        if value < 0:
            raise OptionError(f"Parameter '{key}' expects a non-negative number below 2^64")
        return value
    if isinstance(value, float):
        return int(value)
    try:
        return parse_size(str(value)).value
    except NumberError as exc:
        if exc.code == errno.ERANGE:
            raise OptionError(
                f"Value '{value}' is out of range for parameter '{key}'"
            ) from None
        raise OptionError(
            f"Parameter '{key}' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively."
        ) from None


def parse_option_string(text: str, warnings: list[str] | None = None) -> Options:
    """QEMU's QemuOpts syntax: ``key=value,...``; in a value ``,,`` is a literal comma.

    A bare word is a flag: ``key`` means ``key=on`` and ``nokey`` ``key=off``, with QEMU's
    deprecation warning appended to ``warnings`` (not for ``help``/``?``).  An empty element
    (``,x`` or ``,,`` where a name is expected) is a flag with an empty name, as in QEMU.
    """
    opts = Options()
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in "=,":
            j += 1
        name = text[i:j]
        if j < n and text[j] == "=":
            value, i = _option_value(text, j + 1)
            opts.set(name, value)
        else:
            negated = name.startswith("no")
            key, value = (name[2:], "off") if negated else (name, "on")
            if warnings is not None and (negated or key not in ("help", "?")):
                if key == "delay":  # QEMU's one special case: delay is spelled nodelay
                    hint = f"nodelay={'on' if negated else 'off'}"
                else:
                    hint = f"{key}={value}"
                warnings.append(
                    f"short-form boolean option '{name}' deprecated\nPlease use {hint} instead"
                )
            opts.set(key, value)
            i = j
        if i < n and text[i] == ",":
            i += 1
    return opts


def _option_value(text: str, i: int) -> tuple[str, int]:
    """QEMU's get_opt_value: the value from ``i`` to the next single comma."""
    chars: list[str] = []
    n = len(text)
    while i < n:
        if text[i] == ",":
            if i + 1 < n and text[i + 1] == ",":
                chars.append(",")
                i += 2
                continue
            break
        chars.append(text[i])
        i += 1
    return "".join(chars), i


def flatten(tree: dict[str, Any], prefix: str = "") -> Options:
    """Nested JSON objects and arrays to dotted keys (QEMU's qdict_flatten)."""
    flat = Options()
    _flatten_into(flat, tree, prefix)
    return flat


def _flatten_into(flat: Options, node: Any, prefix: str) -> None:
    """Depth first, in document order, without recursion (JSON may nest 1024 levels)."""
    stack: list[tuple[Iterator[tuple[Any, Any]], str]] = [(_members(node), prefix)]
    while stack:
        members, base = stack[-1]
        member = next(members, None)
        if member is None:
            stack.pop()
            continue
        key, value = member
        if isinstance(value, dict | list):
            stack.append((_members(value), f"{base}{key}."))
        else:
            flat.set(f"{base}{key}", value)


def _members(node: Any) -> Iterator[tuple[Any, Any]]:
    return iter(node.items()) if isinstance(node, dict) else iter(enumerate(node))


def parse_json_filename(filename: str) -> Options:
    """The options of a ``json:{...}`` pseudo-filename, read as QEMU reads JSON."""
    from qio.block import qjson

    text = filename[len("json:") :]
    try:
        tree = qjson.parse(text.encode("utf-8", "surrogateescape"))
    except qjson.JSONError as exc:
        raise OptionError(f"Could not parse the JSON options: {exc.message}") from None
    if not isinstance(tree, dict):
        raise OptionError("Invalid JSON object given")
    return flatten(tree)
