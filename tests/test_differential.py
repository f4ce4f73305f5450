"""The harness itself: a comparison that cannot fail would prove nothing."""

from __future__ import annotations

import os
from pathlib import Path

from tests.differential import file_digest, normalise


def test_digest_sees_every_byte_of_a_sparse_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for path in (a, b):
        with open(path, "wb") as f:
            f.truncate(3 << 20)
            os.pwrite(f.fileno(), b"x" * 100, 50000)
    assert file_digest(a) == file_digest(b)
    with open(b, "r+b") as f:
        os.pwrite(f.fileno(), b"y", 10)  # in the first window, before the first data extent
    assert file_digest(a) != file_digest(b)
    with open(a, "r+b") as f:
        f.truncate((3 << 20) + 1)
    assert file_digest(a) != file_digest(tmp_path / "b")


def test_normalise_masks_only_timing_and_program_names() -> None:
    out = normalise(
        b"read 512/512 bytes at offset 0\n"
        b"512 bytes, 1 ops; 00.00 sec (1.5 MiB/sec and 3000.0000 ops/sec)\n"
        b"512,1,0:00:00.00,1024.000,2.000\n"
        b"qio: can't open device x\n"
    )
    assert out == [
        "read 512/512 bytes at offset 0",
        "512 bytes, 1 ops; <TIME> (<RATE>/sec and <OPS> ops/sec)",
        "512,1,<TIME>,<RATE>,<OPS>",
        "PROG: can't open device x",
        "",
    ]
    assert normalise(b"512 bytes, 1 ops; 0.00 sec (1 MiB/sec and 1 ops/sec)\n")[0].endswith(
        "(1 MiB/sec and 1 ops/sec)"
    )
