"""Differential runs: the same command line through the real qemu-io and through qio.

Each side runs in its own copy of the same files; stdout, stderr, the exit status and the files
left behind are compared after masking what legitimately differs (timing figures, the program
name at the start of a line, QEMU's random node-name suffixes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QEMU_IO = shutil.which("qemu-io")
QEMU_IMG = shutil.which("qemu-img")

needs_qemu = pytest.mark.skipif(
    QEMU_IO is None or QEMU_IMG is None, reason="qemu-io/qemu-img (qemu-utils) not installed"
)

_STATS = re.compile(
    r"^(?P<size>.+ ops); (?:\d\d\.\d\d sec|\d+:\d\d:\d\d\.\d\d) \(.+/sec and [0-9.]+ ops/sec\)$"
)
_CSV = re.compile(r"^(\d+,\d+),\d+:\d\d:\d\d\.\d\d,[0-9.]+,[0-9.]+$")
_PROG = re.compile(r"^(qemu-io|qio): ", re.M)
_NODE = re.compile(r"#block\d+")


def normalise(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        stats = _STATS.match(line)
        if stats:
            line = f"{stats['size']}; <TIME>"
        csv = _CSV.match(line)
        if csv:
            line = f"{csv[1]},<CSV>"
        lines.append(line)
    return _NODE.sub("#blockN", _PROG.sub("PROG: ", "\n".join(lines)))


@dataclass(frozen=True)
class Outcome:
    stdout: str
    stderr: str
    status: int
    files: dict[str, bytes]


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def qio_command() -> list[str]:
    return [sys.executable, "-m", "qio"]


def qio_env() -> dict[str, str]:
    env = dict(os.environ, LC_ALL="C", PYTHONPATH=str(ROOT))
    env.pop("NO_COLOR", None)
    return env


def _start(program: list[str], args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        program + args,
        cwd=cwd,
        env=qio_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(
    proc: subprocess.Popen[bytes], cwd: Path, timeout: float, snapshot: bool = True
) -> Outcome:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return Outcome(
        normalise(out.decode("utf-8", "replace")),
        normalise(err.decode("utf-8", "replace")),
        proc.returncode,
        _files(cwd) if snapshot else {},
    )


def run(program: list[str], args: list[str], cwd: Path, timeout: float = 30) -> Outcome:
    return _finish(_start(program, args, cwd), cwd, timeout)


def run_both(
    tmp_path: Path, setup: Callable[[Path], None], args: list[str], timeout: float = 30
) -> tuple[Outcome, Outcome]:
    """Run ``args`` through qemu-io and qio in two copies of what ``setup`` creates."""
    oracle_dir, candidate_dir = tmp_path / "qemu", tmp_path / "qio"
    for directory in (oracle_dir, candidate_dir):
        directory.mkdir()
        setup(directory)
    # Both at once: each works in its own directory.
    oracle_proc = _start([QEMU_IO or "qemu-io"], args, oracle_dir)
    candidate_proc = _start(qio_command(), args, candidate_dir)
    candidate = _finish(candidate_proc, candidate_dir, timeout)
    oracle = _finish(oracle_proc, oracle_dir, timeout)
    return oracle, candidate


def assert_same(oracle: Outcome, candidate: Outcome) -> None:
    assert candidate.stdout == oracle.stdout
    assert candidate.stderr == oracle.stderr
    assert candidate.status == oracle.status
    assert candidate.files.keys() == oracle.files.keys()
    for name, data in oracle.files.items():
        assert candidate.files[name] == data, f"{name} differs"


def qemu_io(cwd: Path, *args: str) -> None:
    """Set-up through the real qemu-io (its output is not compared)."""
    subprocess.run([QEMU_IO or "qemu-io", *args], cwd=cwd, check=True, capture_output=True)


def qemu_img(cwd: Path, *args: str) -> None:
    subprocess.run([QEMU_IMG or "qemu-img", *args], cwd=cwd, check=True, capture_output=True)


def raw_image(path: Path, size: int, fills: list[tuple[int, int, int]] = ()) -> None:  # type: ignore[assignment]
    """A raw image of ``size`` bytes with (pattern, offset, length) fills, written directly."""
    with open(path, "wb") as f:
        f.truncate(size)
        for pattern, offset, length in fills:
            f.seek(offset)
            f.write(bytes([pattern]) * length)


def qio_run(args: list[str], cwd: Path, timeout: float = 30) -> Outcome:
    """qio alone (its files are not collected)."""
    return _finish(_start(qio_command(), args, cwd), cwd, timeout, snapshot=False)
