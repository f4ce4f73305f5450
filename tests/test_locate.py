"""``locate``: the path of one byte down the graph, checked on images QEMU made.

The images come from qemu-img/qemu-io, so what ``locate`` claims (L2 entry, host offset,
backing, zero flag, compression) is checked against the real layout: the byte at the host
offset it names must hold the byte the guest reads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.capture import run_qio

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed"),
]


def _sh(cwd: Path, *args: str) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    _sh(tmp_path, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "base.qcow2", "1M")
    _sh(tmp_path, "qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 64k", "base.qcow2")
    _sh(tmp_path, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096",
        "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")  # fmt: skip
    _sh(tmp_path, "qemu-io", "-f", "qcow2", "-c", "write -P 0x77 8k 4k", "-c", "write -z 16k 4k",
        "-c", "write -c -P 0x33 32k 4k", "top.qcow2")  # fmt: skip
    return tmp_path


def _locate(cwd: Path, offset: str) -> str:
    result = run_qio(["-f", "qcow2", "-c", f"locate {offset}", "top.qcow2"], cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_allocated_byte_names_its_host_offset(chain: Path) -> None:
    out = _locate(chain, "8200")
    assert "guest cluster 2 (4096 bytes per cluster), byte 8 of it" in out
    assert "type: data (COPIED)" in out
    host = int(re.search(r"data at host offset (\d+)", out).group(1))  # type: ignore[union-attr]
    assert "host cluster refcount 1" in out
    with open(chain / "top.qcow2", "rb") as f:
        f.seek(host)
        assert f.read(1) == b"\x77"
    assert f"file: file top.qcow2 @ {host} " in out


def test_unallocated_byte_goes_to_the_backing_image(chain: Path) -> None:
    out = _locate(chain, "100")
    assert "not allocated here: the read goes to the backing image, same offset" in out
    assert "backing: qcow2 @ 100 (0x64)" in out
    host = int(re.findall(r"data at host offset (\d+)", out)[-1])
    with open(chain / "base.qcow2", "rb") as f:
        f.seek(host)
        assert f.read(1) == b"\x42"


def test_zero_and_compressed_clusters(chain: Path) -> None:
    assert "reads as zeros without touching any file (zero flag)" in _locate(chain, "16k")
    out = _locate(chain, "33000")
    assert "type: compressed" in out
    assert "inflate to the whole cluster; the byte is 232 bytes into the inflated data" in out


def test_past_the_end_fails(chain: Path) -> None:
    result = run_qio(["-f", "qcow2", "-c", "locate 2M", "top.qcow2"], chain)
    assert result.returncode == 1
    assert result.stdout.decode() == "locate failed: offset 2097152 is past the end of the image (1048576)\n"


def test_raw_offset_and_blkverify_children(tmp_path: Path) -> None:
    (tmp_path / "a.img").write_bytes(bytes(8192))
    (tmp_path / "b.img").write_bytes(bytes(8192))
    out = run_qio(
        ["--image-opts", "-c", "locate 100",
         "driver=raw,offset=4096,file.driver=file,file.filename=a.img"], tmp_path,
    ).stdout.decode()  # fmt: skip
    assert "raw 'offset' option 4096: the byte is at 4196 (0x1064)" in out
    assert "file: file a.img @ 4196 (0x1064)" in out
    out = run_qio(["-c", "locate 0", "blkverify:a.img:b.img"], tmp_path).stdout.decode()
    assert "├── raw: file a.img @ 0 (0x0)" in out
    assert "└── test: raw" in out
