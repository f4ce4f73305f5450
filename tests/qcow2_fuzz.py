"""Differential fuzzing of qio against qemu-io on random qcow2 configurations.

A *case* is a setup (argv lists for the real ``qemu-img``/``qemu-io``, run once, then the
directory is copied for each side) and one or more qemu-io invocations.  The generator
draws a qcow2 configuration (cluster size, compat level, refcount width, extended L2,
compression type, lazy refcounts, preallocation, backing chains, external data files,
internal snapshots, runtime cache options, cache/discard modes, ``-C``/``-r``) and a random
command sequence over it (read/write with their switches, readv/writev, aio requests,
discard, alloc, map, info, length, truncate, flush, reopen, open/close) at odd offsets and
lengths, past the end and huge.

Compared, after masking timing and program names as ``tests.qcow2_workload`` does:

* hard: exit status, stdout, stderr of every invocation; ``qemu-img info`` (JSON, file
  names, sizes on disk and snapshot dates aside), ``qemu-img check`` output of both images,
  ``qemu-img compare`` of the guest contents, ``qemu-img map --output=json`` without host
  offsets;
* soft (reported, worth investigating, not always a bug): host offsets in the map and the
  bytes of the image files.

Cases with aio requests run through qemu-io twice; when qemu-io disagrees with itself the
case is dropped.  Usage::

    python -m tests.qcow2_fuzz --seeds 0:200 -j 2          # hunt
    python -m tests.qcow2_fuzz --seed 17 --show            # print one case
    python -m tests.qcow2_fuzz --seed 17 --minimise --write tests/qcow2_cases/x.case
    python -m tests.qcow2_fuzz --case tests/qcow2_cases/x.case
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import difflib
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.qcow2_workload import Outcome, normalise, qio_argv, run_tool, tool_env

KiB = 1024
MiB = 1024 * 1024
CLUSTER_SIZES = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 1 * MiB, 2 * MiB]
CACHE_MODES = ["writeback", "writethrough", "none", "directsync", "unsafe"]
PATTERN_BYTES = [0x00, 0x01, 0x11, 0x5A, 0xA5, 0xCD, 0xFF]


# =========================================================================================
# Cases
# =========================================================================================
@dataclass
class Run:
    """One qemu-io invocation: ``OPTIONS -c CMD... [FILE]``."""

    options: list[str]
    commands: list[str]
    file: str | None = "t.qcow2"

    def argv(self) -> list[str]:
        argv = list(self.options)
        for command in self.commands:
            argv += ["-c", command]
        if self.file is not None:
            argv.append(self.file)
        return argv


@dataclass
class Case:
    desc: str
    setup: list[list[str]]
    runs: list[Run]
    top: str = "t.qcow2"
    top_format: str = "qcow2"
    timeout: float = 120
    strict_bytes: bool = False  # the image files themselves must be identical

    def to_text(self) -> str:
        """The shared conformance runner's case format."""
        lines = [f"desc {self.desc}"]
        if self.strict_bytes:
            lines.append("# strict-bytes")
        for argv in self.setup:
            lines.append(shlex.join(argv))
        for run in self.runs:
            lines.append("run " + shlex.join(run.options + ([run.file] if run.file else [])))
            lines += [f"-c {c}" for c in run.commands]
        return "\n".join(lines) + "\n"


def parse_case(text: str) -> Case:
    """Read a case written by ``Case.to_text`` (a subset of the conformance format:
    ``desc``, ``image``, ``qemu-img``, ``qemu-io``, ``fill``, ``run``, ``-c``)."""
    case = Case("", [], [])
    current: Run | None = None
    for raw in text.split("\n"):
        line = raw.strip()
        if line == "# strict-bytes":
            case.strict_bytes = True
        if not line or line.startswith("#"):
            continue
        if line.startswith("-c "):
            assert current is not None, "-c before run"
            current.commands.append(raw.split("-c ", 1)[1])
            continue
        word, _, rest = line.partition(" ")
        if word == "desc":
            case.desc = rest
        elif word == "timeout":
            case.timeout = float(rest)
        elif word in ("qemu-img", "qemu-io"):
            case.setup.append([word, *shlex.split(rest)])
        elif word == "image":
            name, fmt, size, *opts = shlex.split(rest)
            argv = ["qemu-img", "create", "-q", "-f", fmt]
            if opts:
                argv += ["-o", ",".join(opts)]
            case.setup.append([*argv, name, size])
        elif word == "fill":
            name, pattern, offset, length = shlex.split(rest)
            case.setup.append(["qemu-io", "-c", f"write -q -P {pattern} {offset} {length}", name])
        elif word == "run":
            tokens = shlex.split(rest)
            file = None
            if tokens and not tokens[-1].startswith("-") and _operand_is_file(tokens):
                file = tokens.pop()
            current = Run(tokens, [], file)
            case.runs.append(current)
        else:
            raise ValueError(f"unknown case line: {line}")
    if case.runs and case.runs[0].file:
        case.top = case.runs[0].file
    return case


_WITH_ARGUMENT = {"-f", "-t", "-d", "-i", "-T", "-o", "--cache", "--format", "--discard"}


def _operand_is_file(tokens: list[str]) -> bool:
    return len(tokens) < 2 or tokens[-2] not in _WITH_ARGUMENT


# =========================================================================================
# Generation
# =========================================================================================
@dataclass
class Geometry:
    """What the command generator needs to know about the top image."""

    size: int
    cluster: int
    subcluster: int
    compressible: bool  # write -c possible (no external data file)
    version: int


@dataclass
class ImageConfig:
    cluster: int = 65536
    compat: str = "1.1"
    refcount_bits: int = 16
    extended_l2: bool = False
    compression: str = "zlib"
    lazy_refcounts: bool = False
    preallocation: str = "off"
    size: int = 4 * MiB
    data_file: bool = False
    data_file_raw: bool = False
    backing: list[tuple[str, int]] = field(default_factory=list)  # (format, size) top first

    def create_options(self) -> str:
        opts = [f"cluster_size={self.cluster}", f"compat={self.compat}"]
        if self.refcount_bits != 16:
            opts.append(f"refcount_bits={self.refcount_bits}")
        if self.extended_l2:
            opts.append("extended_l2=on")
        if self.compression != "zlib":
            opts.append(f"compression_type={self.compression}")
        if self.lazy_refcounts:
            opts.append("lazy_refcounts=on")
        if self.preallocation != "off":
            opts.append(f"preallocation={self.preallocation}")
        if self.data_file:
            opts.append("data_file=t.data")
            if self.data_file_raw:
                opts.append("data_file_raw=on")
        return ",".join(opts)


def _pick_size(rng: random.Random, cluster: int) -> int:
    r = rng.random()
    if r < 0.15:
        return rng.randrange(1, 64) * 512  # tiny, often below one cluster
    if r < 0.25:
        return rng.randrange(1, 20000) * 512 + rng.choice([0, 0, 1, 100, 511])  # odd size
    clusters = rng.choice([1, 2, 3, 7, 16, 33, 64, 100, 300])
    size = clusters * cluster + rng.choice([0, 0, 0, 512, -512, 4096])
    return max(512, min(size, 24 * MiB))


def random_image_config(rng: random.Random) -> ImageConfig:
    cfg = ImageConfig()
    cfg.cluster = rng.choice(CLUSTER_SIZES + [4096, 65536, 65536])
    cfg.compat = "0.10" if rng.random() < 0.15 else "1.1"
    v3 = cfg.compat == "1.1"
    if v3:
        cfg.refcount_bits = rng.choice([1, 2, 4, 8, 16, 16, 16, 32, 64])
        cfg.extended_l2 = cfg.cluster >= 16384 and rng.random() < 0.3
        cfg.compression = "zstd" if rng.random() < 0.25 else "zlib"
        cfg.lazy_refcounts = rng.random() < 0.2
        if rng.random() < 0.12:
            cfg.data_file = True
            cfg.data_file_raw = rng.random() < 0.5
    cfg.size = _pick_size(rng, cfg.cluster)
    if rng.random() < 0.3 and not (cfg.data_file and cfg.data_file_raw):
        for _ in range(rng.choice([1, 1, 2, 3])):
            fmt = "raw" if rng.random() < 0.3 else "qcow2"
            scale = rng.choice([0.5, 1, 1, 1.5, 0.25])
            bsize = max(512, int(cfg.size * scale) // 512 * 512)
            cfg.backing.append((fmt, bsize))
    if rng.random() < 0.12 and cfg.size <= 8 * MiB and not cfg.backing:
        cfg.preallocation = rng.choice(["metadata", "falloc", "full"])
    return cfg


def _fill_commands(rng: random.Random, size: int, count: int) -> list[str]:
    cmds = []
    for _ in range(count):
        off = rng.randrange(0, max(1, size)) // 512 * 512
        length = min(size - off, rng.choice([512, 4096, 65536, 3 * 65536, 7 * 512]))
        if length <= 0:
            continue
        if rng.random() < 0.2:
            cmds.append(f"write -q -z {off} {length}")
        else:
            cmds.append(f"write -q -P 0x{rng.randrange(1, 256):02x} {off} {length}")
    return cmds


def build_setup(rng: random.Random, cfg: ImageConfig) -> tuple[list[list[str]], int]:
    """Setup argv lists (bases first) and the number of internal snapshots made."""
    setup: list[list[str]] = []
    names = [f"b{i}.{fmt}" for i, (fmt, _) in enumerate(cfg.backing)]
    # Bottom of the chain first.
    for depth in range(len(cfg.backing) - 1, -1, -1):
        fmt, bsize = cfg.backing[depth]
        name = names[depth]
        argv = ["qemu-img", "create", "-q", "-f", fmt]
        if fmt == "qcow2":
            argv += ["-o", f"cluster_size={rng.choice([512, 4096, 65536])}"]
        if depth + 1 < len(cfg.backing):
            below_fmt = cfg.backing[depth + 1][0]
            if fmt != "qcow2":
                # raw cannot have a backing file: make it a qcow2 layer after all
                argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
                cfg.backing[depth] = ("qcow2", bsize)
                names[depth] = name = f"b{depth}.qcow2"
            argv += ["-b", names[depth + 1], "-F", below_fmt]
        setup.append([*argv, name, str(bsize)])
        fills = _fill_commands(rng, bsize, rng.randrange(1, 5))
        if fills:
            io = ["qemu-io", "-f", cfg.backing[depth][0]]
            for c in fills:
                io += ["-c", c]
            setup.append([*io, name])
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", cfg.create_options()]
    if cfg.backing:
        argv += ["-b", names[0], "-F", cfg.backing[0][0]]
    setup.append([*argv, "t.qcow2", str(cfg.size)])
    snapshots = 0
    if rng.random() < 0.4:
        fills = _fill_commands(rng, cfg.size, rng.randrange(1, 6))
        if rng.random() < 0.3 and not cfg.data_file:
            cfg_c = cfg.cluster
            first = rng.randrange(0, max(1, cfg.size // cfg_c))
            if (first + 1) * cfg_c <= cfg.size:
                fills.append(f"write -q -c -P 0x3c {first * cfg_c} {cfg_c}")
        io = ["qemu-io", "-f", "qcow2"]
        for c in fills:
            io += ["-c", c]
        setup.append([*io, "t.qcow2"])
    if rng.random() < 0.15 and not cfg.data_file:
        for i in range(rng.choice([1, 1, 2])):
            setup.append(["qemu-img", "snapshot", "-c", f"snap{i}", "t.qcow2"])
            snapshots += 1
            fills = _fill_commands(rng, cfg.size, rng.randrange(1, 3))
            io = ["qemu-io", "-f", "qcow2"]
            for c in fills:
                io += ["-c", c]
            setup.append([*io, "t.qcow2"])
    return setup, snapshots


def _size_text(rng: random.Random, n: int) -> str:
    """Spell a number the ways qemu-io accepts (plain, hex, k/M suffixes)."""
    if n > 0 and rng.random() < 0.15:
        for unit, suffix in ((MiB, "M"), (KiB, "k")):
            if n % unit == 0:
                return f"{n // unit}{suffix}"
    if rng.random() < 0.05:
        return hex(n)
    return str(n)


class CommandGenerator:
    def __init__(
        self, rng: random.Random, geo: Geometry, read_only: bool, image_opts: bool = False
    ) -> None:
        self.rng = rng
        self.geo = geo
        self.read_only = read_only
        self.image_opts = image_opts  # the run uses --image-opts: open takes an option string
        self.open = True

    # -- offsets and lengths -------------------------------------------------------------------
    def offset(self) -> int:
        rng, g = self.rng, self.geo
        size = max(g.size, 1)
        r = rng.random()
        if r < 0.3:
            return rng.randrange(0, -(-size // g.cluster)) * g.cluster
        if r < 0.45:
            return rng.randrange(0, -(-size // g.subcluster)) * g.subcluster
        if r < 0.6:
            return rng.randrange(0, -(-size // 512)) * 512
        if r < 0.8:
            return rng.randrange(0, size)
        if r < 0.9:
            return max(0, size - rng.choice([1, 512, 513, g.cluster, g.subcluster, 4096]))
        if r < 0.96:
            return size + rng.choice([0, 0, 1, 512, g.cluster])
        return rng.choice([1 << 40, (1 << 63) - 512, 1 << 62, 0x7FFFFFFF])

    def length(self, offset: int, max_clusters: int = 4) -> int:
        rng, g = self.rng, self.geo
        r = rng.random()
        room = g.size - offset
        if r < 0.04:
            return 0
        if r < 0.3:
            n = rng.randrange(1, max_clusters + 1) * g.cluster
        elif r < 0.45:
            n = rng.randrange(1, 4 * max_clusters + 1) * g.subcluster
        elif r < 0.6:
            n = rng.randrange(1, 17) * 512
        elif r < 0.85:
            n = rng.randrange(1, max_clusters * g.cluster + 1)
        elif r < 0.93 and room > 0:
            n = room  # exactly to the end
        elif r < 0.97:
            n = room + rng.choice([1, 512, 4096])  # past the end
        else:
            n = rng.choice([1 << 31, (1 << 31) - 512, 1 << 33])
        if n > 4 * MiB and r < 0.97:
            n = 4 * MiB
        return max(0, n)

    def span(self, max_clusters: int = 4, in_bounds: float = 0.85) -> tuple[int, int]:
        off = self.offset()
        n = self.length(off, max_clusters)
        if self.rng.random() < in_bounds and off < self.geo.size and off + n > self.geo.size:
            n = self.geo.size - off
        return off, n

    def pattern(self) -> str:
        b = self.rng.choice(PATTERN_BYTES + [self.rng.randrange(256)])
        return f"0x{b:02x}" if self.rng.random() < 0.8 else str(b)

    def qflag(self) -> str:
        r = self.rng.random()
        return "-q " if r < 0.6 else ("-C " if r < 0.7 else "")

    # -- commands ------------------------------------------------------------------------------
    def command(self) -> str:
        rng = self.rng
        kinds = [
            (18, self.write),
            (4, self.write_zero),
            (3, self.write_compressed),
            (14, self.read),
            (3, self.readv),
            (3, self.writev),
            (3, self.aio),
            (6, self.discard),
            (5, self.alloc),
            (3, lambda: "map"),
            (1, lambda: "info"),
            (1, lambda: "length"),
            (2, self.truncate),
            (2, lambda: "flush"),
            (2, self.reopen),
            (1, self.open_close),
        ]
        total = sum(w for w, _ in kinds)
        pick = rng.uniform(0, total)
        for weight, make in kinds:
            pick -= weight
            if pick <= 0:
                return make()
        return "map"

    def _offlen(self, off: int, n: int) -> str:
        return f"{_size_text(self.rng, off)} {_size_text(self.rng, n)}"

    def write(self) -> str:
        off, n = self.span()
        flags = self.qflag()
        if self.rng.random() < 0.1:
            flags += "-f "
        if self.rng.random() < 0.8:
            flags += f"-P {self.pattern()} "
        return f"write {flags}{self._offlen(off, n)}"

    def write_zero(self) -> str:
        off, n = self.span(8)
        flags = self.qflag() + "-z "
        r = self.rng.random()
        if r < 0.4:
            flags += "-u "
        elif r < 0.5:
            flags += "-n "
        elif r < 0.55:
            flags += "-u -n "
        return f"write {flags}{self._offlen(off, n)}"

    def write_compressed(self) -> str:
        g, rng = self.geo, self.rng
        clusters = max(1, -(-g.size // g.cluster))
        first = rng.randrange(0, clusters)
        n = rng.choice([1, 1, 1, 2, 3]) * g.cluster
        off = first * g.cluster
        if rng.random() < 0.1:
            off += 512
        if off + n > g.size and rng.random() < 0.7:
            n = max(512, -(-(g.size - off) // 512) * 512)
        return f"write {self.qflag()}-c -P {self.pattern()} {off} {n}"

    def read(self) -> str:
        rng = self.rng
        off, n = self.span()
        r = rng.random()
        if r < 0.15 and n <= 96:
            return f"read -v {off} {n}"
        if r < 0.2:
            return f"read -v {off} {min(n, rng.randrange(1, 40))}"
        flags = self.qflag()
        if rng.random() < 0.7:
            flags += f"-P {self.pattern()} "
            if rng.random() < 0.1 and n > 1:
                s = rng.randrange(0, n)
                flags += f"-s {s} -l {rng.randrange(0, n - s + 1)} "
        return f"read {flags}{self._offlen(off, n)}"

    def _vector(self) -> tuple[int, list[int]]:
        off = self.offset()
        parts = [max(1, self.length(off, 1) // 2) for _ in range(self.rng.randrange(1, 4))]
        parts = [min(p, 256 * KiB) for p in parts]
        if off + sum(parts) > self.geo.size and self.rng.random() < 0.8:
            room = self.geo.size - off
            parts = [max(1, room // len(parts))] * len(parts) if room >= len(parts) else [1]
        return off, parts

    def readv(self) -> str:
        off, parts = self._vector()
        flags = self.qflag()
        if self.rng.random() < 0.5:
            flags += f"-P {self.pattern()} "
        if self.rng.random() < 0.1 and sum(parts) <= 64:
            flags = "-v "
        return f"readv {flags}{off} " + " ".join(map(str, parts))

    def writev(self) -> str:
        off, parts = self._vector()
        return f"writev {self.qflag()}-P {self.pattern()} {off} " + " ".join(map(str, parts))

    def aio(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return "aio_flush"
        off, parts = self._vector()
        if r < 0.6:
            flags = f"-q -P {self.pattern()} " if rng.random() < 0.7 else "-q "
            return f"aio_read {flags}{off} " + " ".join(map(str, parts))
        if r < 0.7:
            off, n = self.span()
            return f"aio_write -q -z {'-u ' if rng.random() < 0.5 else ''}{off} {n}"
        return f"aio_write -q -P {self.pattern()} {off} " + " ".join(map(str, parts))

    def discard(self) -> str:
        off, n = self.span(8)
        return f"discard {self.qflag()}{self._offlen(off, n)}"

    def alloc(self) -> str:
        off, n = self.span(16, in_bounds=0.5)
        if self.rng.random() < 0.2:
            return f"alloc {off}"
        return f"alloc {off} {n}"

    def truncate(self) -> str:
        rng, g = self.rng, self.geo
        r = rng.random()
        if r < 0.4:
            new = g.size + rng.choice([512, g.cluster, 3 * g.cluster, 1 * MiB])
        elif r < 0.75:
            new = max(0, g.size - rng.choice([512, g.cluster, 2 * g.cluster, g.size // 2]))
        elif r < 0.85:
            new = g.size + rng.randrange(1, 511)  # not a multiple of 512
        else:
            new = rng.randrange(0, 2 * g.size + 1) // 512 * 512
        new = min(new, 32 * MiB)
        mode = ""
        if rng.random() < 0.3:
            mode = f"-m {rng.choice(['off', 'metadata', 'falloc', 'full'])} "
        if new % 512 == 0 and not self.read_only:
            g.size = new
        return f"truncate {mode}{new}"

    def reopen(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            self.read_only = True
            return "reopen -r"
        if r < 0.4:
            self.read_only = False
            return "reopen -w"
        if r < 0.6:
            return f"reopen -c {rng.choice(CACHE_MODES)}"
        opt = rng.choice(
            [
                "lazy-refcounts=on",
                "lazy-refcounts=off",
                "l2-cache-size=1024",
                f"l2-cache-size={rng.choice([1, 2, 4]) * self.geo.cluster}",
                "refcount-cache-size=65536",
                "cache-clean-interval=1",
                "pass-discard-request=off",
                "pass-discard-request=on",
                "pass-discard-other=on",
                "discard=unmap",
                "discard=ignore",
                "overlap-check=none",
            ]
        )
        return f"reopen -o {opt}"

    def open_close(self) -> str:
        rng = self.rng
        if self.open:
            self.open = False
            return "close"
        self.open = True
        opts = ""
        if rng.random() < 0.3:
            self.read_only = True
            opts += "-r "
        else:
            self.read_only = False
        if rng.random() < 0.3:
            opts += f"-t {rng.choice(CACHE_MODES)} "
        if rng.random() < 0.2:
            opts += "-d unmap "
        if self.image_opts:
            extra = f",l2-cache-size={self.geo.cluster}" if rng.random() < 0.2 else ""
            return f"open {opts}driver=qcow2,file.filename=t.qcow2{extra}"
        if rng.random() < 0.2:
            opts += f"-o l2-cache-size={rng.choice([1, 2]) * self.geo.cluster} "
        if rng.random() < 0.5:
            opts += "-o driver=qcow2 "
        return f"open {opts}t.qcow2"


def random_run_options(rng: random.Random, cfg: ImageConfig) -> tuple[list[str], str, bool]:
    """(options, file operand, read-only) for a random way of opening t.qcow2."""
    options: list[str] = []
    read_only = rng.random() < 0.08
    if rng.random() < 0.35:
        opts = ["driver=qcow2", "file.filename=t.qcow2"]
        if rng.random() < 0.5:
            opts.append(f"l2-cache-size={rng.choice([1, 2, 3, 8]) * cfg.cluster}")
        if rng.random() < 0.3:
            opts.append(f"refcount-cache-size={rng.choice([1, 4]) * cfg.cluster}")
        if rng.random() < 0.2:
            opts.append(f"cache-clean-interval={rng.choice([0, 1, 30])}")
        if rng.random() < 0.2:
            opts.append(f"discard={rng.choice(['unmap', 'ignore'])}")
        if rng.random() < 0.1:
            opts.append(f"lazy-refcounts={rng.choice(['on', 'off'])}")
        if rng.random() < 0.1:
            opts.append(f"pass-discard-request={rng.choice(['on', 'off'])}")
        if rng.random() < 0.1:
            opts.append(f"overlap-check={rng.choice(['none', 'constant', 'cached', 'all'])}")
        if rng.random() < 0.02:
            # L2 slices smaller than a cluster are not modelled by qio yet (allocation
            # differs where a write crosses a slice boundary).
            opts.append(f"l2-cache-entry-size={rng.choice([512, 1024, 4096])}")
        if read_only:
            opts.append("read-only=on")
        options = ["--image-opts"]
        file = ",".join(opts)
    else:
        if rng.random() < 0.85:
            options += ["-f", "qcow2"]
        if read_only:
            options.append("-r")
        if rng.random() < 0.15:
            options += ["-d", rng.choice(["unmap", "ignore", "on", "off"])]
        file = "t.qcow2"
    if rng.random() < 0.5:
        options += ["-t", rng.choice(CACHE_MODES)]
    if rng.random() < 0.08:
        options.append("-C")
    return options, file, read_only


def generate_case(seed: int, commands: int | None = None) -> Case:
    rng = random.Random(seed)
    cfg = random_image_config(rng)
    setup, snapshots = build_setup(rng, cfg)
    subcluster = cfg.cluster // 32 if cfg.extended_l2 else cfg.cluster
    geo = Geometry(
        cfg.size, cfg.cluster, subcluster, not cfg.data_file, 3 if cfg.compat == "1.1" else 2
    )
    runs: list[Run] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        options, file, read_only = random_run_options(rng, cfg)
        gen = CommandGenerator(rng, geo, read_only, "--image-opts" in options)
        count = commands if commands is not None else rng.randrange(5, 60)
        cmds = [gen.command() for _ in range(count)]
        runs.append(Run(options, cmds, file))
    desc = (
        f"fuzz seed {seed}: {cfg.create_options()} size={cfg.size} "
        f"backing={cfg.backing} snapshots={snapshots}"
    )
    return Case(desc, setup, runs)


# =========================================================================================
# Running and comparing
# =========================================================================================
@dataclass
class Result:
    hard: list[str] = field(default_factory=list)
    soft: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the case says nothing (setup failed, qemu-io not stable)

    @property
    def ok(self) -> bool:
        return not self.hard

    def first_kind(self) -> str:
        return self.hard[0].split(":", 1)[0] if self.hard else ""


def _diff(a: str, b: str, limit: int = 40, width: int = 400) -> str:
    lines = difflib.unified_diff(a.split("\n"), b.split("\n"), "qemu-io", "qio", lineterm="")
    return "\n".join(line[:width] for line in list(lines)[:limit])


def _tool(argv: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, env=tool_env(), timeout=300
    )


def _setup(case: Case, directory: str) -> str | None:
    os.makedirs(directory)
    for argv in case.setup:
        p = _tool(argv, directory)
        if p.returncode != 0:
            return f"setup step failed: {shlex.join(argv)}: {p.stdout.strip()} {p.stderr.strip()}"
    return None


class ForkedQio:
    """Runs qio in a child forked from a process that has already imported it: the same as
    a fresh ``python -m qio`` (the child starts from a just-imported, untouched qio) without
    paying the interpreter start and imports (~0.7 s) on every run.  QIO_FUZZ_FORK=0 spawns
    real processes instead."""

    def __init__(self) -> None:
        import qio.block.qcow2.driver  # noqa: F401 - preload what every run needs
        import qio.cli

        self.main = qio.cli.main

    def run(self, argv: list[str], cwd: str, timeout: float) -> Outcome:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            pid = os.fork()
            if pid == 0:  # the child: become "qio ARGV" in CWD and never return
                status = 1
                try:
                    os.chdir(cwd)
                    null = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(null, 0)
                    os.dup2(out.fileno(), 1)
                    os.dup2(err.fileno(), 2)
                    os.environ["LC_ALL"] = "C"
                    signal.alarm(int(timeout))
                    sys.argv = ["qio", *argv]
                    status = self.main()
                    sys.stdout.flush()
                    sys.stderr.flush()
                except SystemExit as exc:
                    status = exc.code if isinstance(exc.code, int) else 1
                finally:
                    os._exit(status)
            _, wait_status = os.waitpid(pid, 0)
            out.seek(0)
            err.seek(0)
            rc = os.waitstatus_to_exitcode(wait_status)
            text = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
        return Outcome(rc, normalise(text[0]), normalise(text[1]))


_forked: ForkedQio | None = None


def _qio_runner() -> ForkedQio | None:
    global _forked
    if os.environ.get("QIO_FUZZ_FORK", "1") == "0":
        return None
    if _forked is None:
        _forked = ForkedQio()
    return _forked


def _run_side(case: Case, directory: str, program: list[str] | None) -> list[Outcome]:
    """Every run of the case; ``program`` None is qio."""
    outs = []
    forked = _qio_runner() if program is None else None
    argv0 = program if program is not None else qio_argv()
    for run in case.runs:
        try:
            if forked is not None:
                outs.append(forked.run(run.argv(), directory, case.timeout))
            else:
                outs.append(run_tool([*argv0, *run.argv()], directory, timeout=case.timeout))
        except subprocess.TimeoutExpired:
            outs.append(Outcome(-999, "", "TIMEOUT"))
    return outs


def _qcow2_files(directory: str) -> list[str]:
    names = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            if f.read(4) == b"QFI\xfb":
                names.append(name)
    return names


INFO_IGNORED = ("filename", "actual-size", "full-backing-filename", "snapshots")


def _info(directory: str, name: str) -> str:
    p = _tool(["qemu-img", "info", "-U", "--output=json", name], directory)
    if p.returncode != 0:
        return f"exit {p.returncode}: {p.stderr.strip()}"
    data = json.loads(p.stdout)
    for key in INFO_IGNORED:
        data.pop(key, None)
    return json.dumps(data, indent=1, sort_keys=True)


def _check(directory: str, name: str) -> str:
    p = _tool(["qemu-img", "check", "-U", name], directory)
    return f"exit {p.returncode}\n{p.stdout.strip()}\n{p.stderr.strip()}"


def _map(directory: str, name: str) -> tuple[str, str]:
    """(map without host offsets, host offsets) of ``name``."""
    p = _tool(["qemu-img", "map", "-U", "--output=json", "-f", "qcow2", name], directory)
    if p.returncode != 0:
        text = f"exit {p.returncode}: {p.stderr.strip()}"
        return text, text
    entries = json.loads(p.stdout)
    offsets = [e.pop("offset", None) for e in entries]
    for e in entries:
        if e.get("data"):
            # "zero" on data comes from holes in the host file, which ext4 reports
            # differently as writeback progresses: not a property of the image.
            e["zero"] = False
    # Without host offsets, runs split only by where clusters landed are one run.
    merged: list[dict] = []
    for e in entries:
        last = merged[-1] if merged else None
        if last is not None and all(last[k] == e[k] for k in e if k not in ("start", "length")):
            last["length"] += e["length"]
        else:
            merged.append(e)
    return json.dumps(merged), json.dumps(offsets)


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as f1, open(b, "rb") as f2:
        return f1.read() == f2.read()


def _guest_digest(directory: str, name: str, workdir: str) -> str:
    out = os.path.join(workdir, "guest.raw")
    p = _tool(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", name, out], directory)
    if p.returncode != 0:
        return f"convert failed: {p.stderr.strip()}"
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.unlink(out)
    return digest


def compare_case(case: Case, workdir: str, repeat_oracle: bool = True) -> Result:
    """Run ``case`` through both tools in ``workdir``.  ``repeat_oracle`` False: trust
    qemu-io to be deterministic (curated cases) and run it once."""
    res = Result()
    setup_dir = os.path.join(workdir, "setup")
    err = _setup(case, setup_dir)
    if err:
        res.skipped = err
        return res
    sides = {}
    for side in ("qemu", "qemu2", "qio") if repeat_oracle else ("qemu", "qio"):
        sides[side] = os.path.join(workdir, side)
        shutil.copytree(setup_dir, sides[side])
    # qemu-io runs twice: cases whose output it does not reproduce say nothing, and where
    # its images differ between runs (thread timing: parallel compressed writes, aio), only
    # the guest contents are compared.
    q = _run_side(case, sides["qemu"], ["qemu-io"])
    layout_stable = True
    if repeat_oracle:
        q2 = _run_side(case, sides["qemu2"], ["qemu-io"])
        if [(o.rc, o.out, o.err) for o in q] != [(o.rc, o.out, o.err) for o in q2]:
            res.skipped = "qemu-io does not reproduce its own output"
            return res
        layout_stable = all(
            _same_file(os.path.join(sides["qemu"], n), os.path.join(sides["qemu2"], n))
            for n in os.listdir(sides["qemu"])
        )
    c = _run_side(case, sides["qio"], None)
    for i, (a, b) in enumerate(zip(q, c, strict=True)):
        if "Traceback" in b.err or "internal error" in b.err:
            res.hard.append(f"traceback: run {i}\n{b.err[-3000:]}")
        for what, x, y in (
            ("exit", str(a.rc), str(b.rc)),
            ("stdout", a.out, b.out),
            ("stderr", a.err, b.err),
        ):
            if x != y:
                res.hard.append(f"{what}: run {i}\n{_diff(x, y)}")
    qd, cd = sides["qemu"], sides["qio"]
    q_files, c_files = sorted(os.listdir(qd)), sorted(os.listdir(cd))
    if q_files != c_files:
        res.hard.append(f"files: {q_files} != {c_files}")
        return res
    layout = res.hard if layout_stable else res.soft
    for name in _qcow2_files(qd):
        a, b = _info(qd, name), _info(cd, name)
        if a != b:
            res.hard.append(f"info: {name}\n{_diff(a, b)}")
        a, b = _check(qd, name), _check(cd, name)
        if a != b:
            layout.append(f"check: {name}\n{_diff(a, b)}")
        (a, ao), (b, bo) = _map(qd, name), _map(cd, name)
        if a != b:
            layout.append(f"map: {name}\n{_diff(a, b)}")
        elif ao != bo:
            res.soft.append(f"map-offsets: {name}")
    for name in _qcow2_files(qd):
        # Guest contents through each side's own directory (an external data file is found
        # relative to the working directory).
        a, b = _guest_digest(qd, name, workdir), _guest_digest(cd, name, workdir)
        if a != b:
            res.hard.append(f"compare: {name}: guest contents differ ({a[:60]} / {b[:60]})")
    for name in q_files:
        if not _same_file(os.path.join(qd, name), os.path.join(cd, name)):
            strict = case.strict_bytes and layout_stable
            (res.hard if strict else res.soft).append(f"bytes: {name}")
    return res


# =========================================================================================
# Minimising
# =========================================================================================
def _with_runs(case: Case, runs: list[Run]) -> Case:
    return dataclasses.replace(case, setup=list(case.setup), runs=runs)


def minimise(case: Case, still_fails: Callable[[Case], bool], log: Callable[[str], None]) -> Case:
    """Delta-debug the command lists (and drop whole runs / setup steps) while the failure
    persists."""
    # Whole runs first.
    i = 0
    while len(case.runs) > 1 and i < len(case.runs):
        trial = _with_runs(case, case.runs[:i] + case.runs[i + 1 :])
        if still_fails(trial):
            case = trial
            log(f"dropped run {i}")
        else:
            i += 1
    for r in range(len(case.runs)):
        chunk = max(1, len(case.runs[r].commands) // 2)
        while chunk >= 1:
            start = 0
            progressed = False
            while start < len(case.runs[r].commands):
                cmds = case.runs[r].commands
                trial_cmds = cmds[:start] + cmds[start + chunk :]
                runs = [Run(list(x.options), list(x.commands), x.file) for x in case.runs]
                runs[r].commands = trial_cmds
                trial = _with_runs(case, runs)
                if trial_cmds and still_fails(trial):
                    case = trial
                    progressed = True
                    log(f"run {r}: {len(trial_cmds)} commands")
                else:
                    start += chunk
            if not progressed:
                chunk //= 2
    # Run options one at a time.
    for r in range(len(case.runs)):
        i = 0
        while i < len(case.runs[r].options):
            opts = case.runs[r].options
            width = 2 if opts[i] in _WITH_ARGUMENT else 1
            runs = [Run(list(x.options), list(x.commands), x.file) for x in case.runs]
            runs[r].options = opts[:i] + opts[i + width :]
            trial = _with_runs(case, runs)
            if still_fails(trial):
                case = trial
                log(f"run {r}: options {runs[r].options}")
            else:
                i += width
    # Setup steps that only add data (qemu-io fills, snapshots).
    i = 0
    while i < len(case.setup):
        argv = case.setup[i]
        if argv[0] == "qemu-io" or argv[1:3] == ["snapshot", "-c"]:
            trial = dataclasses.replace(case, setup=case.setup[:i] + case.setup[i + 1 :])
            if still_fails(trial):
                case = trial
                log(f"dropped setup step {i}")
                continue
        i += 1
    return case


def failure_predicate(kind: str | None) -> Callable[[Case], bool]:
    def still_fails(trial: Case) -> bool:
        work = tempfile.mkdtemp(prefix="qio-fuzz-min-")
        try:
            res = compare_case(trial, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if res.skipped or not res.hard:
            return False
        return kind is None or any(h.split(":", 1)[0] == kind for h in res.hard)

    return still_fails


# =========================================================================================
# Command line
# =========================================================================================
def _seed_range(text: str) -> list[int]:
    if ":" in text:
        a, b = text.split(":")
        return list(range(int(a), int(b)))
    return [int(x) for x in text.split(",")]


def _one(seed: int, commands: int | None, keep: bool) -> tuple[int, Result, Case]:
    case = generate_case(seed, commands)
    work = tempfile.mkdtemp(prefix=f"qio-fuzz-{seed}-")
    try:
        res = compare_case(case, work)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return seed, res, case


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int)
    ap.add_argument("--seeds", default="0:20", help="A:B range or comma list")
    ap.add_argument("--commands", type=int, help="commands per run (default: random 5..60)")
    ap.add_argument("--case", help="run a case file instead of a generated case")
    ap.add_argument("--show", action="store_true", help="print the case and exit")
    ap.add_argument("--minimise", action="store_true")
    ap.add_argument("--kind", help="failure kind the minimiser preserves (default: first)")
    ap.add_argument("--write", help="write the (minimised) case here")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--soft", action="store_true", help="also print soft differences")
    ap.add_argument("-j", type=int, default=2)
    args = ap.parse_args()

    if args.case or args.seed is not None:
        if args.case:
            with open(args.case) as f:
                case = parse_case(f.read())
        else:
            case = generate_case(args.seed, args.commands)
        if args.show:
            print(case.to_text(), end="")
            return 0
        work = tempfile.mkdtemp(prefix="qio-fuzz-")
        res = compare_case(case, work)
        if args.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
        for h in res.hard:
            print(h)
        if args.soft or not res.hard:
            for s in res.soft:
                print("soft", s)
        if res.skipped:
            print("SKIPPED:", res.skipped)
        if args.minimise and res.hard:
            kind = args.kind or res.first_kind()
            case = minimise(case, failure_predicate(kind), lambda m: print("  min:", m, flush=True))
            print(case.to_text(), end="")
        if args.write:
            with open(args.write, "w") as f:
                f.write(case.to_text())
        print("OK" if res.ok else "FAILED")
        return 0 if res.ok else 1

    seeds = _seed_range(args.seeds)
    failed = skipped = soft = 0
    with concurrent.futures.ThreadPoolExecutor(args.j) as pool:
        for seed, res, _case in pool.map(lambda s: _one(s, args.commands, args.keep), seeds):
            if res.skipped:
                skipped += 1
                print(f"seed {seed}: skipped ({res.skipped[:200]})", flush=True)
            elif res.hard:
                failed += 1
                first = res.hard[0].split("\n")
                print(f"seed {seed}: FAIL {first[0]} | {' / '.join(first[1:6])[:300]}", flush=True)
            elif res.soft:
                soft += 1
                if args.soft:
                    print(f"seed {seed}: soft {', '.join(res.soft)}", flush=True)
    print(f"{len(seeds)} seeds: {failed} failed, {skipped} skipped, {soft} soft-only")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
