"""The fast paths of issue 7: same bytes as the plain code, bounded memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qio.block.payload import RepeatedBytes, copy_into, iovecs
from tests.capture import qio_env


def naive(period: bytes, length: int, phase: int) -> bytes:
    reps = (phase + length) // len(period) + 1
    return (period * reps)[phase : phase + length]


@pytest.mark.parametrize("period", [b"\xab", b"abc", bytes(range(256)) * 3])
@pytest.mark.parametrize("phase", [0, 1, 5])
def test_repeated_bytes_match_the_built_buffer(period: bytes, phase: int) -> None:
    length = (9 << 20) + 13  # more than two blocks, not a whole number of periods
    data = RepeatedBytes.of(period, length, phase)
    expected = naive(period, length, phase)
    assert len(data) == length
    assert bytes(data) == expected
    assert b"".join(iovecs(data)) == expected
    for lo, hi in [(0, 1), (3, 4 << 20), ((4 << 20) - 1, (8 << 20) + 7), (length - 5, length)]:
        assert bytes(data[lo:hi]) == expected[lo:hi]
    out = bytearray(1000)
    copy_into(memoryview(out), data[777:1777])
    assert bytes(out) == expected[777:1777]


def test_iovecs_share_one_block() -> None:
    data = RepeatedBytes.of(b"\x01", 64 << 20)
    views = data.iovecs()
    assert sum(len(v) for v in views) == 64 << 20
    assert {id(v.obj) for v in views} == {id(data.block)}


# Started from a small helper process: a child forked straight from a big pytest process
# would count the parent's pages (ru_maxrss survives exec) in its peak.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
_pid, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_mib(args: list[str], cwd: Path) -> int:
    ran = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "qio", *args],
        cwd=cwd,
        env=qio_env(),
        capture_output=True,
        text=True,
    )
    status, max_rss_kib = ran.stdout.split()
    assert status == "0", ran.stderr
    return int(max_rss_kib) // 1024


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_big_pattern_write_in_bounded_memory(tmp_path: Path, fmt: str) -> None:
    size = 128 << 20
    image = tmp_path / "a.img"
    if fmt == "raw":
        image.write_bytes(b"")
        os.truncate(image, size)
    else:
        if shutil.which("qemu-img") is None:
            pytest.skip("qemu-img is needed to create the image")
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(size)], check=True
        )
    common = ["-f", fmt, "-t", "unsafe"]
    rss = peak_rss_mib([*common, "-c", f"write -q -P 0xab 512 {size - 1024}", str(image)], tmp_path)
    assert rss < 64, f"peak RSS {rss} MiB for a {size >> 20} MiB write"
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "qio",
            *common,
            "-c",
            "read -q -P 0 0 512",
            "-c",
            f"read -q -P 0xab 512 {size - 1024}",
            "-c",
            f"read -q -P 0 {size - 512} 512",
            str(image),
        ],
        cwd=tmp_path,
        env=qio_env(),
        capture_output=True,
    )
    assert check.stdout == b"" and check.stderr == b""
