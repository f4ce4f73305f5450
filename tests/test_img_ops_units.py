"""Units behind qio-img compare/convert/snapshot/rebase that need no qemu-img."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from qio.block.compare import sector_runs
from qio.block.qcow2.snapshots import (
    Snapshot,
    find_by_id_and_name,
    find_by_id_or_name,
    new_snapshot_id,
    parse_table,
    serialize_table,
    table_size,
)
from qio.img.convert import is_allocated_sectors_min
from qio.img.progress import Progress

S = 512


def test_sector_runs_alternate_and_merge_across_blocks() -> None:
    a = bytearray(200 * S)
    b = bytearray(200 * S)
    assert sector_runs(a, b) == [(0, 200 * S, False)]
    b[3 * S + 7] = 1
    b[127 * S] = 1  # last sector of the first 64 KiB block
    b[128 * S + 1] = 1  # first sector of the next one: the runs touch and merge
    assert sector_runs(a, b) == [
        (0, 3 * S, False),
        (3 * S, S, True),
        (4 * S, 123 * S, False),
        (127 * S, 2 * S, True),
        (129 * S, 71 * S, False),
    ]


def test_is_allocated_sectors_min_keeps_short_zero_gaps() -> None:
    data = bytearray(32 * S)
    data[0] = 1
    data[21 * S] = 1  # sectors 8-20 are zero: an aligned gap of at least -S ends the write
    assert is_allocated_sectors_min(memoryview(data), 32, 8, 0, 8) == (True, 8)
    data[21 * S] = 0
    data[10 * S] = 1  # the gap before sector 10 ends unaligned inside 8-15: written through
    assert is_allocated_sectors_min(memoryview(data), 32, 8, 0, 8) == (True, 16)
    assert is_allocated_sectors_min(memoryview(bytearray(8 * S)), 8, 8, 0, 8) == (False, 8)


def test_progress_prints_like_qemu_progress() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        p = Progress(True, 2.0)
        p.print(0, 100)
        p.print(1.5, 100)  # within min_skip: not printed
        p.print(1.0, 100)
        p.print(100, 0)
        p.end()
    assert out.getvalue() == "    (0.00/100%)\r    (2.50/100%)\r    (100.00/100%)\r\n"


def test_snapshot_table_round_trip_and_lookups() -> None:
    snaps = [
        Snapshot(0x60000, 1, "1", "a", date_sec=5, icount=0, disk_size=1 << 20),
        Snapshot(0x80000, 1, "7x", "b", vm_clock_nsec=3, disk_size=1 << 20),
        Snapshot(0x90000, 1, "3", "a", vm_state_size=1 << 33, disk_size=1 << 20),
    ]
    blob = serialize_table(snaps)
    assert table_size(snaps) == len(blob)
    assert parse_table(blob, 3, 1 << 20) == snaps
    assert new_snapshot_id(snaps) == "8"  # strtoul("7x") is 7
    assert find_by_id_or_name(snaps, "3") == 2
    assert find_by_id_or_name(snaps, "a") == 0
    assert find_by_id_and_name(snaps, None, "b") == 1
    assert find_by_id_and_name(snaps, "1", "b") == -1
