"""The terminal renderer: qemu-io's information, drawn for a person at a terminal (rich).

Chosen by the command line only when standard output is a terminal and colour is not turned
off (``--color=auto|always|never``, ``NO_COLOR``); pipes and files always get the plain
renderer, so scripts see qemu-io's bytes.  The views add and lay out, they never change what
is said: every qemu-io line that carries a result is still printed (the hexdump keeps its
columns, ``help`` its words), with richer views after it:

* ``read -v``: coloured dump (``qio.render.colordump``);
* ``read -P`` failure: a window of the dump around the first wrong byte, the wrong bytes
  highlighted and the expected byte named;
* blkverify mismatch: the raw and test bytes side by side, differences highlighted;
* ``map``: a table and a one-line allocation bar; ``info``: a panel; ``help``: a table;
* streamed requests running longer than half a second: a progress bar on stderr (only when
  stderr is a terminal), erased before anything else is printed.

All drawing goes through one rich console that renders into a string; the text then leaves
through the plain renderer's ``out``/``err`` doors, so ordering with plain lines is kept.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console as RichConsole
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from qio.numbers import cvtstr
from qio.output import Console
from qio.render.colordump import ColorDump, byte_style
from qio.render.hexdump import ASCII_TABLE
from qio.render.plain import (
    PlainRenderer,
    Progress,
    dump_specific,
    mismatch_count,
    mismatch_origin,
    numbered_mismatch,
)
from qio.results import (
    InfoResult,
    LoggedMismatch,
    MapRun,
    Mismatch,
    PatternMismatch,
    VerifyResult,
)

if TYPE_CHECKING:
    from qio.commands.table import Command

PROGRESS_DELAY = 0.5  # seconds before a bar appears (short requests never show one)
PROGRESS_INTERVAL = 0.1  # seconds between redraws
COLLAPSE_ENV = "QIO_DUMP_COLLAPSE"

STYLE_WRONG = "bold white on red"
STYLE_EXPECTED = "bold green"
STYLE_DIFF_RAW = "bold black on green"
STYLE_DIFF_TEST = "bold white on red"
STYLE_HEADER = "bold"

# map bar: kind -> (character, style, legend)
MAP_KINDS: dict[str, tuple[str, str, str]] = {
    "data": ("█", "green", "allocated"),
    "zero": ("▒", "cyan", "zero"),
    "backing": ("▓", "blue", "from backing"),
    "unallocated": ("░", "dim", "not allocated"),
}


def collapse_requested() -> bool:
    return os.environ.get(COLLAPSE_ENV, "") not in ("", "0", "no", "off", "false")


def run_kind(run: MapRun) -> str:
    if run.zero:
        return "zero"
    if run.allocated:
        return "data"
    return "backing" if run.depth > 0 else "unallocated"


def map_bar_kinds(runs: list[MapRun], width: int) -> list[str]:
    """One kind per bar cell: the most telling kind present anywhere in the cell (data, then
    zero, then backing, then not allocated), so a 4 KiB write in a huge image still shows."""
    total = sum(r.length for r in runs)
    if total == 0 or width <= 0:
        return []
    cells: list[str] = []
    i = 0
    for cell in range(width):
        lo = total * cell // width
        hi = max(total * (cell + 1) // width, lo + 1)
        while i < len(runs) and runs[i].offset + runs[i].length <= lo:
            i += 1
        present: set[str] = set()
        j = i
        while j < len(runs) and runs[j].offset < hi:
            present.add(run_kind(runs[j]))
            j += 1
        cells.append(next((k for k in MAP_KINDS if k in present), "unallocated"))
    return cells


class TerminalProgress(Progress):
    """A one-line bar on stderr, drawn after PROGRESS_DELAY and erased when the request ends."""

    def __init__(
        self, renderer: TerminalRenderer, verb: str, total: int, clock: Callable[[], float]
    ) -> None:
        self.renderer = renderer
        self.verb = verb
        self.total = total
        self.clock = clock
        self.start = clock()
        self.last_draw = 0.0

    def update(self, done: int) -> None:
        t = self.clock()
        elapsed = t - self.start
        if elapsed < PROGRESS_DELAY or t - self.last_draw < PROGRESS_INTERVAL:
            return
        self.last_draw = t
        self.renderer.draw_progress(self.line(done, elapsed))

    def line(self, done: int, elapsed: float) -> str:
        total = max(self.total, 1)
        rate = done / elapsed if elapsed > 0 else 0.0
        bar = ProgressBar(total=total, completed=done, width=30)
        text = Text.assemble(
            (f"{self.verb} ", STYLE_HEADER),
            self.renderer.render_inline(bar),
            f" {100 * done / total:3.0f}%  {cvtstr(float(done))} of {cvtstr(float(self.total))}",
            (f"  {cvtstr(rate)}/s", "dim"),
        )
        return self.renderer.render_line(text)

    def close(self) -> None:
        self.renderer.clear_progress()


class TerminalRenderer(PlainRenderer):
    styled = True

    def __init__(
        self,
        console: Console,
        *,
        width: int | None = None,
        color_system: str | None = "auto",
        collapse: bool | None = None,
        progress_on_stderr: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(console)
        self.fixed_width = width
        self.clock = clock
        self.rich = RichConsole(
            file=io.StringIO(),
            force_terminal=True,
            color_system=color_system,  # type: ignore[arg-type]
            no_color=False,  # the command line already honoured NO_COLOR
            width=width or self._terminal_width(),
            highlight=False,
            emoji=False,
            markup=False,
            legacy_windows=False,
        )
        self._codes: dict[str, tuple[str, str]] = {}
        self.dumper = ColorDump(
            self.style_codes, collapse_requested() if collapse is None else collapse
        )
        self.progress_on_stderr = (
            console.err.isatty if progress_on_stderr is None else progress_on_stderr
        )
        self._progress_shown = False
        self._settling = False

    # -- rich plumbing ---------------------------------------------------------------------
    @staticmethod
    def _terminal_width() -> int:
        return shutil.get_terminal_size((100, 24)).columns

    def render(self, renderable: RenderableType) -> str:
        """What rich prints for ``renderable`` at the current width, as text with escapes."""
        if self.fixed_width is None:
            self.rich.width = self._terminal_width()
        with self.rich.capture() as capture:
            self.rich.print(renderable)
        return capture.get()

    def render_line(self, text: Text) -> str:
        """One line, no newline, cut at the width (for the progress line)."""
        text.no_wrap = True
        text.overflow = "ellipsis"
        return self.render(text).rstrip("\n")

    def render_inline(self, renderable: RenderableType) -> Text:
        """A renderable (a progress bar) as styled text to embed in a line."""
        with self.rich.capture() as capture:
            self.rich.print(renderable, end="")
        return Text.from_ansi(capture.get())

    def style_codes(self, style: str) -> tuple[str, str]:
        """The escape codes rich uses around text in ``style`` (empty without colour)."""
        if not style:
            return "", ""
        codes = self._codes.get(style)
        if codes is None:
            with self.rich.capture() as capture:
                self.rich.print(Text("X", style=style), end="")
            pre, _, post = capture.get().partition("X")
            codes = self._codes[style] = (pre, post)
        return codes

    # -- the output doors: tidy the screen first -------------------------------------------
    def _settle(self) -> None:
        """Before any output: erase the progress line, end a collapsed dump run."""
        if self._settling:
            return
        self._settling = True
        try:
            self.clear_progress()
            pending = self.dumper.finish()
            if pending:
                super().out(pending)
        finally:
            self._settling = False

    def out(self, text: str) -> None:
        self._settle()
        super().out(text)

    def out_bytes(self, data: bytes) -> None:
        self._settle()
        super().out_bytes(data)

    def err(self, text: str) -> None:
        self._settle()
        super().err(text)

    def flush(self) -> None:
        self._settle()
        super().flush()

    # -- progress --------------------------------------------------------------------------
    def progress(self, verb: str, total: int, enabled: bool = True) -> Progress:
        if not enabled or not self.progress_on_stderr:
            return Progress()
        return TerminalProgress(self, verb, total, self.clock)

    def draw_progress(self, line: str) -> None:
        self.console.out.flush()
        self.console.err.write("\r" + line + "\x1b[K")
        self._progress_shown = True

    def clear_progress(self) -> None:
        if self._progress_shown:
            self._progress_shown = False
            self.console.err.write("\r\x1b[K")

    # -- hexdump ---------------------------------------------------------------------------
    def hexdump(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.clear_progress()
        # Bypass _settle: a collapsed run may continue into this piece.
        PlainRenderer.out(self, self.dumper.dump(data, offset))

    def _dump_row(
        self, offset: int, row: bytes, style_of: Callable[[int, int], str | None]
    ) -> Text:
        """One dump row in qemu-io's columns; ``style_of(offset, byte)`` may override a
        byte's style (None keeps its usual colour)."""
        text = Text()
        text.append(f"{offset:08x}:", style="dim")
        text.append("  ")
        for i, b in enumerate(row):
            text.append(f"{b:02x}", style=style_of(offset + i, b) or byte_style(b))
            text.append(" ")
        text.append(" ")
        for i, b in enumerate(row):
            text.append(chr(ASCII_TABLE[b]), style=style_of(offset + i, b) or byte_style(b))
        return text

    # -- results ---------------------------------------------------------------------------
    def pattern_mismatch(self, m: PatternMismatch) -> None:
        super().pattern_mismatch(m)
        if m.first_bad is None or not m.window:
            return
        end = m.offset + m.length
        bad_value = m.window[m.first_bad - m.window_offset]

        def style_of(at: int, b: int) -> str | None:
            return STYLE_WRONG if m.offset <= at < end and b != m.pattern else None

        lines: list[Text] = [
            Text.assemble(
                "  first wrong byte at offset ",
                (f"{m.first_bad} (0x{m.first_bad:x})", STYLE_HEADER),
                ": ",
                (f"{bad_value:02x}", STYLE_WRONG),
                ", expected ",
                (f"{m.pattern:02x}", STYLE_EXPECTED),
            )
        ]
        for start in range(0, len(m.window), 16):
            at = m.window_offset + start
            row = m.window[start : start + 16]
            lines.append(Text("  ") + self._dump_row(at, row, style_of))
            if at <= m.first_bad < at + len(row):
                column = 2 + len(f"{at:08x}:") + 2 + 3 * (m.first_bad - at)
                lines.append(
                    Text(" " * column)
                    + Text("^^", style=STYLE_WRONG)
                    + Text(" expected ")
                    + Text(f"{m.pattern:02x}", style=STYLE_EXPECTED)
                )
        self.out(self.render(Group(*lines)))

    def mismatch(self, m: Mismatch, fatal: bool) -> None:
        super().mismatch(m, fatal)
        view = self.render(self.mismatch_view(m))
        if fatal:
            self.err(view)
        else:
            self.out(view)

    def mismatch_log(self, path: str, entries: list[LoggedMismatch]) -> None:
        """A record file on a terminal: each entry as it would have been shown live (the line,
        where it came from, the raw and test bytes side by side), then the count."""
        for number, logged in enumerate(entries, 1):
            self.message(numbered_mismatch(number, logged.mismatch))
            self.message(f"   {mismatch_origin(logged)}")
            m = logged.mismatch
            if m.offset is None or m.raw_bytes or m.test_bytes:
                self.out(self.render(self.mismatch_view(m)))
        self.message(f"mismatches: {mismatch_count(len(entries))} recorded in {path}")

    def mismatch_view(self, m: Mismatch) -> RenderableType:
        title = Text()
        title.append(f"blkverify {m.op} mismatch", style=STYLE_HEADER)
        if m.offset is None:
            body = Text.assemble(
                f"request offset {m.request_offset}, {m.request_bytes} bytes: ",
                "test returned ",
                (_errno_text(m.test_ret), STYLE_DIFF_TEST),
                ", raw returned ",
                (_errno_text(m.raw_ret), STYLE_DIFF_RAW),
            )
            return Panel(body, title=title, title_align="left", expand=False)
        title.append(
            f": first difference at offset {m.offset} (0x{m.offset:x}), sector {m.sector}",
            style=STYLE_HEADER,
        )
        title.append(f"  (request at {m.request_offset}, {m.request_bytes} bytes)", style="dim")
        per_row = 16 if (self.fixed_width or self._terminal_width()) >= 10 + 2 * 48 + 6 else 8
        table = Table(box=None, padding=(0, 1), pad_edge=False)
        table.add_column("offset", style="dim", no_wrap=True)
        table.add_column("raw (reference)", no_wrap=True)
        table.add_column("test (image under test)", no_wrap=True)
        size = max(len(m.raw_bytes), len(m.test_bytes))
        for start in range(0, size, per_row):
            raw = m.raw_bytes[start : start + per_row]
            test = m.test_bytes[start : start + per_row]
            raw_text = Text()
            test_text = Text()
            for i in range(max(len(raw), len(test))):
                a = raw[i] if i < len(raw) else None
                b = test[i] if i < len(test) else None
                differs = a != b
                raw_text.append(
                    "  " if a is None else f"{a:02x}",
                    style=STYLE_DIFF_RAW if differs else byte_style(a or 0),
                )
                test_text.append(
                    "  " if b is None else f"{b:02x}",
                    style=STYLE_DIFF_TEST if differs else byte_style(b or 0),
                )
                raw_text.append(" ")
                test_text.append(" ")
            table.add_row(f"{m.window_offset + start:08x}:", raw_text, test_text)
        return Group(title, table)

    def map(self, runs: list[MapRun]) -> None:
        table = Table(box=None, padding=(0, 2), show_edge=False)
        table.add_column("offset", justify="right")
        table.add_column("length", justify="right")
        table.add_column("status")
        for r in runs:
            char, style, legend = MAP_KINDS[run_kind(r)]
            label = legend if run_kind(r) != "backing" else f"from backing (depth {r.depth})"
            table.add_row(
                f"{cvtstr(float(r.offset))} (0x{r.offset:x})",
                f"{cvtstr(float(r.length))} (0x{r.length:x})",
                Text(f"{char} {label}", style=style),
            )
        width = max((self.fixed_width or self._terminal_width()) - 2, 10)
        bar = Text()
        for kind, cells in itertools.groupby(map_bar_kinds(runs, width)):
            char, style, _ = MAP_KINDS[kind]
            bar.append(char * len(list(cells)), style=style)
        present = {run_kind(r) for r in runs}
        legend = Text("  ").join(
            Text(f"{MAP_KINDS[k][0]} {MAP_KINDS[k][2]}", style=MAP_KINDS[k][1])
            for k in MAP_KINDS
            if k in present
        )
        self.out(self.render(Group(table, Text(""), bar, legend)))

    def info(self, r: InfoResult) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        for name in r.format_names:
            grid.add_row("format name", name)
        body: list[RenderableType] = [grid]
        if r.cluster_size is not None and r.vm_state_offset is not None:
            grid.add_row("cluster size", cvtstr(float(r.cluster_size)))
            grid.add_row("vm state offset", cvtstr(float(r.vm_state_offset)))
            if r.specific is not None:
                body.append(Text("Format specific information:", style="bold"))
                body.append(Text(dump_specific(r.specific, 4).rstrip("\n")))
        self.out(self.render(Panel(Group(*body), title="info", title_align="left", expand=False)))

    def verify(self, r: VerifyResult, quiet: bool) -> None:
        if quiet or not r.extents:
            super().verify(r, quiet=True)
            return
        table = Table(box=None, padding=(0, 2))
        for heading in ("offset", "length", "first sector", "last sector"):
            table.add_column(heading, justify="right", style="bold" if heading == "offset" else "")
        for e in r.extents:
            table.add_row(str(e.offset), str(e.length), str(e.first_sector), str(e.last_sector))
        self.out(self.render(table))
        super().verify(r, quiet=True)

    def help_list(self, commands: list[Command]) -> None:
        # qemu-io's "NAME ARGS -- DESCRIPTION" lines with the names in a column (aliases dim).
        table = Table(box=None, padding=(0, 1), show_header=False, pad_edge=False)
        table.add_column(no_wrap=True)
        table.add_column(ratio=1)
        for c in commands:
            name = Text(c.name, style="bold")
            if c.altname:
                name.append(f" {c.altname}", style="dim")
            usage = Text(f"{c.args} " if c.args else "", style="cyan")
            usage.append(f"-- {c.oneline}", style="default")
            table.add_row(name, usage)
        hint = Text("Use 'help commandname' for extended help.", style="dim")
        self.out(self.render(Group(table, Text(""), hint)))

    def help_command(self, cmd: Command, as_name: str) -> None:
        body = Text.assemble(
            (as_name, "bold"),
            (f" {cmd.args}" if cmd.args is not None else "", "cyan"),
            f" -- {cmd.oneline}",
        )
        if not cmd.help:
            self.out(self.render(body))
            return
        for raw in cmd.help.rstrip("\n").split("\n"):
            body.append("\n")
            stripped = raw.strip()
            if stripped.startswith("-") and ", -- " in stripped:
                flag, _, text = stripped.partition(", -- ")
                body.append(" ")
                body.append(flag, style="bold cyan")
                body.append(", -- " + text)
            elif stripped.startswith("'"):
                body.append(raw, style="green")
            else:
                body.append(raw)
        self.out(self.render(Panel(body, expand=False)))


def _errno_text(ret: int) -> str:
    if ret == 0:
        return "0 (success)"
    return f"{ret} ({os.strerror(-ret)})"
