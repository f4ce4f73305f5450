"""aio_read/aio_write against real qemu-io: completion order and what concurrent requests see.

Only sequences whose qemu-io output does not depend on thread timing are used: requests that
queue behind a qcow2 allocation still in flight, reads of unallocated clusters (completed in
a bottom half), writethrough flushes (which take far longer than plain reads and writes).
"""

from __future__ import annotations

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

CASES = {
    "queue_behind_allocation": (
        "qcow2",
        "cluster_size=65536",
        [
            "aio_write -P 1 0 64k",
            "aio_write -P 2 32k 64k",
            "aio_read -P 1 0 4k",
            "aio_flush",
            "aio_write -P 3 1M 4k",
            "aio_read -P 0 2M 4k",
            "read -P 3 1M 4k",
            "aio_write -z 0 64k",
            "aio_flush",
            "read -v 32k 16",
            "map",
        ],
    ),
    "writethrough_read_overtakes_write": (
        "raw",
        "1M",
        ["aio_write 0 512", "length", "aio_read 0 1k", "read 0 1"],
    ),
    "failures_complete_first": (
        "raw",
        "1M",
        [
            "aio_read -P 0x62 0 1k",
            "aio_read 1M 512",
            "aio_write 1M 512",
            "aio_flush",
            "aio_write -i 0 4k",
        ],
    ),
    "unallocated_reads_in_bottom_halves": (
        "qcow2",
        "cluster_size=4096",
        [
            "aio_read -P 0 0 4k",
            "aio_read -P 0 8k 4k",
            "aio_write -P 5 64k 4k",
            "aio_read -P 5 64k 4k",
            "aio_flush",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_aio_sequence_matches_qemu_io(tmp_path, name: str) -> None:
    fmt, opts, commands = CASES[name]
    size = "4M"
    if opts == "1M":  # raw cases carry the image size instead of creation options
        size, opts = "1M", ""
    outputs = []
    for side, prog in (("qemu", ["qemu-io"]), ("qio", qio_argv())):
        d = tmp_path / side
        d.mkdir()
        create = (
            ["qemu-img", "create", "-q", "-f", fmt]
            + (["-o", opts] if opts else [])
            + ["t.img", size]
        )
        subprocess.run(create, cwd=d, check=True)
        argv = [*prog, "-f", fmt]
        for c in commands:
            argv += ["-c", c]
        p = subprocess.run(
            [*argv, "t.img"], cwd=d, env=tool_env(), capture_output=True, text=True, timeout=60
        )
        outputs.append((p.returncode, normalise(p.stdout), normalise(p.stderr)))
    assert outputs[1] == outputs[0]
