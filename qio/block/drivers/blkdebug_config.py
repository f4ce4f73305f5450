"""blkdebug's rules: the config file and the inline ``inject-error.N.*`` options.

The config file is read the way QEMU's ``qemu_config_parse`` reads it, quirks included, because
its error messages are part of qemu-io's output:

* lines are read in pieces of at most 1023 bytes (``fgets`` into 1024 bytes);
* a line that is exactly a newline is skipped, and so is a line *starting* with ``#``;
* ``[group]`` or ``[group "id"]`` starts a section; a section is checked when the next one
  starts or at the end of the file (``There is no option group 'x'``, ``Invalid parameter
  'x'``, ...);
* ``key = "value"`` sets an option; anything else with a first word sets that word to the
  empty string (so ``event="read_aio"`` is the parameter ``event="read_aio"``); a line of
  blanks is a ``parse error``; an option before any section is ``no group defined``.

Inline options follow ``qemu_config_parse_qdict``: ``inject-error.event=...`` is one section,
``inject-error.0.event=...``, ``inject-error.1.event=...`` are several.  Values are checked
in QEMU's order (a QDict's hash order), so the first error reported is QEMU's.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Literal

from qio.block.options import Options, Value, qdict_order
from qio.errors import OpenError

EVENTS = (
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "read_aio",
    "read_backing_aio",
    "read_compressed",
    "write_aio",
    "write_compressed",
    "vmstate_load",
    "vmstate_save",
    "cow_read",
    "cow_write",
    "reftable_load",
    "reftable_grow",
    "reftable_update",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "flush_to_os",
    "flush_to_disk",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cor_write",
    "cluster_alloc_space",
    "none",
)

IO_TYPES = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
DEFAULT_IO_TYPES = frozenset(IO_TYPES[:-1])  # every type but block-status

OptType = Literal["string", "number", "bool"]
GROUPS: dict[str, dict[str, OptType]] = {
    "inject-error": {
        "event": "string",
        "state": "number",
        "iotype": "string",
        "errno": "number",
        "sector": "number",
        "once": "bool",
        "immediately": "bool",
    },
    "set-state": {"event": "string", "state": "number", "new_state": "number"},
}

LINE_MAX = 1023  # fgets into a 1024-byte buffer
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")
_C_SPACE = " \t\n\v\f\r"


@dataclass
class Section:
    """One ``[group]`` of options (a QemuOpts), values already checked for their type."""

    group: str
    values: dict[str, str] = field(default_factory=dict)
    id: str | None = None


@dataclass(eq=False)
class Rule:
    """One rule of a blkdebug node: inject an error, change the state, or suspend."""

    action: Literal["inject-error", "set-state", "suspend"]
    event: str
    state: int = 0  # only in this state (0: any)
    errno: int = errno.EIO
    offset: int = -1  # only requests covering this byte (-1: any)
    iotypes: frozenset[str] = DEFAULT_IO_TYPES
    once: bool = False
    immediately: bool = False
    new_state: int = 0
    tag: str = ""


# -- C number parsing ----------------------------------------------------------------------
def strtou64(text: str) -> int | None:
    """qemu_strtou64 (strtoull, base 0, nothing trailing): the value, None when invalid.

    Raises OverflowError above 2**64 - 1.  A leading minus wraps around, as with strtoull.
    """
    s = text.lstrip(_C_SPACE)
    negative = False
    if s[:1] in ("+", "-"):
        negative = s[0] == "-"
        s = s[1:]
    if s[:2].lower() == "0x" and s[2:3] and s[2:3] in "0123456789abcdefABCDEF":
        base, digits = 16, s[2:]
    elif s[:1] == "0":
        base, digits = 8, s
    else:
        base, digits = 10, s
    allowed = "0123456789abcdef"[:base]
    n = 0
    while n < len(digits) and digits[n].lower() in allowed:
        n += 1
    if n == 0 or n != len(digits):
        return None
    value = int(digits[:n], base)
    if value > (1 << 64) - 1:
        raise OverflowError
    return (-value) % (1 << 64) if negative else value


def c_int(value: int) -> int:
    """A uint64 stored into a C ``int``."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def c_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _check_value(name: str, kind: OptType, value: str) -> None:
    """qemu_opt_parse: the type check every option value goes through."""
    if kind == "number":
        try:
            ok = strtou64(value) is not None
        except OverflowError:
            raise OpenError(f"Value '{value}' is too large for parameter '{name}'") from None
        if not ok:
            raise OpenError(f"Parameter '{name}' expects a number")
    elif kind == "bool" and value not in _TRUE and value not in _FALSE:
        raise OpenError(f"Parameter '{name}' expects 'on' or 'off'")


def _id_wellformed(ident: str) -> bool:
    if not ident or not ident[0].isascii() or not ident[0].isalpha():
        return False
    return all(c.isascii() and (c.isalnum() or c in "-._") for c in ident[1:])


class SectionList:
    """The sections of both groups, in the order they were defined."""

    def __init__(self) -> None:
        self.sections: list[Section] = []

    def add(self, group: str, items: list[tuple[str, str]], ident: str | None) -> Section:
        """qemu_opts_from_qdict / absorb: a new section; unknown keys raise."""
        section = self.create(group, ident)
        desc = GROUPS[group]
        for key, value in items:
            kind = desc.get(key)
            if kind is None:
                raise OpenError(f"Invalid parameter '{key}'")
            _check_value(key, kind, value)
            section.values[key] = value
        return section

    def create(self, group: str, ident: str | None) -> Section:
        if ident is not None:
            if not _id_wellformed(ident):
                raise OpenError(
                    "Parameter 'id' expects an identifier\n"
                    "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
                )
            if any(s.group == group and s.id == ident for s in self.sections):
                raise OpenError(f"Duplicate ID '{ident}' for {group}")
        section = Section(group, id=ident)
        self.sections.append(section)
        return section


# -- the config file -----------------------------------------------------------------------
def _sscanf_word(line: str, pos: int, width: int) -> tuple[str, int] | None:
    """``%Ns`` at ``pos``: skip blanks, then up to ``width`` non-blank characters."""
    while pos < len(line) and line[pos] in _C_SPACE:
        pos += 1
    start = pos
    while pos < len(line) and pos - start < width and line[pos] not in _C_SPACE:
        pos += 1
    if pos == start:
        return None
    return line[start:pos], pos


def _skip_space(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in _C_SPACE:
        pos += 1
    return pos


def _scan_group_with_id(line: str) -> tuple[str | None, str | None]:
    """``sscanf(line, "[%63s \\"%63[^\\"]\\"]", group, value)``: (group, id) as assigned."""
    word = _sscanf_word(line, 1, 63)
    if word is None:
        return None, None
    group, pos = word
    pos = _skip_space(line, pos)
    if line[pos : pos + 1] != '"':
        return group, None
    end = pos + 1
    while end < len(line) and end - pos - 1 < 63 and line[end] != '"':
        end += 1
    if end == pos + 1:
        return group, None
    return group, line[pos + 1 : end]


def _scan_group(line: str) -> str | None:
    """``sscanf(line, "[%63[^]]]", group)``."""
    end = 1
    while end < len(line) and end - 1 < 63 and line[end] != "]":
        end += 1
    return line[1:end] if end > 1 else None


def _scan_assignment(line: str) -> tuple[str, str] | None:
    """The two ``sscanf`` calls QEMU tries on an option line: (key, value) or None."""
    word = _sscanf_word(line, 0, 63)
    if word is None:
        return None
    key, pos = word
    pos = _skip_space(line, pos)
    if line[pos : pos + 1] == "=":
        pos = _skip_space(line, pos + 1)
        if line[pos : pos + 1] == '"':
            end = pos + 1
            while end < len(line) and end - pos - 1 < 1023 and line[end] != '"':
                end += 1
            return key, line[pos + 1 : end]
    # The second form matched its first word at least: the key with an empty value.
    return key, ""


def _lines(data: str) -> list[str]:
    """What successive ``fgets(line, 1024, f)`` calls return."""
    out: list[str] = []
    for line in data.splitlines(keepends=True):
        while len(line) > LINE_MAX:
            out.append(line[:LINE_MAX])
            line = line[LINE_MAX:]
        out.append(line)
    return out


def parse_config_file(path: str, sections: SectionList) -> None:
    """qemu_config_parse over a blkdebug config file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise OpenError("Cannot read config file: Is a directory", errno.EISDIR) from None
    except OSError as exc:
        err = exc.errno or errno.EIO
        raise OpenError(f"Could not read blkdebug config file: {os.strerror(err)}", err) from None
    text = raw.decode("utf-8", "surrogateescape")
    current: dict[str, str] | None = None  # a QDict: a repeated key keeps its place
    current_id: str | None = None
    prev_group = ""
    group = ""  # the sscanf target, as QEMU leaves it
    for line in _lines(text):
        if line.startswith("\n") or line.startswith("#"):
            continue
        if line.startswith("["):
            scanned, ident = _scan_group_with_id(line)
            if scanned is not None:
                group = scanned
            started = ident is not None
            if not started:
                plain = _scan_group(line)
                if plain is not None:
                    group = plain
                    started = True
            if started:
                if current is not None:
                    _add_section(sections, prev_group, current, current_id)
                current, current_id = {}, ident
                prev_group = group
                continue
        assignment = _scan_assignment(line)
        if assignment is None:
            raise OpenError("parse error")
        if current is None:
            raise OpenError("no group defined")
        key, value = assignment
        current[key] = value
    if current is not None:
        _add_section(sections, group, current, current_id)


def _add_section(
    sections: SectionList, group: str, values: dict[str, str], ident: str | None
) -> None:
    if group not in GROUPS:
        raise OpenError(f"There is no option group '{group}'")
    sections.add(group, [(k, values[k]) for k in qdict_order(list(values))], ident)


# -- inline options ------------------------------------------------------------------------
def _opt_string(value: Value) -> str | None:
    """How QEMU turns a QObject option into text; None for values it skips."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "%.17g" % value
    if isinstance(value, str):
        return value
    return None


def parse_inline(options: Options, sections: SectionList) -> None:
    """qemu_config_parse_qdict: ``inject-error.*`` and ``set-state.*`` taken from ``options``."""
    for group in GROUPS:
        sub = options.extract(group)
        if not len(sub):
            continue
        # First try one unnumbered section: absorb the keys the group knows.
        size = len(sub)
        section = sections.create(group, None)
        _absorb(section, sub)
        left = len(sub)
        if left and left < size:
            raise OpenError(f"Unknown option '{qdict_order(list(sub))[0]}' for [{group}]")
        if left:
            sections.sections.remove(section)
            _parse_numbered(group, sub, sections)


def _absorb(section: Section, sub: Options) -> None:
    """qemu_opts_absorb_qdict: move the known keys of ``sub`` into ``section``."""
    desc = GROUPS[section.group]
    for key in qdict_order(list(sub)):
        if key in desc:
            value = _opt_string(sub.pop(key))
            if value is not None:
                _check_value(key, desc[key], value)
                section.values[key] = value


def _parse_numbered(group: str, sub: Options, sections: SectionList) -> None:
    """Sections ``group.0.*``, ``group.1.*``, ... (qdict_array_split, then each section)."""
    entries: list[Options | None] = []  # None: a plain value where a section was expected
    index = 0
    while True:
        key = str(index)
        scalar, nested = key in sub, sub.has_prefix(key)
        if scalar == nested:
            break
        if nested:
            entries.append(sub.extract(key))
        else:
            sub.pop(key)
            entries.append(None)
        index += 1
    leftover = qdict_order(list(sub))
    if leftover:
        raise OpenError(f"Unused option '{leftover[0]}' for [{group}]")
    for number, entry in enumerate(entries):
        if entry is None:
            raise OpenError(f"[{group}] section (index {number}) does not consist of keys")
        section = sections.create(group, f"{group}.{number}")
        _absorb(section, entry)
        rest = qdict_order(list(entry))
        if rest:
            raise OpenError(f"[{group}] section doesn't support the option '{rest[0]}'")


# -- rules ---------------------------------------------------------------------------------
def build_rules(sections: SectionList) -> list[Rule]:
    """add_rule over every section: inject-error sections first, then set-state ones."""
    rules: list[Rule] = []
    for group in GROUPS:
        for section in sections.sections:
            if section.group == group:
                rules.append(_rule(section))
    return rules


def _number(section: Section, key: str, default: int) -> int:
    text = section.values.get(key)
    if text is None:
        return default
    value = strtou64(text)
    assert value is not None  # checked when the section was read
    return value


def _rule(section: Section) -> Rule:
    event = section.values.get("event")
    if event is None:
        raise OpenError("Missing event name for rule")
    if event not in EVENTS:
        raise OpenError(f"invalid parameter value: {event}")
    state = c_int(_number(section, "state", 0))
    if section.group == "set-state":
        return Rule("set-state", event, state, new_state=c_int(_number(section, "new_state", 0)))
    iotype = section.values.get("iotype")
    if iotype is not None and iotype not in IO_TYPES:
        raise OpenError(f"invalid parameter value: {iotype}")
    sector = c_int64(_number(section, "sector", (1 << 64) - 1))
    return Rule(
        "inject-error",
        event,
        state,
        errno=c_int(_number(section, "errno", errno.EIO)),
        offset=-1 if sector == -1 else sector * 512,
        iotypes=frozenset((iotype,)) if iotype is not None else DEFAULT_IO_TYPES,
        once=section.values.get("once", "off") in _TRUE,
        immediately=section.values.get("immediately", "off") in _TRUE,
    )
