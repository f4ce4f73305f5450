"""The shipped sample images are exactly what sample_images/make_samples.py makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.qemu_oracle import ROOT, needs_qemu, qio_run

SAMPLES = ROOT / "sample_images"


@needs_qemu
def test_shipped_samples_match_the_script(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(SAMPLES / "make_samples.py"), str(tmp_path)], check=True, timeout=60
    )
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ["disk.raw", "test.qcow2", "trusted.raw"]
    for name in made:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), (
            f"{name} differs from what make_samples.py makes: regenerate the samples"
        )


def test_demo_pair_differs_in_one_known_sector() -> None:
    trusted = (SAMPLES / "trusted.raw").read_bytes()
    assert len(trusted) == 64 * 1024
    assert trusted.startswith(b"qio sample disk: hello from sector 0\n")
    assert trusted[12288:16384] == b"\x33" * 4096


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("qio.block.qcow2") is None,
    reason="qio.block.qcow2 is not importable yet (the demo's test image is qcow2)",
)
def test_readme_demo(tmp_path: Path) -> None:
    result = qio_run(
        [
            "--image-opts",
            "-c",
            "read 0 64k",
            "-c",
            "diff -n 1 12k 512",
            f"driver=blkverify,mismatch=report,x-raw={SAMPLES / 'trusted.raw'},"
            f"x-image={SAMPLES / 'test.qcow2'}",
        ],
        tmp_path,
    )
    assert result.stdout.splitlines()[0] == (
        "blkverify: read offset=0 bytes=65536 contents mismatch at offset 12352 (sector 24)"
    )
    assert result.stdout.splitlines()[-1] == (
        "diff: 8 of 512 bytes differ, the first at offset 12352 (sector 24)"
    )
