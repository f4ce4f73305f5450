"""blkverify through qemu-io and qio: identical stdout, stderr, exit status and images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.qemu_oracle import assert_same, needs_qemu, qemu_img, qemu_io, raw_image, run_both

pytestmark = needs_qemu

MIB = 1 << 20


def pair(directory: Path) -> None:
    """a.img: the trusted copy; b.img: differs at 8 KiB, in byte 0, mid-image and last byte;
    c.img: equal to a.img."""
    base = [(0x11, 0, 64 << 10)]
    raw_image(directory / "a.img", MIB, base)
    raw_image(directory / "c.img", MIB, base)
    raw_image(directory / "b.img", MIB, base + [(0x22, 8192, 512)])
    raw_image(directory / "z.img", MIB, base + [(0x5A, 0, 1), (0x33, 524291, 5)])
    raw_image(directory / "e.img", MIB, base + [(0x44, MIB - 1, 1)])


def json_pair(raw: str, test: str, test_driver: str = "raw") -> str:
    test_node = (
        f'{{"driver":"file","filename":"{test}"}}'
        if test_driver == "file"
        else f'{{"driver":"{test_driver}","file":{{"driver":"file","filename":"{test}"}}}}'
    )
    return 'json:{"driver":"blkverify","raw":{"driver":"file","filename":"%s"},"test":%s}' % (
        raw,
        test_node,
    )


CASES: dict[str, list[str]] = {
    # the spellings of one graph
    "prefix-probed": ["-c", "read 0 4k", "-c", "read 6k 4k", "blkverify:a.img:b.img"],
    "prefix-f-raw": ["-f", "raw", "-c", "read 0 4k", "-c", "read 6k 4k", "blkverify:a.img:b.img"],
    "json-nested": ["-c", "read 8190 4", json_pair("a.img", "b.img")],
    "json-file-test": ["-c", "read 8190 4", json_pair("a.img", "b.img", "file")],
    "json-dotted": [
        "-c",
        "read 8k 1",
        'json:{"driver":"blkverify","raw.filename":"a.img","test.driver":"raw",'
        '"test.file.filename":"b.img"}',
    ],
    "image-opts-x": [
        "--image-opts",
        "-c",
        "info",
        "-c",
        "length",
        "-c",
        "map",
        "-c",
        "read 8k 512",
        "driver=blkverify,x-raw=a.img,x-image=b.img",
    ],
    "image-opts-children": [
        "--image-opts",
        "-c",
        "read 6k 4k",
        "driver=blkverify,raw.filename=a.img,test.driver=raw,test.file.filename=b.img",
    ],
    "open-o": [
        "-c",
        "open -o driver=raw,file.driver=blkverify,file.raw.filename=a.img b.img",
        "-c",
        "read 0 512",
        "-c",
        "read 8k 512",
    ],
    "open-o-test-keys": [
        "-c",
        "open -o driver=raw,file.driver=blkverify,file.raw.filename=a.img,"
        "file.test.driver=raw,file.test.file.filename=c.img",
        "-c",
        "read -P 0x11 0 64k",
        "-c",
        "write -P 0x42 0x38000 512",
        "-c",
        "read -P 0x42 0x38000 512",
    ],
    # match, and mismatches at several offsets
    "match-whole": [
        "-f",
        "raw",
        "-c",
        "read -P 0x11 0 64k",
        "-c",
        "read 0 1M",
        "blkverify:a.img:c.img",
    ],
    "mismatch-byte-0": ["-f", "raw", "-c", "read 0 16", "blkverify:a.img:z.img"],
    "mismatch-middle": ["-f", "raw", "-c", "read 512k 4k", "blkverify:a.img:z.img"],
    "mismatch-last-byte": ["-f", "raw", "-c", "read 1020k 4k", "blkverify:a.img:e.img"],
    "mismatch-aio": [
        "-f",
        "raw",
        "-c",
        "aio_read 4k 8k",
        "-c",
        "aio_flush",
        "blkverify:a.img:b.img",
    ],
    "mismatch-readv": ["-f", "raw", "-c", "readv 4k 4k 4k", "blkverify:a.img:b.img"],
    "mismatch-probed-padding": ["-r", "-c", "read 8190 4", "blkverify:a.img:b.img"],
    "mismatch-unaligned": ["-f", "raw", "-c", "read 8000 300", "blkverify:a.img:b.img"],
    "mismatch-ends-run": [
        "-f",
        "raw",
        "-c",
        "read -q 0 4k",
        "-c",
        "read 8k 4k",
        "-c",
        "read 0 4k",
        "blkverify:a.img:b.img",
    ],
    # writes through blkverify, then reads
    "writes-then-reads": [
        "-c",
        "write -P 0x33 0 512",
        "-c",
        "read -P 0x33 0 512",
        "-c",
        "writev -P 0x44 1000 100 200",
        "-c",
        "readv -P 0x44 1000 300",
        "-c",
        "aio_write -P 0x55 4k 4k",
        "-c",
        "aio_flush",
        "-c",
        "read -v 4k 32",
        json_pair("a.img", "c.img"),
    ],
    "write-unaligned-probed": [
        "-c",
        "write -P 0x66 100 1000",
        "-c",
        "read -P 0x66 100 1000",
        "-c",
        "read -P 0x11 0 100",
        "blkverify:a.img:c.img",
    ],
    "write-past-end": [
        "-f",
        "raw",
        "-c",
        "write 1M 512",
        "-c",
        "read 1M 1",
        "blkverify:a.img:c.img",
    ],
    "read-only": ["-r", "-c", "write 0 512", "-c", "discard 0 4k", json_pair("a.img", "c.img")],
    "discard-flush-info": [
        "-f",
        "raw",
        "-c",
        "discard 0 4k",
        "-c",
        "read -P 0x11 0 4k",
        "-c",
        "flush",
        "-c",
        "info",
        "-c",
        "alloc 0 1M",
        "blkverify:a.img:c.img",
    ],
    # children's errors: return value mismatches and the flush that only reaches test
    "raw-write-error": [
        "-c",
        "write 0 512",
        'json:{"driver":"blkverify","raw":{"driver":"blkdebug","inject-error":[{"event":"none",'
        '"iotype":"write","errno":5}],"image":{"driver":"file","filename":"a.img"}},'
        '"test":{"driver":"raw","file":{"driver":"file","filename":"c.img"}}}',
    ],
    "test-read-error": [
        "-c",
        "read 0 512",
        'json:{"driver":"blkverify","test":{"driver":"blkdebug","inject-error":[{"event":"none",'
        '"iotype":"read","errno":28}],"image":{"driver":"file","filename":"a.img"}},'
        '"raw":{"driver":"file","filename":"c.img"}}',
    ],
    "raw-aio-write-error": [
        "-c",
        "aio_write 0 512",
        "-c",
        "aio_flush",
        "-c",
        "read 0 512",
        'json:{"driver":"blkverify","raw":{"driver":"blkdebug","inject-error":[{"event":"none",'
        '"iotype":"write","errno":5}],"image":{"driver":"file","filename":"a.img"}},'
        '"test":{"driver":"file","filename":"c.img"}}',
    ],
    "both-fail-alike": [
        "-c",
        "write 0 512",
        "-c",
        "read -P 0x11 0 512",
        'json:{"driver":"blkverify","raw":{"driver":"blkdebug","inject-error":[{"event":"none",'
        '"iotype":"write"}],"image":{"driver":"file","filename":"a.img"}},"test":{"driver":'
        '"blkdebug","inject-error":[{"event":"none","iotype":"write"}],"image":{"driver":"file",'
        '"filename":"c.img"}}}',
    ],
    "flush-error-raw-unseen": [
        "-t",
        "writeback",
        "-c",
        "write -q 0 512",
        "-c",
        "flush",
        'json:{"driver":"blkverify","raw":{"driver":"blkdebug","inject-error":[{"event":"none",'
        '"iotype":"flush"}],"image":{"driver":"file","filename":"a.img"}},'
        '"test":{"driver":"raw","file":{"driver":"file","filename":"c.img"}}}',
    ],
    "flush-error-test-fails": [
        "-t",
        "writeback",
        "-c",
        "write -q 0 512",
        "-c",
        "flush",
        'json:{"driver":"blkverify","raw":{"driver":"file","filename":"a.img"},"test":{"driver":'
        '"raw","file":{"driver":"blkdebug","inject-error":[{"event":"none","iotype":"flush"}],'
        '"image":{"driver":"file","filename":"c.img"}}}}',
    ],
    # errors for missing and unknown keys, bad filenames
    "missing-test": ["--image-opts", "-c", "info", "driver=blkverify,x-raw=a.img"],
    "missing-raw": ["--image-opts", "-c", "info", "driver=blkverify,x-image=b.img"],
    "missing-both": ["--image-opts", "-c", "info", "driver=blkverify"],
    "unknown-keys": [
        "--image-opts",
        "-c",
        "info",
        "driver=blkverify,x-raw=a.img,x-image=b.img,zzz=1,aaa=2,bogus=3",
    ],
    "unknown-test-key": [
        "--image-opts",
        "-c",
        "info",
        "driver=blkverify,raw.filename=a.img,test.driver=raw,test.file.filename=b.img,test.bogus=1",
    ],
    "unknown-raw-key": [
        "--image-opts",
        "-c",
        "info",
        "driver=blkverify,raw.filename=a.img,raw.bogus=1,test.file.filename=b.img",
    ],
    "file-and-filename": [
        "--image-opts",
        "-c",
        "info",
        "driver=blkverify,x-raw=a.img,raw.filename=a.img,x-image=b.img",
    ],
    "bad-reference": ["--image-opts", "-c", "info", "driver=blkverify,raw=foo,x-image=b.img"],
    "one-path": ["-c", "read 0 4k", "blkverify:a.img"],
    "empty-raw-path": ["-c", "info", "blkverify::b.img"],
    "missing-raw-file": ["-c", "info", "blkverify:nothere:b.img"],
    "f-blkverify-plain-name": ["-f", "blkverify", "-c", "info", "a.img"],
    "reopen-refused": [
        "-f",
        "raw",
        "-c",
        "reopen -r",
        "-c",
        "write -q 0 512",
        "blkverify:a.img:c.img",
    ],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_blkverify_matches_qemu_io(tmp_path: Path, name: str) -> None:
    oracle, candidate = run_both(tmp_path, pair, CASES[name])
    assert_same(oracle, candidate)


def test_streamed_read_names_the_whole_request(tmp_path: Path) -> None:
    """qio moves a 50 MiB read in 4 MiB pieces; the mismatch line still names the request as
    blkverify would have seen it whole (probing pads it to 512-byte sectors)."""

    def setup(directory: Path) -> None:
        raw_image(directory / "big1.img", 64 * MIB)
        raw_image(directory / "big2.img", 64 * MIB, [(5, 40 * MIB, 512)])

    for args in (
        ["-r", "-c", "read 100 50M", "blkverify:big1.img:big2.img"],
        ["-r", "-f", "raw", "-c", "read 100 50M", "blkverify:big1.img:big2.img"],
        [
            "-r",
            "-c",
            "read 100 50M",
            'json:{"driver":"raw","offset":1000,"file":{"driver":"blkverify","raw":{"driver":'
            '"file","filename":"big1.img"},"test":{"driver":"file","filename":"big2.img"}}}',
        ],
        [
            "--image-opts",
            "-c",
            "read 100 50M",
            "driver=raw,file.driver=blkverify,file.raw.driver=blkdebug,file.raw.image.filename="
            "big1.img,file.raw.max-transfer=1M,file.test.driver=file,file.test.filename=big2.img",
        ],
    ):
        sub = tmp_path / str(len(list(tmp_path.iterdir())))
        sub.mkdir()
        oracle, candidate = run_both(sub, setup, args)
        assert "blkverify: read offset=" in oracle.stderr
        assert_same(oracle, candidate)


QCOW2 = importlib.util.find_spec("qio.block.qcow2") is not None


def qcow2_pair(directory: Path) -> None:
    pair(directory)
    qemu_img(directory, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "t.qcow2", "1M")
    qemu_io(directory, "-c", "write -q -P 0x11 0 64k", "-c", "write -q -P 0x22 8k 512", "t.qcow2")
    qemu_img(directory, "create", "-q", "-f", "qcow2", "u.qcow2", "1M")
    qemu_io(directory, "-c", "write -q -P 0x11 0 64k", "u.qcow2")


QCOW2_CASES: dict[str, list[str]] = {
    "qcow2-prefix": ["-c", "read 0 4k", "-c", "read 6k 4k", "blkverify:a.img:t.qcow2"],
    "qcow2-f-raw": ["-f", "raw", "-c", "info", "-c", "read 8k 4k", "blkverify:a.img:t.qcow2"],
    "qcow2-json": [
        "-c",
        "aio_read 4k 8k",
        "-c",
        "aio_flush",
        json_pair("a.img", "t.qcow2", "qcow2"),
    ],
    "qcow2-image-opts": [
        "--image-opts",
        "-c",
        "read 8k 512",
        "driver=blkverify,x-raw=a.img,x-image=t.qcow2",
    ],
    "qcow2-test-driver": [
        "--image-opts",
        "-c",
        "read 8k 512",
        "driver=blkverify,raw.filename=a.img,test.driver=qcow2,test.file.filename=t.qcow2",
    ],
    "qcow2-writes": [
        "-c",
        "write -P 0x33 0 512",
        "-c",
        "write -P 0x44 512k 64k",
        "-c",
        "read -P 0x44 512k 64k",
        "-c",
        "read 0 1M",
        json_pair("c.img", "u.qcow2", "qcow2"),
    ],
}


@pytest.mark.skipif(not QCOW2, reason="qio.block.qcow2 is not importable yet")
@pytest.mark.parametrize("name", sorted(QCOW2_CASES))
def test_blkverify_qcow2_child_matches_qemu_io(tmp_path: Path, name: str) -> None:
    oracle, candidate = run_both(tmp_path, qcow2_pair, QCOW2_CASES[name])
    assert_same(oracle, candidate)
