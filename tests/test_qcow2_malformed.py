"""Damaged qcow2 images: the same one-line errors as qemu-io, and no traceback.

Each case edits a few bytes of a small image made by qemu-img, then runs the same commands
through qemu-io and qio on separate copies; messages, exit status and the state qemu-img
check finds afterwards must agree.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from tests.qcow2_workload import normalise, qio_argv, tool_env

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.skipif(
        shutil.which("qemu-io") is None,
        reason="qemu-io (apt-get install -y qemu-utils) is not installed",
    ),
]

# name: (file offset, struct format, value) applied to a 1 MiB image with 128 KiB of data
EDITS = {
    "bad_magic": (0, ">I", 0x51464900),
    "version_4": (4, ">I", 4),
    "cluster_bits_8": (20, ">I", 8),
    "cluster_bits_22": (20, ">I", 22),
    "l1_too_large": (36, ">I", 0x10000000),
    "l1_too_small": (36, ">I", 0),
    "l1_unaligned": (40, ">Q", 0x30001),
    "reftable_unaligned": (48, ">Q", 0x10200),
    "reftable_offset_huge": (48, ">Q", 0x7000000000000000),
    "reftable_empty": (56, ">I", 0),
    "header_length_short": (100, ">I", 96),
    "header_length_huge": (100, ">I", 0x20000),
    "refcount_order_7": (96, ">I", 7),
    "unknown_encryption": (32, ">I", 3),
    "snapshots_unaligned": (64, ">Q", 0x1001),
    "snapshot_table_garbage": (60, ">I", 5),
    "backing_offset_past_cluster": (8, ">Q", 0x20000),
    "compression_type_without_bit": (104, "B", 1),
    "unknown_incompatible_feature": (72, ">Q", 1 << 40),
    "corrupt_bit": (72, ">Q", 2),
    "l1_points_at_data": (0x30000, ">Q", 0x8000000000050001),
    "l2_entry_past_eof": (0x40000, ">Q", 0x8000000100000000),
    "l2_entry_on_reftable": (0x40000, ">Q", 0x8000000000010000),
    "l2_entry_unaligned": (0x40000, ">Q", 0x8000000000050200),
    "l2_compressed_garbage": (0x40000, ">Q", 0x4000000000050000),
    "l1_entry_cleared": (0x30000, ">Q", 0),
    "reftable_entry_cleared": (0x10000, ">Q", 0),
}

COMMANDS = ["read 0 512", "write -q 0 512", "read -P 0xcd 0 512", "write -q 64k 512", "map"]


@pytest.mark.parametrize("name", sorted(EDITS))
def test_damaged_image_matches_qemu_io(tmp_path, name: str) -> None:
    offset, fmt, value = EDITS[name]
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -q -P 1 0 128k", str(base)], check=True)
    with open(base, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    results = []
    for side, prog in (("qemu", ["qemu-io"]), ("qio", qio_argv())):
        d = tmp_path / side
        d.mkdir()
        shutil.copy(base, d / "t.qcow2")
        argv = list(prog)
        for c in COMMANDS:
            argv += ["-c", c]
        p = subprocess.run(
            [*argv, "t.qcow2"], cwd=d, env=tool_env(), capture_output=True, text=True, timeout=60
        )
        assert "Traceback" not in p.stderr
        check = subprocess.run(
            ["qemu-img", "check", "t.qcow2"], cwd=d, capture_output=True, text=True
        )
        results.append(
            (p.returncode, normalise(p.stdout), normalise(p.stderr), check.returncode, check.stdout)
        )
    assert results[1] == results[0]
