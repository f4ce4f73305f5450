"""The copy-on-read filter and qemu-io's -C, through qemu-io and qio."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.qemu_oracle import assert_same, needs_qemu, qemu_img, qemu_io, raw_image, run_both

pytestmark = needs_qemu


def setup(directory: Path) -> None:
    raw_image(directory / "r.img", 1 << 20, [(0x11, 0, 64 << 10)])


CASES: dict[str, list[str]] = {
    "filter-over-raw": [
        "--image-opts",
        *("-c", "info", "-c", "map", "-c", "read -P 0x11 0 512", "-c", "write -P 2 0 512"),
        *("-c", "read -P 2 0 512", "-c", "length", "-c", "truncate 2M", "-c", "length"),
        "driver=copy-on-read,file.driver=raw,file.file.filename=r.img",
    ],
    "filter-protocol-child": [
        "--image-opts",
        *("-c", "info", "-c", "write -z 4k 4k", "-c", "discard 8k 4k", "-c", "read -v 4k 16"),
        "driver=copy-on-read,file.filename=r.img",
    ],
    "filter-json": [
        "-c",
        "info",
        'json:{"driver":"copy-on-read","file":{"driver":"file","filename":"r.img"}}',
    ],
    "filter-format-f": ["-f", "copy-on-read", "-c", "info", "r.img"],
    "filter-no-child": ["--image-opts", "-c", "info", "driver=copy-on-read"],
    "filter-bottom-missing": [
        "--image-opts",
        "-c",
        "info",
        "driver=copy-on-read,file.filename=r.img,bottom=foo",
    ],
    "filter-unknown-option": [
        "--image-opts",
        "-c",
        "info",
        "driver=copy-on-read,file.filename=r.img,bogus=1",
    ],
    "filter-reopen": [
        "--image-opts",
        "-c",
        "reopen -r",
        "-c",
        "write -q 0 512",
        "driver=copy-on-read,file.filename=r.img",
    ],
    "C-read-only": ["-r", "-C", "-c", "read -q 0 512", "r.img"],
    "C-raw": ["-C", "-f", "raw", "-c", "read -q -P 0x11 0 512", "-c", "map", "r.img"],
    "open-C-read-only": ["-c", "open -r -C r.img", "-c", "info"],
    "open-C": ["-c", "open -C -o driver=raw r.img", "-c", "info", "-c", "read -q -P 0x11 0 64k"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_copy_on_read_matches_qemu_io(tmp_path: Path, name: str) -> None:
    oracle, candidate = run_both(tmp_path, setup, CASES[name])
    assert_same(oracle, candidate)


QCOW2 = importlib.util.find_spec("qio.block.qcow2") is not None


def backing_setup(directory: Path) -> None:
    qemu_img(directory, "create", "-q", "-f", "qcow2", "base.qcow2", "1M")
    qemu_io(directory, "-c", "write -q -P 0xaa 0 256k", "base.qcow2")
    qemu_img(
        directory, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"
    )


BACKING_CASES: dict[str, list[str]] = {
    "C-copies": ["-C", "-c", "map", "-c", "read -q -P 0xaa 0 4k", "-c", "map", "top.qcow2"],
    "filter-copies": [
        "--image-opts",
        *("-c", "read -q -P 0xaa 64k 4k", "-c", "map"),
        "driver=copy-on-read,file.driver=qcow2,file.file.filename=top.qcow2",
    ],
    "filter-bottom": [
        "--image-opts",
        *("-c", "read -q -P 0xaa 64k 4k", "-c", "map"),
        "driver=copy-on-read,file.driver=qcow2,file.file.filename=top.qcow2,"
        "file.backing.node-name=base,bottom=base",
    ],
}


@pytest.mark.skipif(not QCOW2, reason="qio.block.qcow2 is not importable yet")
@pytest.mark.parametrize("name", sorted(BACKING_CASES))
def test_copy_on_read_with_backing_matches_qemu_io(tmp_path: Path, name: str) -> None:
    oracle, candidate = run_both(tmp_path, backing_setup, BACKING_CASES[name])
    assert_same(oracle, candidate)
