#!/usr/bin/env python3
"""Regenerate the shipped sample images with qio itself.

    python3 sample_images/make_samples.py [DIR]

disk.raw: a 64 KiB raw image with a text banner at offset 0 and recognisable patterns
(0x11 at 4 KiB, 0x22 at 8 KiB), used by README's first command.
"""

from __future__ import annotations

import os
import subprocess
import sys


def qio(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "qio", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    banner = os.path.join(out, "banner.txt")
    with open(banner, "wb") as f:
        f.write(b"qio sample disk: hello from sector 0\n")
    disk = os.path.join(out, "disk.raw")
    with open(disk, "wb") as f:
        f.truncate(64 * 1024)
    qio("-f", "raw", "-c", f"write -s {banner} 0 37", "-c", "write -P 0x11 4k 4k", "-c", "write -P 0x22 8k 4k", disk)
    os.unlink(banner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
