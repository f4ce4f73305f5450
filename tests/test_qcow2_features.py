"""qcow2 features against qemu-io: same output, and final images that qemu-img agrees on.

Each scenario prepares identical files with the real qemu-img/qemu-io, runs one qemu-io
command line through both tools, then compares exit status and output, ``qemu-img info``
(JSON, file names and sizes aside), the guest data (``qemu-img compare``) and requires
``qemu-img check`` to be clean on qio's images.
"""

from __future__ import annotations

import json
import os
import shutil
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

SCENARIOS: dict[str, tuple[list[list[str]], list[str], list[str]]] = {
    # name: (setup argvs, qemu-io options and image, -c commands)
    "bitmaps": (
        [
            ["qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "4M"],
            ["qemu-img", "bitmap", "--add", "t.qcow2", "bitmap0"],
            ["qemu-img", "bitmap", "--add", "--disable", "-g", "128k", "t.qcow2", "quiet"],
        ],
        ["t.qcow2"],
        ["info", "write -q -P 1 0 64k", "write -q -z 1M 4k", "discard -q 2M 64k", "info"],
    ),
    "bitmaps_read_only": (
        [
            ["qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "4M"],
            ["qemu-img", "bitmap", "--add", "t.qcow2", "b"],
        ],
        ["-r", "t.qcow2"],
        ["info", "read -q 0 4k"],
    ),
    "lazy_refcounts": (
        [
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "lazy_refcounts=on,cluster_size=4096",
                "t.qcow2",
                "4M",
            ]
        ],
        ["t.qcow2"],
        [
            "write -q -P 7 0 64k",
            "write -q -P 8 1M 4k",
            "info",
            "discard -q 0 16k",
            "read -P 0 0 16k",
        ],
    ),
    "zstd_compressed": (
        [
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compression_type=zstd",
                "t.qcow2",
                "4M",
            ]
        ],
        ["t.qcow2"],
        [
            "write -c -P 0x41 0 64k",
            "write -c 64k 64k",
            "read -P 0x41 0 64k",
            "write -P 2 4k 4k",
            "read -v 4090 12",
            "map",
            "info",
        ],
    ),
    "external_data_file": (
        [["qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=t.data", "t.qcow2", "4M"]],
        ["t.qcow2"],
        ["write -P 3 0 64k", "write -z 64k 64k", "read -P 3 0 64k", "map", "info"],
    ),
    "external_raw_data_file": (
        [
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "data_file=t.data,data_file_raw=on",
                "t.qcow2",
                "4M",
            ]
        ],
        ["t.qcow2"],
        [
            "write -P 3 0 64k",
            "write -z 64k 64k",
            "discard 128k 64k",
            "read -P 3 0 64k",
            "map",
            "info",
        ],
    ),
    "backing_chain_depth_3": (
        [
            ["qemu-img", "create", "-q", "-f", "raw", "base.raw", "4M"],
            ["qemu-io", "-f", "raw", "-c", "write -q -P 0x11 0 4M", "base.raw"],
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "mid.qcow2"],
            ["qemu-io", "-c", "write -q -P 0x22 1M 1M", "mid.qcow2"],
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096",
                "-b",
                "mid.qcow2",
                "-F",
                "qcow2",
                "t.qcow2",
            ],
        ],
        ["t.qcow2"],
        [
            "read -P 0x11 0 1M",
            "read -P 0x22 1M 1M",
            "write -P 0x33 1536k 1k",
            "read -P 0x22 1532k 4k",
            "map",
            "alloc 0 4M",
        ],
    ),
    "snapshot_cow": (
        [
            ["qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "4M"],
            ["qemu-io", "-c", "write -q -P 1 0 128k", "t.qcow2"],
            ["qemu-img", "snapshot", "-c", "s1", "t.qcow2"],
        ],
        ["t.qcow2"],
        ["write -P 2 0 4k", "write -z 64k 64k", "discard 0 64k", "read -P 0 0 64k", "map"],
    ),
    "copy_on_read": (
        [
            ["qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1M"],
            ["qemu-io", "-c", "write -q -P 0xaa 0 1M", "base.qcow2"],
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "t.qcow2",
            ],
        ],
        ["-C", "t.qcow2"],
        [
            "map",
            "read -q -P 0xaa 0 4k",
            "map",
            "read -P 0xaa 100k 200k",
            "write -P 1 512k 4k",
            "read -P 0xaa 508k 4k",
            "map",
        ],
    ),
    "truncate_grow_shrink": (
        [["qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "1M"]],
        ["t.qcow2"],
        [
            "write -q -P 1 960k 64k",
            "truncate 1000",
            "truncate 512k",
            "truncate -m metadata 4M",
            "read -q -P 0 960k 64k",
            "map",
            "length",
        ],
    ),
}


def _info(directory: os.PathLike[str]) -> dict:
    p = subprocess.run(
        ["qemu-img", "info", "--output=json", "t.qcow2"],
        cwd=directory,
        capture_output=True,
        text=True,
    )
    info = json.loads(p.stdout)
    for key in ("filename", "actual-size", "full-backing-filename", "snapshots"):
        info.pop(key, None)
    return info


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_matches_qemu_io(tmp_path, name: str) -> None:
    setup, options, commands = SCENARIOS[name]
    outputs = []
    for side, prog in (("qemu", ["qemu-io"]), ("qio", qio_argv())):
        d = tmp_path / side
        d.mkdir()
        for argv in setup:
            subprocess.run(argv, cwd=d, check=True, capture_output=True)
        argv = list(prog)
        for c in commands:
            argv += ["-c", c]
        p = subprocess.run(
            [*argv, *options], cwd=d, env=tool_env(), capture_output=True, text=True, timeout=120
        )
        outputs.append((p.returncode, normalise(p.stdout), normalise(p.stderr)))
    assert outputs[1] == outputs[0]
    q, c = tmp_path / "qemu", tmp_path / "qio"
    assert _info(c) == _info(q)
    # Data files are named relative to the working directory: convert each side in place.
    for d in (q, c):
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", "t.qcow2", "guest.raw"], cwd=d, check=True
        )
    assert (q / "guest.raw").read_bytes() == (c / "guest.raw").read_bytes()
    chk = subprocess.run(["qemu-img", "check", "t.qcow2"], cwd=c, capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
