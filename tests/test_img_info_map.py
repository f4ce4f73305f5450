"""qio-img info and map against qemu-img on the same images (made by the real QEMU tools)."""

from __future__ import annotations

import shlex
import struct
import subprocess
from pathlib import Path

import pytest

from qio.block.qcow2.snapshots import (
    NO_ICOUNT,
    Snapshot,
    parse_table,
    serialize_entry,
    serialize_table,
)
from qio.block.qjson import to_json_pretty
from qio.numbers import size_to_str
from tests.differential import QEMU_IMG, QEMU_IO, tool_env
from tests.img_differential import ImgPair


def _img(d: Path, *args: str) -> None:
    subprocess.run([QEMU_IMG, *args], cwd=d, env=tool_env(), check=True, capture_output=True)


def _io(d: Path, image: str, *cmds: str) -> None:
    argv = [QEMU_IO]
    for c in cmds:
        argv += ["-c", c]
    subprocess.run([*argv, image], cwd=d, env=tool_env(), check=True, capture_output=True)


def _set_incompatible_bits(path: Path, bits: int) -> None:
    with open(path, "r+b") as f:
        f.seek(72)
        value = struct.unpack(">Q", f.read(8))[0]
        f.seek(72)
        f.write(struct.pack(">Q", value | bits))


def _edit_snapshots(src: Path, dst: Path) -> None:
    """A copy whose snapshots have a VM state size, a VM clock and no icount (what a VM's
    savevm leaves), rewritten through qio's snapshot table serializer."""
    from qio.block.qcow2.layout import parse_header

    data = bytearray(src.read_bytes())
    h = parse_header(bytes(data[:65536]))
    start = h.snapshots_offset
    snaps = parse_table(bytes(data[start : start + 4096]), h.nb_snapshots, h.size)
    old = serialize_table(snaps)
    assert bytes(data[start : start + len(old)]) == old  # QEMU's bytes, reproduced
    snaps[0].vm_clock_nsec = (3 * 3600 + 25 * 60 + 7) * 10**9 + 123456789
    snaps[0].vm_state_size = (5 << 20) + 17
    snaps[0].icount = 123456789
    snaps[1].icount = NO_ICOUNT
    new = serialize_table(snaps)
    data[start : start + len(new)] = new
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("images")
    (d / "sub").mkdir()
    _img(d, "create", "-q", "-f", "raw", "r.img", "10M")
    _img(d, "create", "-q", "-f", "raw", "e.img", "0")
    _img(d, "create", "-q", "-f", "qcow2", "e.qcow2", "0")
    _img(d, "create", "-q", "-f", "qcow2", "m.qcow2", "4M")
    _io(
        d,
        "m.qcow2",
        "write -P 1 0 64k",
        "write -z 128k 64k",
        "write -P 2 512k 1M",
        "write -z -u 3M 64k",
    )
    _img(d, "create", "-q", "-f", "qcow2", "c.qcow2", "4M")
    _io(d, "c.qcow2", "write -P 1 0 64k", "write -c -P 3 2M 64k")
    _img(d, "create", "-q", "-f", "qcow2", "-b", "m.qcow2", "-F", "qcow2", "mt.qcow2")
    _io(d, "mt.qcow2", "write -P 4 32k 64k", "write -z 600k 4k")
    _img(
        d, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k", "xl.qcow2", "2M"
    )
    _io(d, "xl.qcow2", "write -P 1 4k 4k", "write -z 64k 4k", "write -P 1 300k 100k")
    _img(d, "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "pm.qcow2", "2M")
    _img(d, "create", "-q", "-f", "qcow2", "-o", "data_file=md.img", "mdf.qcow2", "2M")
    _io(d, "mdf.qcow2", "write -P 1 0 64k")
    _img(
        d,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=rd.img,data_file_raw=on",
        "rdf.qcow2",
        "1M",
    )
    _img(d, "create", "-q", "-f", "qcow2", "-o", "data_file=lost.img", "lostdata.qcow2", "1M")
    (d / "lost.img").unlink()  # info does not open the data file; map must
    _img(d, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "2M")
    _io(d, "v2.qcow2", "write -z 0 64k", "write -P 1 64k 64k")
    _img(
        d,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd,lazy_refcounts=on,refcount_bits=1",
        "z.qcow2",
        "1G",
    )
    _img(d, "create", "-q", "-f", "qcow2", "sub/base.qcow2", "1M")
    _img(d, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
    _img(
        d,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.qcow2",
        "-F",
        "qcow2",
        "orphan.qcow2",
        "1M",
    )
    _img(
        d,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "loop2.qcow2",
        "-F",
        "qcow2",
        "loop1.qcow2",
        "1M",
    )
    _img(
        d,
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "loop1.qcow2",
        "-F",
        "qcow2",
        "loop2.qcow2",
        "1M",
    )
    _img(d, "create", "-q", "-f", "qcow2", "snaps.qcow2", "1M")
    _io(d, "snaps.qcow2", "write -P 7 0 128k")
    _img(d, "snapshot", "-c", "first", "snaps.qcow2")
    _img(d, "snapshot", "-c", "second one", "snaps.qcow2")
    _img(d, "bitmap", "--add", "snaps.qcow2", "bm0")
    _img(d, "bitmap", "--add", "-g", "128k", "--disable", "snaps.qcow2", "bm1")
    _edit_snapshots(d / "snaps.qcow2", d / "vmsnaps.qcow2")
    _img(d, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "dirty.qcow2", "1M")
    _set_incompatible_bits(d / "dirty.qcow2", 1)
    _img(d, "create", "-q", "-f", "qcow2", "corrupt.qcow2", "1M")
    _set_incompatible_bits(d / "corrupt.qcow2", 2)
    _img(d, "create", "-q", "-f", "qcow2", "ünï cödé.qcow2", "1M")
    (d / "rand.img").write_bytes(bytes(range(256)) * 768)
    return d


IMAGES = (
    "r.img e.img e.qcow2 m.qcow2 c.qcow2 mt.qcow2 xl.qcow2 pm.qcow2 mdf.qcow2 rdf.qcow2 "
    "lostdata.qcow2 v2.qcow2 z.qcow2 sub/top.qcow2 orphan.qcow2 snaps.qcow2 vmsnaps.qcow2 dirty.qcow2 corrupt.qcow2 rand.img"
).split()

INFO_CASES = [f"info {image}" for image in IMAGES]
INFO_CASES += [f"info --output=json {image}" for image in IMAGES]
INFO_CASES += [
    "info --backing-chain mt.qcow2",
    "info --backing-chain --output=json mt.qcow2",
    "info --backing-chain sub/top.qcow2",
    "info --backing-chain orphan.qcow2",
    "info --backing-chain loop1.qcow2",
    "info 'ünï cödé.qcow2'",
    "info --output=json 'ünï cödé.qcow2'",
    "info -f raw m.qcow2",
    "info -f qcow2 r.img",
    "info --output=x r.img",
    "info",
    "info a b",
    "info nope",
    "info -U --image-opts driver=qcow2,file.filename=mt.qcow2",
    "info --image-opts driver=raw,file.filename=r.img",
    """info --backing-chain 'json:{"driver":"qcow2","file":{"driver":"file","filename":"sub/top.qcow2"}}'""",
    "info -x r.img",
    "info --image-opts foo",
    "info --f raw r.img",
    "info --back --out=json mt.qcow2",
    "info --format",
]
MAP_CASES = [f"map {image}" for image in IMAGES]
MAP_CASES += [f"map --output=json {image}" for image in IMAGES]
MAP_CASES += [
    "map -s 100k -l 1M m.qcow2",
    "map --output=json -s 100k -l 1M mt.qcow2",
    "map --start-offset=5M m.qcow2",
    "map --output=json --start-offset=5M m.qcow2",
    "map -l 0 --output=json m.qcow2",
    "map --max-length=70k --output=json mt.qcow2",
    "map -s x m.qcow2",
    "map -s 9E m.qcow2",
    "map -l -1 m.qcow2",
    "map --output=bad m.qcow2",
    "map",
    "map a b",
    "map nope",
    "map -f raw m.qcow2",
    "map --output=json -f raw m.qcow2",
    "map -U --image-opts driver=qcow2,file.filename=mt.qcow2",
    """map --output=json 'json:{"driver":"raw","offset":4096,"file":{"driver":"file","filename":"rand.img"}}'""",
    """map --output=json 'json:{"driver":"blkdebug","image":{"driver":"file","filename":"mt.qcow2"}}'""",
    "map --output=json -s 0x1k m.qcow2",
]


# qemu-img's own options, before the command name
GLOBAL_CASES = [
    "",
    "--",
    "-- info r.img",
    "-T foo",
    "-T foo info r.img",
    "--tr=foo info r.img",
    "-Tfoo,nofile info r.img",
    "-T bogus=1 info r.img",
    "-T file=nonexist/x info r.img",
    "-T",
    "--trace",
    "-x",
    "--x info",
    "--help=1",
    "info -T foo r.img",
    "nosuchcommand r.img",
]


@pytest.mark.oracle
@pytest.mark.parametrize("line", INFO_CASES + MAP_CASES + GLOBAL_CASES)
def test_like_qemu_img(line: str, tmp_path: Path, template: Path) -> None:
    pair = ImgPair(tmp_path, template)
    pair.check(shlex.split(line))


def test_size_to_str() -> None:
    assert [size_to_str(v) for v in (0, 999, 1000, 4096, 200704, 1351680, 1 << 26)] == [
        "0 B",
        "999 B",
        "0.977 KiB",
        "4 KiB",
        "196 KiB",
        "1.29 MiB",
        "64 MiB",
    ]


def test_json_pretty_printer() -> None:
    # Key order and layout of `qemu-img info --output=json` on a raw image (QDict order).
    info = {
        "filename": "r.img",
        "format": "raw",
        "dirty-flag": False,
        "actual-size": 4096,
        "virtual-size": 10485760,
    }
    assert to_json_pretty(info) == (
        '{\n    "virtual-size": 10485760,\n    "filename": "r.img",\n    "format": "raw",\n'
        '    "actual-size": 4096,\n    "dirty-flag": false\n}'
    )
    assert to_json_pretty([("flags", []), ("name", 'a\u00e9"b')]) == (
        '{\n    "flags": [\n    ],\n    "name": "a\\u00E9\\"b"\n}'
    )


def test_snapshot_entry_round_trip() -> None:
    snap = Snapshot(0x50000, 1, "1", "first", 1700000000, 5, 7_000_000_123, 0, 1 << 20, 0)
    blob = serialize_entry(snap)
    assert len(blob) == 40 + 24 + 1 + 5
    assert parse_table(blob, 1, 0) == [snap]
    # An old entry with no extra data: the disk size is the image's, no icount.
    old = bytearray(blob[:40])
    struct.pack_into(">I", old, 36, 0)
    old += b"1first"
    parsed = parse_table(bytes(old), 1, 12345)[0]
    assert (parsed.disk_size, parsed.has_icount, parsed.name) == (12345, False, "first")


def test_help_lists_the_commands_and_formats(tmp_path: Path) -> None:
    from tests.img_differential import run_qio_img

    result = run_qio_img(["--help"], tmp_path)
    assert result.status == 0
    assert "\n  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] " in (
        result.out
    )
    assert "\n  info [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n" in (
        result.out
    )
    assert "\n  map [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] " in (
        result.out
    )
    assert "Supported formats: " in result.out and " qcow2 raw" in result.out
    assert run_qio_img(["info", "-h"], tmp_path).out == result.out
