"""Hypothesis properties of the qcow2 allocator and refcount code.

* Refcount entries of every width round-trip and never disturb their neighbours.
* Any sequence of allocating, overwriting, zeroing, discarding and compressed writes leaves an
  image that ``qemu-img check`` finds clean (no errors, no leaks) and whose guest contents equal
  what qemu-io produces from the same commands; the command output matches too.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qio.block.qcow2.layout import refcount_get, refcount_set
from tests.qcow2_workload import run_workload

# -- refcount blocks -----------------------------------------------------------------------


@given(
    order=st.integers(0, 6),
    writes=st.lists(st.tuples(st.integers(0, 511), st.integers(0, (1 << 64) - 1)), max_size=60),
)
def test_refcount_entries_round_trip_without_touching_neighbours(
    order: int, writes: list[tuple[int, int]]
) -> None:
    entries = 512
    block = bytearray(entries << order >> 3 or 1)
    model = [0] * entries
    for index, value in writes:
        value &= (1 << (1 << order)) - 1
        refcount_set(block, index, order, value)
        model[index] = value
        assert [refcount_get(block, i, order) for i in range(entries)] == model


# -- whole-image allocator properties ------------------------------------------------------

SIZE = 1 << 20
CONFIGS = [
    "cluster_size=512,refcount_bits=1",
    "cluster_size=4096,refcount_bits=16",
    "cluster_size=4096,refcount_bits=64,lazy_refcounts=on",
    "cluster_size=65536,extended_l2=on",
    "cluster_size=2048,compat=0.10,refcount_bits=16",
    "cluster_size=4096,compression_type=zstd",
]


@st.composite
def commands(draw: st.DrawFn, cluster: int) -> list[str]:
    def span() -> tuple[int, int]:
        offset = draw(st.integers(0, SIZE - 1))
        length = draw(st.integers(1, 3 * cluster))
        if draw(st.booleans()):  # sector-aligned requests are the common case
            offset -= offset % 512
            length = -(-length // 512) * 512
        return offset, min(length, SIZE - offset)

    cmds = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["write", "write", "zero", "zero-unmap", "discard", "comp"]))
        if kind == "comp":
            first = draw(st.integers(0, SIZE // cluster - 1))
            cmds.append(
                f"write -q -c -P 0x{draw(st.integers(1, 255)):02x} {first * cluster} {cluster}"
            )
            continue
        offset, length = span()
        if kind == "write":
            cmds.append(f"write -q -P 0x{draw(st.integers(1, 255)):02x} {offset} {length}")
        elif kind == "zero":
            cmds.append(f"write -q -z {offset} {length}")
        elif kind == "zero-unmap":
            cmds.append(f"write -q -z -u {offset} {length}")
        else:
            cmds.append(f"discard -q {offset} {length}")
    # Read everything back so that the comparison also covers the guest view qio reports.
    cmds.append(f"read -q -P 0 {SIZE - 1} 1")
    cmds.append("map")
    return cmds


@st.composite
def workloads(draw: st.DrawFn) -> tuple[str, bool, list[str]]:
    config = draw(st.sampled_from(CONFIGS))
    cluster = int(config.split("cluster_size=")[1].split(",")[0])
    backing = draw(st.booleans())
    return config, backing, draw(commands(cluster))


@pytest.mark.skipif(
    shutil.which("qemu-io") is None or shutil.which("qemu-img") is None,
    reason="qemu-io/qemu-img (qemu-utils) not installed",
)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_any_command_sequence_leaves_a_clean_image_with_qemu_io_contents(
    workload: tuple[str, bool, list[str]],
) -> None:
    config, backing, cmds = workload
    with tempfile.TemporaryDirectory() as workdir:
        problems = run_workload(workdir, config, SIZE, cmds, backing)
    assert not problems, "\n".join([config, f"backing={backing}", *cmds, *problems])
