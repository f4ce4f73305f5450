"""Building blocks for translating qemu-iotests into conformance `.case` files.

A qemu-iotest is a bash script that interleaves image setup (qemu-img create, snapshot,
convert, commit, rebase), qemu-io invocations and checks.  The case format only allows setup
lines before the first `run`, so a test whose setup continues after some qemu-io runs is cut
into parts: every later part starts from scratch and replays, as setup, the state-changing
commands of the runs before it (through the real qemu-io), then adds its own setup lines.
"""

from __future__ import annotations

import shlex
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# qemu-io commands that change an image; only these are replayed when a later part of a test
# has to rebuild the state left by earlier runs
STATE_CHANGING = {"write", "writev", "aio_write", "discard", "truncate", "aio_flush", "flush"}
# kept in a replay so that the state-changing commands reach the same image the same way
KEEP_IN_REPLAY = STATE_CHANGING | {"open", "reopen", "close"}


# size of the file `qemu-img create -f qcow2 X 64M` makes (header, refcount table and block, L1)
PRISTINE_SIZE = 196616


@dataclass
class Run:
    """One qemu-io invocation: options (and file operand) plus its -c commands."""

    args: str
    cmds: list[str]
    replay: bool = True  # replayed as setup by later parts (set False when it fails on purpose)

    def lines(self) -> list[str]:
        return [f"run {self.args}".rstrip()] + [f"-c {c}" for c in self.cmds]

    def replay_line(self) -> str | None:
        """The run as a quiet real-qemu-io setup line, keeping only state-changing commands."""
        kept = [c for c in self.cmds if c.split()[0] in KEEP_IN_REPLAY]
        if not self.replay or not any(c.split()[0] in STATE_CHANGING for c in kept):
            return None
        words = shlex.split(self.args)
        argv: list[str] = []
        for c in kept:
            verb, _, rest = c.partition(" ")
            if verb in {"write", "writev", "aio_write", "discard", "truncate"} and rest:
                c = f"{verb} -q {rest}" if verb != "truncate" else c
            argv += ["-c", c]
        # options first, commands, then the file operand (as the harness does)
        if words and not words[-1].startswith("-") and len(words) > 1:
            return "qemu-io " + shlex.join(words[:-1] + argv + [words[-1]])
        return "qemu-io " + shlex.join(words + argv)


@dataclass
class Part:
    setup: list[str] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)


class Test:
    """One translated iotest (or one slice of it): collects setup and runs, writes .case files.

    `setup()` after a `run()` starts a new part; see the module docstring.
    """

    def __init__(self, name: str, desc: str, timeout: int | None = None) -> None:
        self.name = name
        self.desc = desc
        self.timeout = timeout
        self.parts: list[Part] = [Part()]

    # -- setup ----------------------------------------------------------------------------
    def setup(self, line: str) -> Test:
        part = self.parts[-1]
        if part.runs:
            # the previous part's whole setup, then its runs replayed
            replayed = [ln for r in part.runs if (ln := r.replay_line())]
            part = Part(setup=part.setup + replayed)
            self.parts.append(part)
        part.setup.append(line)
        return self

    def image(self, name: str, fmt: str, size: str, *opts: str) -> Test:
        return self.setup(" ".join(["image", name, fmt, size, *opts]))

    def img(self, args: str) -> Test:
        return self.setup(f"qemu-img {args}")

    def qio(self, args: str) -> Test:
        return self.setup(f"qemu-io {args}")

    def fill(self, name: str, pattern: str, offset: str, length: str) -> Test:
        return self.setup(f"fill {name} {pattern} {offset} {length}")

    def poke(self, name: str, offset: int | str, hexbytes: str) -> Test:
        return self.setup(f"poke {name} {offset} {hexbytes}")

    def snapshot(self, img: str, name: str) -> Test:
        """qemu-img snapshot -c, then zero the new snapshot's date (see `_pin_snapshot_dates`)."""
        self.img(f"snapshot -c {name} {img}")
        return self.setup(f"{PIN_DATES} {img}")

    def poke_file(self, img: str, offset: int, data: bytes) -> Test:
        """common.rc's poke_file: raw bytes into the image file, through `qemu-io -f raw`."""
        cmds = " ".join(f"-c 'write -q -P {b} {offset + i} 1'" for i, b in enumerate(data))
        return self.qio(f"-f raw {cmds} {img}")

    def wipe(self, img: str) -> Test:
        """A last run that replaces a damaged qcow2 image by a pristine one (`-f raw`).

        The harness requires every qcow2 image it finds at the end to pass `qemu-img check`;
        a test that leaves an image corrupt on purpose ends by overwriting it, on both sides,
        with the bytes of `pristine.qcow2` (an empty 64M qcow2 image made by `pristine()`).
        """
        return self.run(
            f"-f raw {img}",
            "truncate 0",
            f"truncate {PRISTINE_SIZE}",
            f"write -q -s pristine.qcow2 0 {PRISTINE_SIZE}",
            replay=False,
        )

    def pristine(self) -> Test:
        return self.img("create -q -f qcow2 pristine.qcow2 64M")

    def file(self, name: str, hexbytes: str = "") -> Test:
        return self.setup(f"file {name} {hexbytes}".rstrip())

    # -- runs -----------------------------------------------------------------------------
    def run(self, args: str, *cmds: str, replay: bool = True) -> Test:
        self.parts[-1].runs.append(Run(args, list(cmds), replay))
        return self

    # -- output ---------------------------------------------------------------------------
    def cases(self) -> dict[str, str]:
        """File name -> text of each part that has runs."""
        parts = [p for p in self.parts if p.runs]
        out: dict[str, str] = {}
        for i, part in enumerate(parts, 1):
            name = self.name if len(parts) == 1 else f"{self.name}_part{i}"
            desc = self.desc if len(parts) == 1 else f"{self.desc} [part {i}/{len(parts)}]"
            lines = [f"desc {desc}"]
            if self.timeout:
                lines.append(f"timeout {self.timeout}")
            lines += (
                _pin_snapshot_dates(part.setup)
                if any(ln.startswith(PIN_DATES) for ln in part.setup)
                else part.setup
            )
            for r in part.runs:
                lines += r.lines()
            out[f"{name}.case"] = "\n".join(lines) + "\n"
        return out


def write_cases(tests: list[Test], directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for t in tests:
        for fname, text in t.cases().items():
            (directory / fname).write_text(text)
            written.append(fname)
    return written


# -- common.pattern ---------------------------------------------------------------------------


def do_io(op: str, start: int, size: int, step: int, count: int, pattern: int) -> list[str]:
    """common.pattern's do_io: COUNT commands `OP -P PATTERN OFFSET SIZE`, OFFSET += STEP."""
    return [f"{op} -P {pattern} {start + i * step} {size}" for i in range(count)]


def io(op: str, start: int, size: int, step: int, count: int) -> list[str]:
    """common.pattern's io: the pattern is derived from the first offset."""
    return do_io(op, start, size, step, count, (start >> 9) % 256)


def is_allocated(start: int, size: int, step: int, count: int) -> list[str]:
    return [f"alloc {start + i * step} {size}" for i in range(count)]


def io_test(op: str, offset: int, cluster_size: int, num_large: int) -> list[list[str]]:
    """common.pattern's io_test: six qemu-io invocations (lists of commands)."""
    num_medium = num_large * num_large
    num_small = 4 * num_medium
    half = cluster_size // 2
    quarter = cluster_size // 4
    l2_size = cluster_size * cluster_size // 8
    calls = []
    calls.append(io(op, offset, cluster_size, cluster_size, num_small))
    offset += num_small * cluster_size
    calls.append(io(op, offset + half, half, cluster_size, num_small))
    offset += num_small * cluster_size
    calls.append(io(op, offset, half, cluster_size, num_small))
    offset += num_small * cluster_size
    calls.append(io(op, offset + quarter, half, cluster_size, num_small))
    offset += num_small * cluster_size
    calls.append(io(op, offset + half, cluster_size * 2, cluster_size * 3, num_medium))
    offset += num_medium * 3 * cluster_size
    offset = ((offset + l2_size - 1) & ~(l2_size - 1)) - 3 * half
    calls.append(io(op, offset, 6 * half, l2_size + half, num_large))
    return calls


# -- internal snapshots -----------------------------------------------------------------------

PIN_DATES = "#pin-snapshot-dates"


def _pin_snapshot_dates(setup: list[str]) -> list[str]:
    """Replace each PIN_DATES marker by raw writes that zero the snapshots' date fields.

    `qemu-img snapshot -c` stores the wall-clock time, and the harness requires the setup to
    produce identical files on both sides.  The marker is resolved by running the setup here,
    finding every snapshot table entry, and writing zeroes over its date_sec/date_nsec (bytes
    16..23 of the entry) with `qemu-io -f raw`.  qcow2 keeps the dates it reads, so later
    snapshot operations carry the zeroes along.
    """
    out: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        for line in setup:
            if line.startswith(PIN_DATES):
                img = line.split()[1]
                for off in _snapshot_entry_offsets(f"{d}/{img}"):
                    out.append(f"qemu-io -f raw -c 'write -q -P 0 {off + 16} 8' {img}")
                    _execute(out[-1], d)
                continue
            out.append(line)
            _execute(line, d)
    return out


def _execute(line: str, d: str) -> None:
    if line.startswith("#"):
        return
    kind, _, rest = line.partition(" ")
    toks = shlex.split(rest)
    if kind == "image":
        name, fmt, size = toks[:3]
        argv = ["qemu-img", "create", "-q", "-f", fmt]
        if toks[3:]:
            argv += ["-o", ",".join(toks[3:])]
        argv += [name, size]
    elif kind == "qemu-img":
        argv = ["qemu-img", *toks]
    elif kind == "qemu-io":
        argv = ["qemu-io", *toks]
    elif kind == "fill":
        argv = ["qemu-io", "-c", f"write -q -P {toks[1]} {toks[2]} {toks[3]}", toks[0]]
    else:
        raise ValueError(f"cannot pin snapshot dates across a {kind!r} setup line")
    subprocess.run(argv, cwd=d, check=True, capture_output=True)


def _snapshot_entry_offsets(path: str) -> list[int]:
    with open(path, "rb") as f:
        header = f.read(72)
        nb_snapshots, table = struct.unpack(">IQ", header[60:72])
        offsets = []
        pos = table
        for _ in range(nb_snapshots):
            f.seek(pos)
            entry = f.read(40)
            id_len, name_len = struct.unpack(">HH", entry[12:16])
            extra = struct.unpack(">I", entry[36:40])[0]
            offsets.append(pos)
            size = 40 + extra + id_len + name_len
            pos += (size + 7) & ~7
    return offsets
