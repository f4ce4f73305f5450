"""qio's own blkverify features: report mode, verify, diff, mismatches, graph (exact output)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.qemu_oracle import qio_run, raw_image

MIB = 1 << 20
GIB = 1 << 30
REPORT = "driver=blkverify,mismatch=report,raw.filename=a.img,test.driver=raw,test.file.filename="


@pytest.fixture()
def pair(tmp_path: Path) -> Path:
    base = [(0x11, 0, 64 << 10)]
    raw_image(tmp_path / "a.img", MIB, base)
    raw_image(tmp_path / "b.img", MIB, base + [(0x22, 8192, 512), (0x22, 20000, 3)])
    raw_image(tmp_path / "c.img", MIB, base)
    return tmp_path


def json_test(test: str) -> str:
    """blkverify:a.img:TEST with the test child's format given (no probing warning)."""
    return (
        'json:{"driver":"blkverify","raw":{"driver":"file","filename":"a.img"},'
        f'"test":{{"driver":"raw","file":{{"driver":"file","filename":"{test}"}}}}}}'
    )


def qio(directory: Path, *args: str) -> tuple[str, str, int]:
    result = qio_run(list(args), directory)
    return result.stdout, result.stderr, result.status


def test_report_mode_keeps_going_and_records(pair: Path) -> None:
    out, err, status = qio(
        pair,
        "--image-opts",
        "-c", "read 6k 4k",
        "-c", "read -P 0x11 0 4k",
        "-c", "readv 8k 256 256",
        "-c", "aio_read 19k 2k",
        "-c", "aio_flush",
        "-c", "mismatches",
        REPORT + "b.img",
    )  # fmt: skip
    assert out == (
        "blkverify: read offset=6144 bytes=4096 contents mismatch at offset 8192 (sector 16)\n"
        "read 4096/4096 bytes at offset 0\n"
        "4 KiB, 1 ops; <TIME>\n"
        "blkverify: read offset=8192 bytes=512 contents mismatch at offset 8192 (sector 16)\n"
        "blkverify: read offset=19456 bytes=2048 contents mismatch at offset 20000 (sector 39)\n"
        "1: blkverify: read offset=6144 bytes=4096 contents mismatch at offset 8192 (sector 16)\n"
        "2: blkverify: read offset=8192 bytes=512 contents mismatch at offset 8192 (sector 16)\n"
        "3: blkverify: read offset=19456 bytes=2048 contents mismatch at offset 20000 (sector 39)\n"
        "mismatches: 3 mismatches recorded in this session\n"
    )
    assert err == ""
    assert status == 1


def test_report_mode_return_value_mismatch(pair: Path) -> None:
    out, _err, status = qio(
        pair,
        "--image-opts",
        "-c", "write -P 0x22 8k 512",
        "-c", "write -P 0x22 8k 512",
        "-c", "mismatches",
        "driver=blkverify,mismatch=report,raw.filename=a.img,test.driver=blkdebug,"
        "test.inject-error.0.event=none,test.inject-error.0.iotype=write,"
        "test.inject-error.0.once=on,test.image.filename=c.img",
    )  # fmt: skip
    assert out == (
        "blkverify: write offset=8192 bytes=512 return value mismatch -5 != 0\n"
        "wrote 512/512 bytes at offset 8192\n"
        "512 bytes, 1 ops; <TIME>\n"
        "1: blkverify: write offset=8192 bytes=512 return value mismatch -5 != 0\n"
        "mismatches: 1 mismatch recorded in this session\n"
    )
    assert status == 1


def test_default_mode_is_qemu_io_exit(pair: Path) -> None:
    out, err, status = qio(pair, "-c", "read 6k 4k", "-c", "mismatches", json_test("b.img"))
    assert out == ""
    assert err == "blkverify: read offset=6144 bytes=4096 contents mismatch at offset 8192\n"
    assert status == 1


def test_no_mismatches(pair: Path) -> None:
    out, _err, status = qio(
        pair, "--image-opts", "-c", "read -q 0 64k", "-c", "mismatches", REPORT + "c.img"
    )
    assert out == "mismatches: none recorded in this session\n"
    assert status == 0


def test_bad_mismatch_mode(pair: Path) -> None:
    _out, err, status = qio(
        pair, "--image-opts", "-c", "info", REPORT.replace("report", "bogus") + "c.img"
    )
    assert err == "PROG: can't open: Parameter 'mismatch' expects 'exit' or 'report', not 'bogus'\n"
    assert status == 1


def test_verify_lists_extents(pair: Path) -> None:
    out, _err, status = qio(
        pair, "-f", "raw", "-c", "verify", "-c", "verify -q 0 16k", "blkverify:a.img:b.img"
    )
    assert out == (
        "            offset         length   first sector    last sector\n"
        "              8192            512             16             16\n"
        "             20000              3             39             39\n"
        "verify: 2 mismatching extents, 515 bytes differ in 1048576 bytes at offset 0\n"
        "verify: 1 mismatching extent, 512 bytes differ in 16384 bytes at offset 0\n"
    )
    assert status == 1


def test_verify_equal_children_succeeds(pair: Path) -> None:
    out, _err, status = qio(pair, "-f", "raw", "-c", "verify", "blkverify:a.img:c.img")
    assert out == "verify: 0 mismatching extents, 0 bytes differ in 1048576 bytes at offset 0\n"
    assert status == 0


def test_verify_merges_adjacent_sectors(tmp_path: Path) -> None:
    raw_image(tmp_path / "a.img", MIB)
    raw_image(tmp_path / "b.img", MIB, [(1, 511, 2), (1, 4100, 1), (1, 5000, 1), (1, 6000, 1)])
    out, _err, _status = qio(tmp_path, "-f", "raw", "-c", "verify", "blkverify:a.img:b.img")
    assert out == (
        "            offset         length   first sector    last sector\n"
        "               511              2              0              1\n"
        "              4100            901              8              9\n"
        "              6000              1             11             11\n"
        "verify: 3 mismatching extents, 904 bytes differ in 1048576 bytes at offset 0\n"
    )


def test_verify_errors(pair: Path) -> None:
    out, err, status = qio(
        pair,
        "-f",
        "raw",
        "-c",
        "verify 0 2M",
        "-c",
        "verify 1",
        "-c",
        "verify x 1",
        "blkverify:a.img:c.img",
    )
    assert out == (
        "verify failed: 0+2097152 goes past the end of the image (1048576)\n"
        "verify [-q] [off len] -- compares the blkverify children (the whole image by default)\n"
        "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x\n"
    )
    assert status == 1
    _out, err, status = qio(pair, "-f", "raw", "-c", "verify", "-c", "diff 0 1", "a.img")
    assert err == (
        "PROG: verify: the image has no blkverify node (open blkverify:RAW:TEST)\n"
        "PROG: diff: the image has no blkverify node (open blkverify:RAW:TEST)\n"
    )
    assert status == 1


def test_diff_side_by_side(pair: Path) -> None:
    out, _err, status = qio(pair, "-f", "raw", "-c", "diff 8176 40", "blkverify:a.img:b.img")
    marks = "           " + " ".join(["^^"] * 16) + "    " + " ".join(["^^"] * 16) + "\n"
    ones, twos = " ".join(["11"] * 16), " ".join(["22"] * 16)
    assert out == (
        "           raw                                                test\n"
        f"00001ff0:  {ones}    {ones}\n"
        f"00002000:  {ones} !  {twos}\n"
        f"{marks}"
        f"00002010:  {' '.join(['11'] * 8)}                         !  {' '.join(['22'] * 8)}\n"
        f"           {' '.join(['^^'] * 8)}                            {' '.join(['^^'] * 8)}\n"
        "diff: 24 of 40 bytes differ, the first at offset 8192 (sector 16)\n"
    )
    assert status == 0


def test_diff_context_and_marks(pair: Path) -> None:
    out, _err, _status = qio(
        pair, "-f", "raw", "-c", "diff -n 1 19968 128", "blkverify:a.img:b.img"
    )
    ones = " ".join(["11"] * 16)
    assert out == (
        "           raw                                                test\n"
        "           ... 1 identical line\n"
        f"00004e10:  {ones}    {ones}\n"
        f"00004e20:  {ones} !  22 22 22 11 11 11 11 11 11 11 11 11 11 11 11 11\n"
        "           ^^ ^^ ^^" + " " * 43 + "^^ ^^ ^^\n"
        f"00004e30:  {ones}    {ones}\n"
        "           ... 4 identical lines\n"
        "diff: 3 of 128 bytes differ, the first at offset 20000 (sector 39)\n"
    )


def test_diff_identical_and_limits(pair: Path) -> None:
    out, _err, status = qio(
        pair, "-f", "raw", "-c", "diff -n 0 0 64", "-c", "diff 0 2M", "-c", "diff 0 1025k",
        "blkverify:a.img:c.img",
    )  # fmt: skip
    assert out == (
        "           raw                                                test\n"
        "           ... 4 identical lines\n"
        "diff: the children are identical in 64 bytes at offset 0\n"
        "diff failed: 0+2097152 goes past the end of the image (1048576)\n"
        "diff failed: 0+1049600 goes past the end of the image (1048576)\n"
    )
    assert status == 1


def test_graph(pair: Path) -> None:
    out, _err, status = qio(pair, "-c", "graph", "-c", "graph -s", "blkverify:a.img:b.img")
    assert status == 0
    lines = out.splitlines()
    assert lines[-1] == "raw → blkverify(raw: file a.img, test: raw → file b.img)"
    assert lines[0].startswith("raw [#block") and lines[0].endswith(", probed]")
    assert lines[1].startswith("└── file: blkverify [#block")
    assert lines[2].startswith("    ├── raw: file a.img [#block")
    assert lines[3].startswith("    └── test: raw [#block")
    assert lines[4].startswith("        └── file: file b.img [#block")


def test_graph_shows_options(pair: Path) -> None:
    out, _err, _status = qio(
        pair,
        "--image-opts",
        "-c",
        "graph -s",
        "-c",
        "graph",
        "driver=raw,offset=4096,size=64k,file.filename=a.img",
    )
    lines = out.splitlines()
    assert lines[0] == "raw → file a.img"
    assert lines[1].endswith("] {offset=4096, size=65536}")


def test_help_lists_qio_commands_only_in_extended_help(pair: Path) -> None:
    out, _err, _status = qio(pair, "-c", "help", "-c", "help verify")
    listing, extended = out.split("Use 'help commandname' for extended help.\n")
    assert "verify" not in listing and "graph" not in listing
    assert extended.startswith("verify [-q] [off len] -- ")


def test_multi_gib_sparse_pair(tmp_path: Path) -> None:
    """8 GiB sparse children differing near the start, in the middle and in the last byte:
    block status skips the holes, so this takes well under a second of I/O."""
    size = 8 * GIB
    common = [(1, 0, MIB), (7, 4 * GIB, 64 << 10), (9, size - MIB, MIB)]
    raw_image(tmp_path / "s1.img", size, common)
    raw_image(
        tmp_path / "s2.img",
        size,
        common + [(2, 1000, 24), (8, 4 * GIB + 1024, 512), (3, size - 1, 1)],
    )
    t0 = time.perf_counter()
    out, _err, status = qio(
        tmp_path,
        "-r",
        "-f",
        "raw",
        "-c",
        "verify",
        "-c",
        "diff -n 0 8589934576 16",
        "blkverify:s1.img:s2.img",
    )
    elapsed = time.perf_counter() - t0
    assert out == (
        "            offset         length   first sector    last sector\n"
        "              1000             24              1              1\n"
        "        4294968320            512        8388610        8388610\n"
        "        8589934591              1       16777215       16777215\n"
        "verify: 3 mismatching extents, 537 bytes differ in 8589934592 bytes at offset 0\n"
        "            raw                                                test\n"
        "1fffffff0:  09 09 09 09 09 09 09 09 09 09 09 09 09 09 09 09 !  "
        "09 09 09 09 09 09 09 09 09 09 09 09 09 09 09 03\n"
        + " " * (12 + 45)
        + "^^"
        + " " * (4 + 45)
        + "^^\n"
        "diff: 1 of 16 bytes differ, the first at offset 8589934591 (sector 16777215)\n"
    )
    assert status == 1
    assert elapsed < 10


def test_zero_write_and_truncate_keep_the_children_equal(pair: Path) -> None:
    """qemu-io 7.2 aborts on write -z and truncates only the raw child; qio does both sides."""
    out, _err, status = qio(
        pair,
        "-f", "raw",
        "-c", "write -q -z 0 4k",
        "-c", "write -q -z -u 100 1000",
        "-c", "read -q -P 0 0 4k",
        "-c", "truncate 2M",
        "-c", "length",
        "-c", "verify",
        "blkverify:a.img:c.img",
    )  # fmt: skip
    assert (
        out == "2 MiB\nverify: 0 mismatching extents, 0 bytes differ in 2097152 bytes at offset 0\n"
    )
    assert status == 0
    assert (pair / "a.img").stat().st_size == (pair / "c.img").stat().st_size == 2 * MIB
