"""qemu-iotests 080-102 as conformance cases."""

from __future__ import annotations

from builder import Test

HDR_SIZE = 104
BACKING_OFF, BACKING_SIZE, L1_SIZE, L1_OFF = 8, 16, 36, 40
RT_OFF, RT_CLUSTERS, NB_SNAP, SNAP_OFF, HEADER_SIZE = 48, 56, 60, 64, 100
L2_0 = 0x40000
SNAP1 = 0x70000

# 080's damaged states: (name, [(offset, bytes)...] applied cumulatively within one scenario)
SCENARIOS_080: list[tuple[str, list[list[tuple[int, bytes]]]]] = [
    ("huge_header", [[(HEADER_SIZE, b"\xff\xff\xff\xff")], [(HEADER_SIZE, b"\x7f\xff\xff\xff")]]),
    (
        "huge_ext",
        [
            [
                (BACKING_OFF, b"\xff" * 8),
                (HDR_SIZE, b"\x12\x34\x56\x78"),
                (HDR_SIZE + 4, b"\x7f\xff\xff\xff"),
            ],
            [(BACKING_OFF, bytes(7) + bytes([HDR_SIZE + 4]))],
            [(BACKING_OFF, bytes(8))],
        ],
    ),
    ("huge_reftable", [[(RT_CLUSTERS, b"\xff\xff\xff\xff")], [(RT_CLUSTERS, b"\x00\x02\x00\x01")]]),
    ("misaligned_reftable", [[(RT_OFF, b"\x12\x34\x56\x78\x90\xab\xcd\xef")]]),
    (
        "huge_refoffset",
        [[(RT_OFF, b"\xff\xff\xff\xff\xff\xff\x00\x00"), (RT_CLUSTERS, b"\x00\x00\x00\x7f")]],
    ),
    (
        "bad_snapshot_table",
        [
            [(NB_SNAP, b"\xff\xff\xff\xff")],
            [(NB_SNAP, b"\x7f\xff\xff\xff")],
            [(SNAP_OFF, b"\xff\xff\xff\xff\xff\xff\x00\x00"), (NB_SNAP, b"\x00\x00\xff\xff")],
            [(SNAP_OFF, b"\x12\x34\x56\x78\x90\xab\xcd\xef"), (NB_SNAP, bytes(4))],
            [(SNAP_OFF, b"\x00\x00\x00\x00\x01\x00\x00\x00"), (NB_SNAP, b"\x00\x01\x00\x00")],
        ],
    ),
    (
        "bad_l1",
        [
            [(L1_SIZE, b"\xff\xff\xff\xff")],
            [(L1_SIZE, b"\x7f\xff\xff\xff")],
            [(L1_OFF, b"\x7f\xff\xff\xff\xff\xff\x00\x00"), (L1_SIZE, b"\x00\x00\xff\xff")],
            [(L1_OFF, b"\x12\x34\x56\x78\x90\xab\xcd\xef"), (L1_SIZE, b"\x00\x00\x00\x01")],
        ],
    ),
    (
        "bad_backing_size",
        [[(BACKING_OFF, b"\x00\x00\x00\x00\x00\x00\x10\x00"), (BACKING_SIZE, b"\xff\xff\xff\xff")]],
    ),
]


def t080() -> list[Test]:
    out = []
    for name, steps in SCENARIOS_080:
        t = Test(
            f"iotest_080_{name}",
            f"iotest 080: qcow2 header validation, {name.replace('_', ' ')} (each damaged state in its own image)",
        )
        t.pristine()
        images = []
        for i, _ in enumerate(steps):
            img = f"s{i}.qcow2"
            images.append(img)
            t.image(img, "qcow2", "64M")
            for step in steps[: i + 1]:
                for off, data in step:
                    t.poke_file(img, off, data)
        for img in images:
            t.run(img, "read 0 512")
        for img in images:
            t.wipe(img)
        out.append(t)

    t = Test(
        "iotest_080_l1_with_snapshot",
        "iotest 080: L1 size 0 with an internal snapshot in the image (info through qemu-io instead of qemu-img info)",
    )
    t.pristine()
    t.image("t.qcow2", "qcow2", "64M")
    t.snapshot("t.qcow2", "foo")
    t.poke_file("t.qcow2", L1_SIZE, bytes(4))
    t.run("t.qcow2", "info", "read 0 512", "write 0 512")
    t.wipe("t.qcow2")
    out.append(t)

    t = Test(
        "iotest_080_huge_l2_entry",
        "iotest 080: an L2 entry with a huge physical offset (qemu-img snapshot steps replaced by qemu-io reads and writes)",
    )
    t.pristine()
    for i, entry in enumerate(
        (b"\xbf\xff\xff\xff\xff\xff\x00\x00", b"\x80\x00\x00\xff\xff\xff\x00\x00")
    ):
        img = f"t{i}.qcow2"
        t.image(img, "qcow2", "64M")
        t.qio(f"-f qcow2 -c 'write -q 0 512' {img}")
        t.poke_file(img, L2_0, entry)
    for i in range(2):
        t.run(f"t{i}.qcow2", "read 0 512", "map", "write 0 512", "write 64k 512", "info")
    for i in range(2):
        t.wipe(f"t{i}.qcow2")
    out.append(t)

    for what, off, data in (
        ("offset", SNAP1, b"\x00\x00\x00\x00\x00\x40\x02\x00"),
        ("size", SNAP1 + 8, b"\x10\x00\x00\x00"),
    ):
        t = Test(
            f"iotest_080_snapshot_l1_{what}",
            f"iotest 080: invalid snapshot L1 table {what}; open with overlap-check.inactive-l2=on and write",
        )
        t.pristine()
        t.image("t.qcow2", "qcow2", "64M")
        t.qio("-f qcow2 -c 'write -q 0 512' t.qcow2")
        t.snapshot("t.qcow2", "test")
        t.poke_file("t.qcow2", off, data)
        t.run("", "open -o overlap-check.inactive-l2=on t.qcow2", "write 0 4k")
        t.run("t.qcow2", "read 0 4k", "map")
        t.wipe("t.qcow2")
        out.append(t)
    return out


def t089() -> list[Test]:
    out = []
    t = Test(
        "iotest_089_json_nested",
        "iotest 089: json: filename with nested qcow2-over-qcow2; option merging of -o and json: (blkdebug part in iotests-filters)",
    )
    t.image("t.base", "raw", "64M")
    t.run("-f raw t.base", "write -P 42 0 512", "write -P 23 512 512", "write -P 66 1024 512")
    t.img("convert -f raw -O qcow2 t.base t.qcow2")
    t.img("convert -f qcow2 -O qcow2 t.qcow2 t2.qcow2")
    t.run(
        '-t writeback \'json:{"driver": "qcow2", "file": {"driver": "qcow2", "file": {"filename": "t2.qcow2"}}}\'',
        "read -P 42 0 512", "read -P 23 512 512", "read -P 66 1024 512",
    )  # fmt: skip
    t.run("t2.qcow2", "read -P 42 0 512")
    t.run("", 'open -o driver=qcow2 json:{"file.filename":"t.qcow2"}', "info")
    t.run("", 'open -o driver=qcow2 json:{"driver":"raw","file.filename":"t.qcow2"}', "info")
    t.run("", 'open json:{"driver":"qcow2","file.filename":"t.qcow2"}', "info", "length")
    out.append(t)
    return out


def t090() -> list[Test]:
    t = Test(
        "iotest_090_discard_compressed", "iotest 090: discarding a compressed cluster frees it"
    )
    t.image("t.qcow2", "qcow2", "128K")
    t.run("-f qcow2 t.qcow2", "write -c -P 42 0 64k", "write -c -P 23 64k 64k", "discard 64k 64k")
    t.run("-f qcow2 t.qcow2", "read -P 0 64k 64k", "read -P 42 0 64k", "map")
    return [t]


def t102() -> list[Test]:
    t = Test(
        "iotest_102_map_truncated",
        "iotest 102: map on an image whose data cluster was cut off the file (concurrent qemu-system part skipped)",
    )
    t.pristine()
    t.image("t.qcow2", "qcow2", "64K")
    t.run("-f qcow2 t.qcow2", "write 0 64k")
    t.img(f"resize -f raw --shrink t.qcow2 {5 * 65536}")
    t.run("t.qcow2", "map")
    t.run("t.qcow2", "alloc 0 64k", "read 0 64k", "read -v 0 16")
    t.wipe("t.qcow2")
    return [t]


def all_tests() -> list[Test]:
    tests: list[Test] = []
    for f in (t080, t089, t090, t102):
        tests += f()
    return tests
