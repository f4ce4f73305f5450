"""qcow2 against real qemu-io: seeded random workloads on copies of one image.

Every configuration runs the same mixed workload (write -P, write -z, write -z -u, discard,
write -c, read -P, read -v, alloc, map) through qemu-io and qio; outputs must be identical,
the guest-visible contents identical (qemu-img compare) and qio's image clean for
qemu-img check.  The default matrix covers every cluster size, refcount width, extended L2
and backing files with a few hundred commands each; QIO_SOAK=1 runs the full cross product
with thousands of commands.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import zlib

import pytest

from tests.qcow2_workload import random_commands, run_workload

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.skipif(
        shutil.which("qemu-io") is None,
        reason="qemu-io (apt-get install -y qemu-utils) is not installed",
    ),
]

SOAK = bool(os.environ.get("QIO_SOAK"))

# (cluster size, refcount bits, extended L2, backing file, extra options)
QUICK = [
    (512, 16, False, False, ""),
    (4096, 1, False, False, ""),
    (4096, 16, False, True, ""),
    (65536, 64, False, False, ""),
    (65536, 16, True, False, ""),
    (65536, 16, True, True, ""),
    (2 << 20, 16, False, False, ""),
    (2 << 20, 1, True, True, ""),
    (16384, 16, True, False, "compression_type=zstd"),
    (65536, 16, False, True, "compat=0.10"),
]

FULL = [
    (cs, rb, ext, backing, "")
    for cs, rb, ext, backing in itertools.product(
        (512, 4096, 65536, 2 << 20), (1, 16, 64), (False, True), (False, True)
    )
    if not (ext and cs < 16384)
]


def _options(cluster: int, refcount_bits: int, extended: bool, extra: str) -> str:
    opts = [f"cluster_size={cluster}", f"refcount_bits={refcount_bits}"]
    if extended:
        opts.append("extended_l2=on")
    if extra:
        opts.append(extra)
    return ",".join(opts)


@pytest.mark.parametrize(
    ("cluster", "refcount_bits", "extended", "backing", "extra"), FULL if SOAK else QUICK
)
def test_random_workload_matches_qemu_io(
    tmp_path, cluster: int, refcount_bits: int, extended: bool, backing: bool, extra: str
) -> None:
    size = 16 << 20 if cluster < (2 << 20) else 64 << 20
    seed = zlib.crc32(repr((cluster, refcount_bits, extended, backing, extra)).encode())
    count = 3000 if SOAK else 250
    commands = random_commands(random.Random(seed), size, cluster, count)
    problems = run_workload(
        str(tmp_path), _options(cluster, refcount_bits, extended, extra), size, commands, backing
    )
    assert not problems, "\n".join(problems)


def test_writethrough_workload_matches_qemu_io(tmp_path) -> None:
    """The default cache mode flushes after every write: metadata ordering is exercised."""
    commands = random_commands(random.Random(99), 4 << 20, 4096, 120)
    problems = run_workload(
        str(tmp_path), "cluster_size=4096", 4 << 20, commands, False, cache="writethrough"
    )
    assert not problems, "\n".join(problems)
