#!/usr/bin/env python3
"""Regenerate the shipped sample images with qio itself.

    python3 sample_images/make_samples.py [DIR]

disk.raw: a 64 KiB raw image with a text banner at offset 0 and recognisable patterns
(0x11 at 4 KiB, 0x22 at 8 KiB).

trusted.raw and test.qcow2: the blkverify demo pair (README, docs/blkverify.md).  Both hold
the banner, 0x11 at 4 KiB, 0x22 at 8 KiB and 0x33 at 12 KiB; in test.qcow2 eight bytes of
sector 24 (offset 12352, 0x3040) read "CORRUPT!" instead of 0x33.

All writes go through qio.  The qcow2 file itself is created by ``qemu-img create`` (qio's
companion tool does not create images yet), and its contents are written through qio once
qio has its qcow2 driver (``qio.block.qcow2``), through qemu-io until then; both lay the file
out identically.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

SIZE = 64 * 1024
BANNER = b"qio sample disk: hello from sector 0\n"
CORRUPTION_OFFSET = 12352  # sector 24
CORRUPTION = b"CORRUPT!"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_qio(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run(
        [sys.executable, "-m", "qio", *args], check=True, stdout=subprocess.DEVNULL, env=env
    )


def qcow2_writer() -> list[str]:
    """The program that writes into the qcow2 image: qio when it can, else qemu-io."""
    sys.path.insert(0, REPO)  # this checkout's qio, whatever else is installed
    if importlib.util.find_spec("qio.block.qcow2") is not None:
        return [sys.executable, "-m", "qio"]
    qemu_io = shutil.which("qemu-io")
    if qemu_io is None:
        raise SystemExit("make_samples: needs qio's qcow2 driver or qemu-io for test.qcow2")
    return [qemu_io]


def content_commands(banner: str) -> list[str]:
    commands = [f"write -q -s {banner} 0 {len(BANNER)}"]
    for pattern, offset in ((0x11, 4096), (0x22, 8192), (0x33, 12288)):
        commands.append(f"write -q -P {pattern:#x} {offset} 4096")
    return commands


def make_disk(out: str, banner: str) -> None:
    disk = os.path.join(out, "disk.raw")
    with open(disk, "wb") as f:
        f.truncate(SIZE)
    run_qio(
        "-f", "raw",
        "-c", f"write -s {banner} 0 {len(BANNER)}",
        "-c", "write -P 0x11 4k 4k",
        "-c", "write -P 0x22 8k 4k",
        disk,
    )  # fmt: skip


def make_pair(out: str, banner: str) -> None:
    trusted = os.path.join(out, "trusted.raw")
    with open(trusted, "wb") as f:
        f.truncate(SIZE)
    args: list[str] = ["-f", "raw"]
    for command in content_commands(banner):
        args += ["-c", command]
    run_qio(*args, trusted)

    test = os.path.join(out, "test.qcow2")
    if os.path.exists(test):
        os.unlink(test)
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise SystemExit("make_samples: needs qemu-img to create test.qcow2")
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", test, str(SIZE)],
        check=True,
    )
    corruption = os.path.join(out, "corruption.bin")
    with open(corruption, "wb") as f:
        f.write(CORRUPTION)
    args = ["-f", "qcow2"]
    for command in content_commands(banner):
        args += ["-c", command]
    args += ["-c", f"write -q -s {corruption} {CORRUPTION_OFFSET} {len(CORRUPTION)}"]
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run([*qcow2_writer(), *args, test], check=True, stdout=subprocess.DEVNULL, env=env)
    os.unlink(corruption)


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    banner = os.path.join(out, "banner.txt")
    with open(banner, "wb") as f:
        f.write(BANNER)
    try:
        make_disk(out, banner)
        make_pair(out, banner)
    finally:
        os.unlink(banner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
