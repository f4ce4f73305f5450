"""The empty qcow2 image behind -s is byte-identical to what qemu-img creates."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qio.block.qcow2.create import Qcow2CreateOptions, create_qcow2_sync
from tests.differential import QEMU_IMG, tool_env


def _overlay(path: Path, size: int) -> bytes:
    create_qcow2_sync(str(path), Qcow2CreateOptions(size=size))
    return path.read_bytes()


def test_layout(tmp_path: Path) -> None:
    image = _overlay(tmp_path / "o.qcow2", 1 << 20)
    assert image[:8] == b"QFI\xfb\x00\x00\x00\x03"
    assert len(image) == 0x30000 + 8  # ends right after the one-entry L1 table
    assert image[0x20000:0x20008] == b"\x00\x01" * 4  # header, reftable, refblock, L1


@pytest.mark.oracle
@pytest.mark.parametrize("size", [0, 512, 1 << 20, 600 << 20, (3 << 30) + 512, 100 << 30])
def test_identical_to_qemu_img_create(size: int, tmp_path: Path) -> None:
    target = tmp_path / "ref.qcow2"
    subprocess.run(
        [QEMU_IMG, "create", "-q", "-f", "qcow2", str(target), str(size)],
        env=tool_env(),
        check=True,
    )
    assert _overlay(tmp_path / "o.qcow2", size) == target.read_bytes()
