"""The plain renderer: exactly the bytes qemu-io prints (pipes, scripts, tests)."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from qio.block.graph import label, one_line
from qio.block.open import Notice
from qio.numbers import cvtstr, report_lines
from qio.output import Console
from qio.render.hexdump import hexdump_bytes
from qio.results import (
    AllocResult,
    DiffResult,
    GraphNode,
    InfoResult,
    LocateStep,
    LoggedMismatch,
    MapRun,
    Mismatch,
    PatternMismatch,
    TransferReport,
    VerifyResult,
)

if TYPE_CHECKING:
    from qio.commands.table import Command


class Progress:
    """Progress of one streamed request.  This one shows nothing (pipes, scripts, tests);
    the terminal renderer's draws a bar on stderr."""

    def update(self, done: int) -> None:
        """``done`` bytes of the request are complete."""

    def close(self) -> None:
        """The request ended (completed, failed or interrupted)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def numbered_mismatch(number: int, m: Mismatch) -> str:
    """One line of ``mismatches``: qemu-io's blkverify line and the sector it names."""
    where = "" if m.offset is None else f" (sector {m.sector})"
    return f"{number}: {m.qemu_line()}{where}"


def mismatch_count(count: int) -> str:
    return f"{count} mismatch{'es' if count != 1 else ''}" if count else "none"


MISMATCH_OUTCOMES = {"raw": "the client got the raw data", "error": "the client got EIO"}


def mismatch_origin(logged: LoggedMismatch) -> str:
    """Where a recorded mismatch came from: qio-nbd's export and client, when, and what the
    client was answered."""
    parts = [f"qio-nbd export '{logged.export}'"]
    if logged.client:
        parts.append(f"client {logged.client}")
    if logged.time:
        parts.append(logged.time)
    text = ", ".join(parts)
    outcome = MISMATCH_OUTCOMES.get(logged.action)
    return f"{text}: {outcome}" if outcome else text


def dump_specific(fields: list[tuple[str, Any]], indent: int) -> str:
    """QEMU's bdrv_image_info_specific_dump: four spaces per level, '-' shown as ' '."""
    out: list[str] = []
    for key, value in fields:
        out.append(_dump_value(key.replace("-", " "), value, indent))
    return "".join(out)


def _dump_value(label: str, value: Any, indent: int) -> str:
    pad = " " * indent
    if isinstance(value, dict):
        return f"{pad}{label}:\n" + dump_specific(list(value.items()), indent + 4)
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return f"{pad}{label}:\n" + dump_specific(value, indent + 4)
    if isinstance(value, list):
        body = "".join(_dump_value(f"[{i}]", item, indent + 4) for i, item in enumerate(value))
        return f"{pad}{label}:\n{body}"
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    return f"{pad}{label}: {text}\n"


class PlainRenderer:
    """Draws results as qemu-io's text.  Subclassed by the terminal renderer.

    Every byte leaves through ``out``, ``out_bytes`` or ``err``, so a subclass that must
    tidy the screen before output (the terminal renderer's progress bar) has three doors
    to watch.
    """

    styled = False  # True for renderers that draw with colour (the shell matches them)

    def __init__(self, console: Console) -> None:
        self.console = console

    # -- raw lines -------------------------------------------------------------------------
    def out(self, text: str) -> None:
        self.console.out.write(text)

    def out_bytes(self, data: bytes) -> None:
        self.console.out.write_bytes(data)

    def err(self, text: str) -> None:
        self.console.err.write(text)

    def message(self, line: str) -> None:
        """A line qemu-io prints on stdout (most per-command failures)."""
        self.out(line + "\n")

    def error(self, line: str) -> None:
        """A line qemu-io prints on stderr."""
        self.err(line + "\n")

    def notice(self, notice: Notice) -> None:
        if notice.stream == "out":
            self.out(notice.text)
        else:
            self.err(notice.text)

    def flush(self) -> None:
        self.console.flush()

    def progress(self, verb: str, total: int, enabled: bool = True) -> Progress:
        """A progress sink for a streamed request of ``total`` bytes (qemu-io shows none)."""
        return Progress()

    # -- results ---------------------------------------------------------------------------
    def transfer(self, r: TransferReport) -> None:
        self.out(report_lines(r.verb, r.seconds, r.offset, r.count, r.total, r.ops, r.machine))

    def hexdump(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.out_bytes(hexdump_bytes(data, offset))

    def pattern_mismatch(self, m: PatternMismatch) -> None:
        self.message(f"Pattern verification failed at offset {m.offset}, {m.length} bytes")

    def map(self, runs: list[MapRun]) -> None:
        """The whole ``map`` output: one line per run."""
        for run in runs:
            self.map_run(run)

    def map_run(self, r: MapRun) -> None:
        status = "    allocated" if r.allocated else "not allocated"
        self.message(
            f"{cvtstr(float(r.length))} (0x{r.length:x}) bytes {status} at offset "
            f"{cvtstr(float(r.offset))} (0x{r.offset:x})"
        )

    def alloc(self, r: AllocResult) -> None:
        self.message(f"{r.allocated}/{r.count} bytes allocated at offset {cvtstr(float(r.offset))}")

    def length(self, size: int) -> None:
        self.message(cvtstr(float(size)))

    def info(self, r: InfoResult) -> None:
        text = "".join(f"format name: {name}\n" for name in r.format_names)
        if r.cluster_size is not None and r.vm_state_offset is not None:
            text += f"cluster size: {cvtstr(float(r.cluster_size))}\n"
            text += f"vm state offset: {cvtstr(float(r.vm_state_offset))}\n"
            if r.specific is not None:
                text += "Format specific information:\n" + dump_specific(r.specific, 4)
        self.out(text)

    def help_list(self, commands: list[Command]) -> None:
        """``help``: every command's line, sorted by name, then the hint — qemu-io's list,
        byte for byte, so qio's own commands are left out here (``help NAME`` explains them,
        the terminal view lists them)."""
        lines = [c.help_line() for c in commands if not c.qio_only]
        self.out("\n".join(lines) + "\n\nUse 'help commandname' for extended help.\n")

    def help_command(self, cmd: Command, as_name: str) -> None:
        """``help NAME``: the usage line (with the name as typed) and the long help."""
        self.out(cmd.help_line(as_name) + "\n" + (cmd.help or ""))

    def mismatch(self, m: Mismatch, fatal: bool) -> None:
        """A blkverify mismatch: qemu-io's stderr line when it ends the program; in report
        mode the same line on stdout with the 512-byte sector of the first differing byte."""
        if fatal:
            self.error(m.qemu_line())
            return
        where = "" if m.offset is None else f" (sector {m.sector})"
        self.message(f"{m.qemu_line()}{where}")

    def mismatches(self, entries: list[Mismatch]) -> None:
        for number, m in enumerate(entries, 1):
            self.message(numbered_mismatch(number, m))
        self.message(f"mismatches: {mismatch_count(len(entries))} recorded in this session")

    def mismatch_log(self, path: str, entries: list[LoggedMismatch]) -> None:
        """``mismatches -l FILE``: a qio-nbd record file, listed like the session's mismatches,
        each entry followed by where it came from."""
        for number, logged in enumerate(entries, 1):
            self.message(numbered_mismatch(number, logged.mismatch))
            self.message(f"   {mismatch_origin(logged)}")
        self.message(f"mismatches: {mismatch_count(len(entries))} recorded in {path}")

    def verify(self, r: VerifyResult, quiet: bool) -> None:
        if not quiet and r.extents:
            self.message(f"{'offset':>18} {'length':>14} {'first sector':>14} {'last sector':>14}")
            for e in r.extents:
                self.message(
                    f"{e.offset:>18} {e.length:>14} {e.first_sector:>14} {e.last_sector:>14}"
                )
        count = len(r.extents)
        status = " (interrupted)" if r.cancelled else ""
        self.message(
            f"verify: {count} mismatching extent{'s' if count != 1 else ''}, "
            f"{r.differing_bytes} bytes differ in {r.length} bytes at offset {r.offset}{status}"
        )

    def diff(self, r: DiffResult) -> None:
        self.out("".join(diff_lines(r)))

    def graph(self, tree: GraphNode, short: bool) -> None:
        if short:
            self.message(one_line(tree))
            return
        self.out("".join(graph_lines(tree)))

    def locate(self, step: LocateStep) -> None:
        self.out("".join(locate_lines(step)))


# -- diff ----------------------------------------------------------------------------------
def _mark_line(indent: int, raw: bytes, test: bytes) -> str:
    marks = " ".join("^^" if a != b else "  " for a, b in zip(raw, test, strict=True))
    return f"{'':{indent}}{marks.ljust(47)}{'':4}{marks}".rstrip() + "\n"


def _skipped_line(indent: int, count: int) -> str:
    return f"{'':{indent}}... {count} identical line{'s' if count != 1 else ''}\n"


def diff_lines(r: DiffResult) -> list[str]:
    """The plain side-by-side dump: raw on the left, test on the right; a differing line is
    marked '!' and followed by '^^' under its differing bytes (visible without colour)."""
    rows = range(0, len(r.raw), 16)
    differs = [r.raw[i : i + 16] != r.test[i : i + 16] for i in rows]
    shown = [True] * len(differs)
    if r.context is not None:
        near: set[int] = set()
        for index, different in enumerate(differs):
            if different:
                near.update(range(index - r.context, index + r.context + 1))
        shown = [index in near for index in range(len(differs))]
    width = max(8, len(f"{r.offset + max(0, len(r.raw) - 1):x}"))
    indent = width + 3  # the offset, ':' and two spaces, as in qemu-io's hexdump
    out = [f"{'':{indent}}{'raw':47}{'':4}test\n"]
    skipped = 0
    for index, start in enumerate(rows):
        if not shown[index]:
            skipped += 1
            continue
        if skipped:
            out.append(_skipped_line(indent, skipped))
            skipped = 0
        raw, test = r.raw[start : start + 16], r.test[start : start + 16]
        mark = "!" if differs[index] else " "
        out.append(f"{r.offset + start:0{width}x}:  {raw.hex(' '):47} {mark}  {test.hex(' ')}\n")
        if differs[index]:
            out.append(_mark_line(indent, raw, test))
    if skipped:
        out.append(_skipped_line(indent, skipped))
    first = r.first_difference
    if first is None:
        out.append(f"diff: the children are identical in {len(r.raw)} bytes at offset {r.offset}\n")
    else:
        out.append(
            f"diff: {r.differing_bytes} of {len(r.raw)} bytes differ, "
            f"the first at offset {first} (sector {first // 512})\n"
        )
    return out


# -- graph ---------------------------------------------------------------------------------
def _node_text(node: GraphNode) -> str:
    parts = [label(node)]
    notes = [node.node_name]
    if node.probed:
        notes.append("probed")
    if node.read_only:
        notes.append("read-only")
    parts.append(f"[{', '.join(notes)}]")
    if node.options:
        parts.append(
            "{" + ", ".join(f"{k}={_option_text(v)}" for k, v in node.options.items()) + "}"
        )
    return " ".join(parts)


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def graph_lines(tree: GraphNode) -> list[str]:
    """One node per line, children indented under their parent with their role."""
    out = [_node_text(tree) + "\n"]

    def walk(node: GraphNode, prefix: str) -> None:
        for index, child in enumerate(node.children):
            last = index == len(node.children) - 1
            out.append(f"{prefix}{'└── ' if last else '├── '}{child.role}: {_node_text(child)}\n")
            walk(child, prefix + ("    " if last else "│   "))

    walk(tree, "")
    return out


def locate_lines(step: LocateStep) -> list[str]:
    """Each layer on one line (driver, what it opened, the offset it saw), its decisions
    indented under it, children below with their role, as ``graph`` draws the tree."""
    out: list[str] = []

    def walk(node: LocateStep, prefix: str, head: str) -> None:
        name = f" {node.filename}" if node.filename and not node.children else ""
        out.append(f"{head}{node.driver}{name} @ {node.offset} (0x{node.offset:x})\n")
        body = prefix + ("│   " if node.children else "    ")
        for fact in node.facts:
            out.append(f"{body}{fact}\n")
        for index, child in enumerate(node.children):
            last = index == len(node.children) - 1
            walk(child, prefix + ("    " if last else "│   "),
                 f"{prefix}{'└── ' if last else '├── '}{child.role}: ")

    walk(step, "", "")
    return out
