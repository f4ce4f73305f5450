"""TAB completion for the shell, driven by the command table.

What is completed, by position in the command being typed (the text after the last ``;``):

* the first word: command names and aliases (help: the command's one-line description);
* ``-``: the command's options, from its getopt string (help: the option's line from the
  command's long help);
* an option's argument: cache modes for ``open -t`` / ``reopen -c``, discard modes for
  ``open -d``, AIO modes for ``open -i``, preallocation modes for ``truncate -m``, a file for
  ``write -s``, sizes for ``read -s/-l``, and for ``-o`` the block option keys (generic ones
  plus the named driver's) and their values (driver names, on/off, modes, file names);
* operands: a file (or a protocol prefix) for ``open``, command names for ``help``, blkdebug
  event names for ``break``, and sizes with units for offsets and lengths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from qio.block import registry
from qio.block.open import AIO_MODES, CACHE_MODES, DISCARD_MODES
from qio.commands import table
from qio.commands.table import Command
from qio.numbers import cvtstr
from qio.shell.lines import current_command

if TYPE_CHECKING:
    from qio.session import Session

# blkdebug events (valid in config rules and for ``break``): QEMU 7.2's list.
BLKDEBUG_EVENTS = (
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
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
    "cluster_alloc_space",
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
    "cor_write",
    "none",
)

# Block options accepted by every node, then by driver (QEMU 7.2's option lists).
GENERIC_KEYS = (
    "driver",
    "node-name",
    "read-only",
    "auto-read-only",
    "force-share",
    "cache.direct",
    "cache.no-flush",
    "discard",
    "detect-zeroes",
    "file.driver",
    "file.filename",
)
DRIVER_KEYS: dict[str, tuple[str, ...]] = {
    "file": ("filename", "aio", "aio-max-batch", "locking", "drop-cache", "x-check-cache-dropped"),
    "raw": ("offset", "size"),
    "null-co": ("size", "latency-ns", "read-zeroes"),
    "null-aio": ("size", "latency-ns", "read-zeroes"),
    "qcow2": (
        "backing",
        "lazy-refcounts",
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
        "overlap-check",
        "cache-size",
        "l2-cache-size",
        "l2-cache-entry-size",
        "refcount-cache-size",
        "cache-clean-interval",
        "data-file",
    ),
    "blkverify": (
        "x-raw",
        "x-image",
        "raw.driver",
        "raw.filename",
        "test.driver",
        "test.file.filename",
    ),
    "blkdebug": (
        "config",
        "image.filename",
        "align",
        "max-transfer",
        "opt-write-zero",
        "max-write-zero",
        "opt-discard",
        "max-discard",
        "inject-error.0.event",
        "inject-error.0.errno",
        "inject-error.0.sector",
        "inject-error.0.once",
        "inject-error.0.immediately",
        "inject-error.0.state",
        "inject-error.0.iotype",
        "set-state.0.event",
        "set-state.0.state",
        "set-state.0.new_state",
    ),
    "copy-on-read": ("bottom",),
    "nbd": (
        "server.type",
        "server.host",
        "server.port",
        "server.path",
        "export",
        "tls-creds",
        "tls-hostname",
        "x-dirty-bitmap",
        "reconnect-delay",
        "open-timeout",
    ),
}
ON_OFF = ("on", "off")
KEY_VALUES: dict[str, tuple[str, ...]] = {
    "read-only": ON_OFF,
    "auto-read-only": ON_OFF,
    "force-share": ON_OFF,
    "cache.direct": ON_OFF,
    "cache.no-flush": ON_OFF,
    "lazy-refcounts": ON_OFF,
    "read-zeroes": ON_OFF,
    "pass-discard-request": ON_OFF,
    "pass-discard-snapshot": ON_OFF,
    "pass-discard-other": ON_OFF,
    "drop-cache": ON_OFF,
    "discard": ("ignore", "unmap"),
    "detect-zeroes": ("off", "on", "unmap"),
    "aio": AIO_MODES,
    "locking": ("auto", "on", "off"),
    "overlap-check": ("none", "constant", "cached", "all"),
    "server.type": ("inet", "unix"),
    "iotype": ("read", "write", "write-zeroes", "discard", "flush", "block-status"),
}
PATH_KEYS = ("filename", "x-raw", "x-image", "config", "data-file")
PREALLOC_MODES = ("off", "metadata", "falloc", "full")
PROTOCOL_PREFIXES = {
    "blkverify:": "blkverify:RAW:TEST — compare every read with a raw copy",
    "blkdebug:": "blkdebug:CONFIG:IMAGE — inject errors, set breakpoints",
    "null-co://": "a null device (reads zeroes with read-zeroes=on)",
    "null-aio://": "a null device completing asynchronously",
    "nbd://": "nbd://HOST[:PORT]/EXPORT — an NBD export",
    "json:": "json:{...} — the options tree as JSON",
}
SIZE_UNITS = (("k", 10), ("M", 20), ("G", 30), ("T", 40))
_SIZE_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_OPTION_HELP = re.compile(r"^\s*-(.), -- (.*)$")


def option_help(cmd: Command) -> dict[str, str]:
    """Option letter -> its description, from the ``-X, -- text`` lines of the long help."""
    found: dict[str, str] = {}
    for line in (cmd.help or "").splitlines():
        m = _OPTION_HELP.match(line)
        if m:
            found.setdefault(m.group(1), m.group(2))
    return found


def takes_argument(cmd: Command) -> set[str]:
    s = cmd.optstring
    return {c for i, c in enumerate(s) if c != ":" and s[i + 1 : i + 2] == ":"}


def has_size_operands(cmd: Command) -> bool:
    """Offsets and lengths: the synopsis names them (off, len, offset, count)."""
    words = re.findall(r"[a-z]+", cmd.args or "")
    return any(w in ("off", "len", "offset", "count") for w in words)


@dataclass(frozen=True)
class Position:
    """Where the cursor is inside one command."""

    cmd: Command | None
    word: str  # the text of the word being typed, up to the cursor
    kind: str  # "command", "option", "optarg" or "operand"
    letter: str = ""  # optarg: the option whose argument this is
    index: int = 0  # operand: how many operands come before it


def locate(text: str) -> Position:
    """Analyse the text before the cursor (one command) the way getopt will read it."""
    words = text.split(" ")
    word = words[-1]
    before = [w for w in words[:-1] if w]
    if not before:
        return Position(None, word, "command")
    cmd = table.find(before[0])
    if cmd is None:
        return Position(None, word, "unknown")
    with_arg = takes_argument(cmd)
    pending = ""
    ended = False
    operands = 0
    for w in before[1:]:
        if pending:
            pending = ""
            continue
        if not ended and w == "--":
            ended = True
            continue
        if not ended and w.startswith("-") and len(w) > 1:
            for i, ch in enumerate(w[1:], start=1):
                if ch in with_arg:
                    if i == len(w) - 1:
                        pending = ch  # its argument is the next word
                    break
            continue
        operands += 1
    if pending:
        return Position(cmd, word, "optarg", letter=pending)
    if not ended and word.startswith("-") and cmd.optstring:
        for i, ch in enumerate(word[1:], start=1):
            if ch in with_arg and i < len(word) - 1:
                # ``-P0x42``: the argument is glued to its option.
                return Position(cmd, word[i + 1 :], "optarg", letter=ch)
        return Position(cmd, word, "option")
    return Position(cmd, word, "operand", index=operands)


class QioCompleter(Completer):
    """Completions for one session (the open image matters for sizes and ``reopen -o``)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._paths = PathCompleter(expanduser=True)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        pos = locate(current_command(document.text_before_cursor))
        if pos.kind == "command":
            yield from self._commands(pos.word)
        elif pos.cmd is None:
            return
        elif pos.kind == "option":
            yield from self._options(pos.cmd, pos.word)
        elif pos.kind == "optarg":
            yield from self._option_argument(pos.cmd, pos.letter, pos.word)
        else:
            yield from self._operand(pos.cmd, pos.index, pos.word)

    # -- pieces ------------------------------------------------------------------------------
    def _commands(self, word: str) -> Iterator[Completion]:
        entries: list[tuple[str, str]] = []
        for cmd in table.all_commands():
            entries.append((cmd.name, cmd.oneline))
            if cmd.altname:
                entries.append((cmd.altname, f"{cmd.name}: {cmd.oneline}"))
        for name, meta in sorted(entries):
            if name.startswith(word):
                yield Completion(name, -len(word), display_meta=meta)

    def _options(self, cmd: Command, word: str) -> Iterator[Completion]:
        descriptions = option_help(cmd)
        letters = [c for c in cmd.optstring if c != ":"]
        with_arg = takes_argument(cmd)
        if word == "-":
            for c in letters:
                yield Completion(f"-{c}", -1, display=f"-{c}", display_meta=descriptions.get(c, ""))
            return
        # ``-ab``: more letters may join a cluster of flags that take no argument.
        typed = word[1:]
        if any(c in with_arg for c in typed) or any(c not in letters for c in typed):
            return
        for c in letters:
            if c not in typed:
                yield Completion(
                    word + c, -len(word), display=f"-{c}", display_meta=descriptions.get(c, "")
                )

    def _option_argument(self, cmd: Command, letter: str, word: str) -> Iterator[Completion]:
        name = cmd.name
        if letter == "o" and name in ("open", "reopen"):
            yield from self._block_options(word, reopen=name == "reopen")
        elif (name, letter) in (("open", "t"), ("reopen", "c")):
            for mode, (direct, no_flush, writethrough) in CACHE_MODES.items():
                meta = ", ".join(
                    flag
                    for flag, on in (
                        ("O_DIRECT", direct),
                        ("no flush", no_flush),
                        ("writethrough", writethrough),
                    )
                    if on
                )
                yield from _matching(word, [(mode, meta or "writeback")])
        elif (name, letter) == ("open", "d"):
            yield from _matching(word, [(m, "") for m in DISCARD_MODES])
        elif (name, letter) == ("open", "i"):
            yield from _matching(word, [(m, "") for m in AIO_MODES])
        elif (name, letter) == ("truncate", "m"):
            yield from _matching(word, [(m, "preallocation") for m in PREALLOC_MODES])
        elif (name, letter) == ("write", "s"):
            yield from self._files(word)
        elif letter in ("s", "l") and name == "read":
            yield from self._sizes(word, offset=False)

    def _operand(self, cmd: Command, index: int, word: str) -> Iterator[Completion]:
        name = cmd.name
        if name == "open" and index == 0:
            if self.session.image_opts:
                yield from self._block_options(word, reopen=False)
            else:
                yield from self._open_target(word)
        elif name == "help" and index == 0:
            yield from self._commands(word)
        elif name == "break" and index == 0:
            yield from _matching(word, [(e, "blkdebug event") for e in BLKDEBUG_EVENTS])
        elif has_size_operands(cmd):
            yield from self._sizes(word, offset=index == 0)

    def _open_target(self, word: str) -> Iterator[Completion]:
        for prefix in ("blkverify:", "blkdebug:"):
            if word.startswith(prefix):
                # Both take colon-separated file names: complete the last one.
                tail = word[word.rfind(":") + 1 :]
                yield from self._files(tail)
                return
        if ":" not in word:
            yield from _matching(word, list(PROTOCOL_PREFIXES.items()))
            yield from self._files(word)

    def _files(self, word: str) -> Iterator[Completion]:
        yield from self._paths.get_completions(Document(word, len(word)), CompleteEvent())

    def _sizes(self, word: str, offset: bool) -> Iterator[Completion]:
        """``64`` → ``64k``, ``64M``, ...: the byte value (and whether it is past the end)."""
        if not _SIZE_TEXT.match(word):
            return
        length = None
        blk = self.session.blk
        if blk is not None and blk.available:
            length = blk.getlength()
        for unit, shift in SIZE_UNITS:
            value = int(float(word) * (1 << shift))
            meta = f"{value} bytes"
            if offset and length is not None and value >= length:
                meta += f" (past the end: the image is {cvtstr(float(length))})"
            yield Completion(word + unit, -len(word), display_meta=meta)

    def _block_options(self, word: str, reopen: bool) -> Iterator[Completion]:
        """``key=value,key=value``: complete the last item's key, or its value."""
        head, _, item = word.rpartition(",")
        given = dict(part.partition("=")[::2] for part in head.split(",") if part)
        key, eq, value = item.partition("=")
        if eq:
            yield from self._option_values(key, value)
            return
        driver = given.get("driver")
        if driver is None and reopen and self.session.blk is not None:
            driver = self.session.blk.root.format_name
        keys = list(GENERIC_KEYS)
        if driver in DRIVER_KEYS:
            keys += DRIVER_KEYS[driver]
        else:
            keys += sorted({k for ks in DRIVER_KEYS.values() for k in ks})
        seen: set[str] = set()
        for k in keys:
            if k.startswith(key) and k not in given and k not in seen:
                seen.add(k)
                yield Completion(k + "=", -len(key), display=k, display_meta=_key_meta(k, driver))

    def _option_values(self, key: str, value: str) -> Iterator[Completion]:
        last = key.rsplit(".", 1)[-1]
        if last == "driver":
            names = registry.driver_names()
            yield from _matching(value, [(n, "driver") for n in names])
        elif last in PATH_KEYS:
            yield from self._files(value)
        else:
            choices = KEY_VALUES.get(key) or KEY_VALUES.get(last) or ()
            yield from _matching(value, [(c, "") for c in choices])


def _matching(word: str, entries: Iterable[tuple[str, str]]) -> Iterator[Completion]:
    for text, meta in entries:
        if text.startswith(word):
            yield Completion(text, -len(word), display_meta=meta)


def _key_meta(key: str, driver: str | None) -> str:
    owners = [d for d, keys in DRIVER_KEYS.items() if key in keys]
    if key in GENERIC_KEYS:
        return "any node"
    if driver in owners:
        return f"{driver} option"
    return ", ".join(owners) + " option" if owners else ""


def complete_words(session: Session, text: str) -> list[str]:
    """The completion texts for ``text`` with the cursor at its end (tests and debugging)."""
    completer = QioCompleter(session)
    doc = Document(text, len(text))
    return [
        c.text for c in completer.get_completions(doc, CompleteEvent(completion_requested=True))
    ]
