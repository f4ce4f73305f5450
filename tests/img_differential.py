"""Differential runs of qemu-img and qio-img on copies of the same files.

Each side runs in its own directory, prepared by the same setup function (using the real
qemu tools, so both start from byte-identical files).  qemu-img runs as a process; qio-img runs
in this process (``qio.img.main.main`` with the working directory switched and the standard
streams captured), which keeps a test of dozens of invocations fast.  Outputs are compared after
replacing the program name (``qio-img:`` prefixes, ``Try 'qio-img --help'``) and the directory
names; the files left behind must be identical byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.differential import QEMU_IMG, tool_env

_PROG_RE = re.compile(r"^qio-img(?=: )", re.M)
_TRY_RE = re.compile(r"Try 'qio-img --help'")


@dataclass
class ImgResult:
    status: int
    out: str
    err: str


def run_qemu_img(args: list[str], cwd: Path) -> ImgResult:
    proc = subprocess.run(
        [QEMU_IMG, *args], cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=60
    )
    return ImgResult(proc.returncode, proc.stdout, proc.stderr)


def run_qio_img(args: list[str], cwd: Path) -> ImgResult:
    from qio.img.main import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(args))
    finally:
        os.chdir(old)
    return ImgResult(status, out.getvalue(), err.getvalue())


def normalise(text: str, cwd: Path) -> str:
    text = _TRY_RE.sub("Try 'qemu-img --help'", _PROG_RE.sub("qemu-img", text))
    return text.replace(str(cwd), "<DIR>")


def dir_differences(a: Path, b: Path) -> list[str]:
    """Relative paths whose presence or bytes differ between two directory trees."""
    names = {p.relative_to(a) for p in a.rglob("*")} | {p.relative_to(b) for p in b.rglob("*")}
    diffs = []
    for name in sorted(names):
        pa, pb = a / name, b / name
        if pa.is_dir() and pb.is_dir():
            continue
        if not (pa.is_file() and pb.is_file()) or not same_bytes(pa, pb):
            diffs.append(str(name))
    return diffs


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    extents = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break  # only a hole is left
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, end))
        pos = end
    return extents


def sparse_copy(src: str, dst: str) -> str:
    """Copy a file keeping its holes (so "disk size" stays the same and big sparse images
    cost nothing to copy)."""
    size = os.stat(src).st_size
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        os.ftruncate(fd.fileno(), size)
        for start, end in _data_extents(fs.fileno(), size):
            pos = start
            while pos < end:
                chunk = os.pread(fs.fileno(), min(end - pos, 1 << 22), pos)
                os.pwrite(fd.fileno(), chunk, pos)
                pos += len(chunk)
    shutil.copymode(src, dst)
    return dst


def same_bytes(a: Path, b: Path) -> bool:
    """Byte equality of two (possibly large, sparse) files, reading only their data extents:
    a range that is a hole in both reads as zeros in both."""
    size = a.stat().st_size
    if size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        extents = _data_extents(fa.fileno(), size) + _data_extents(fb.fileno(), size)
        for start, end in sorted(extents):
            pos = start
            while pos < end:
                n = min(end - pos, 1 << 22)
                if os.pread(fa.fileno(), n, pos) != os.pread(fb.fileno(), n, pos):
                    return False
                pos += n
    return True


class ImgPair:
    """Two directories prepared alike: ``q`` for qemu-img, ``p`` for qio-img."""

    def __init__(self, tmp_path: Path, setup: Callable[[Path], None] | Path | None = None) -> None:
        """``setup`` prepares the qemu-img side (then copied), or is a directory to copy
        (made once per module by a fixture, which keeps many small cases fast)."""
        self.q = tmp_path / "q"
        self.p = tmp_path / "p"
        if isinstance(setup, Path):
            shutil.copytree(setup, self.q, symlinks=True, copy_function=sparse_copy)
        else:
            self.q.mkdir()
            if setup is not None:
                setup(self.q)
        shutil.copytree(self.q, self.p, symlinks=True, copy_function=sparse_copy)

    def run(self, args: list[str]) -> tuple[ImgResult, ImgResult]:
        """Run ``args`` on both sides; the results with outputs normalised."""
        q = run_qemu_img(args, self.q)
        p = run_qio_img(args, self.p)
        q = ImgResult(q.status, normalise(q.out, self.q), normalise(q.err, self.q))
        p = ImgResult(p.status, normalise(p.out, self.p), normalise(p.err, self.p))
        return q, p

    def check(self, args: list[str], files: bool = True) -> ImgResult:
        """Run on both sides and assert identical status, output and files."""
        q, p = self.run(args)
        assert (p.status, p.out, p.err) == (q.status, q.out, q.err), args
        if files:
            assert dir_differences(self.q, self.p) == [], args
        return q
