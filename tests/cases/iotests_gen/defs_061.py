"""qemu-iotests 061-073 as conformance cases."""

from __future__ import annotations

from builder import Test


def t061() -> list[Test]:
    out = []
    t = Test(
        "iotest_061_downgrade_zero_expansion",
        "iotest 061: qemu-img amend compat=0.10 expands zero clusters; data kept",
    )
    t.image("t.qcow2", "qcow2", "64M", "compat=1.1", "lazy_refcounts=on")
    t.run("-f qcow2 t.qcow2", "write -z 0 128k", "info", "map")
    t.img("amend -o compat=0.10 t.qcow2")
    t.run("-f qcow2 t.qcow2", "read -P 0 0 128k", "info", "map")
    out.append(t)

    t = Test(
        "iotest_061_dirty_downgrade",
        "iotest 061: write, flush, abort with lazy refcounts (dirty image), then amend compat=0.10 / lazy_refcounts=off",
    )
    t.image("a.qcow2", "qcow2", "64M", "compat=1.1", "lazy_refcounts=on")
    t.run("-f qcow2 a.qcow2", "write -P 0x2a 0 128k", "flush", "abort")
    t.run("-r -f qcow2 a.qcow2", "info", "read -P 0x2a 0 128k")
    t.run("-f qcow2 a.qcow2", "info", "read -P 0x2a 0 128k")  # r/w open repairs the dirty image
    t.img("amend -o compat=0.10 a.qcow2")
    t.run("-f qcow2 a.qcow2", "read -P 0x2a 0 128k", "info")
    t.image("b.qcow2", "qcow2", "64M", "compat=1.1", "lazy_refcounts=on")
    t.run("-f qcow2 b.qcow2", "write -P 0x2a 0 128k", "flush")
    t.img("amend -o lazy_refcounts=off b.qcow2")
    t.run("-f qcow2 b.qcow2", "read -P 0x2a 0 128k", "info")
    out.append(t)

    t = Test(
        "iotest_061_upgrade_resize",
        "iotest 061: amend compat=1.1,lazy_refcounts=on,size=128M of a v2 image",
    )
    t.image("t.qcow2", "qcow2", "64M", "compat=0.10")
    t.run("-f qcow2 t.qcow2", "write -P 0x2a 42M 64k", "info")
    t.img("amend -o compat=1.1,lazy_refcounts=on,size=128M t.qcow2")
    t.run("-f qcow2 t.qcow2", "read -P 0x2a 42M 64k", "length", "info", "write -P 1 127M 1M")
    out.append(t)

    t = Test(
        "iotest_061_amend_backing",
        "iotest 061: give an image a backing file (amend refuses backing changes in 7.2: rebase -u instead)",
    )
    t.image("t.qcow2", "qcow2", "64M", "compat=1.1")
    t.image("t.base", "qcow2", "64M", "compat=1.1")
    t.run("-f qcow2 t.base", "write -P 0x2a 0 128k")
    t.run("-f qcow2 t.qcow2", "read -P 0 0 128k")
    t.img("rebase -u -b t.base -F qcow2 t.qcow2")
    t.run("-f qcow2 t.qcow2", "read -P 0x2a 0 128k", "map")
    out.append(t)

    t = Test(
        "iotest_061_zero_expansion_snapshots",
        "iotest 061: zero expansion of inactive and shared L2 tables on downgrade (snapshots)",
    )
    t.image("a.qcow2", "qcow2", "64M", "compat=1.1")
    t.run("-f qcow2 a.qcow2", "write -z 0 128k")
    t.snapshot("a.qcow2", "foo")
    t.run("-f qcow2 a.qcow2", "write -P 0x2a 0 128k")
    t.image("b.qcow2", "qcow2", "64M", "compat=1.1")
    t.run("-f qcow2 b.qcow2", "write -z 0 128k")
    t.snapshot("b.qcow2", "foo")
    t.img("amend -o compat=0.10 a.qcow2")
    t.img("amend -o compat=0.10 b.qcow2")
    t.run("-f qcow2 a.qcow2", "read -P 0x2a 0 128k", "info")
    t.run("-f qcow2 b.qcow2", "read -P 0 0 128k", "map")
    t.img("snapshot -a foo a.qcow2")
    t.img("snapshot -a foo b.qcow2")
    t.run("-f qcow2 a.qcow2", "read -P 0 0 128k", "map")
    t.run("-f qcow2 b.qcow2", "read -P 0 0 128k", "map")
    out.append(t)

    t = Test(
        "iotest_061_zero_expansion_backed",
        "iotest 061: zero expansion on a backed image (v3 -> v2 keeps zero clusters reading as zero)",
    )
    t.image("t.base", "qcow2", "64M", "compat=1.1")
    t.run("-f qcow2 t.base", "write -P 0x2a 0 128k")
    t.img("create -q -f qcow2 -o compat=1.1 -b t.base -F qcow2 t.qcow2 64M")
    t.run("-f qcow2 t.qcow2", "read -P 0x2a 0 128k", "write -z 0 64k")
    t.img("amend -o compat=0.10 t.qcow2")
    t.run("-f qcow2 t.qcow2", "read -P 0 0 64k", "read -P 0x2a 64k 64k", "map", "info")
    t.run(
        "-f qcow2 t.qcow2",
        "write -z 64k 64k",
        "write -z -u 0 64k",
        "discard 0 64k",
        "read -v 0 16",
        "map",
    )
    out.append(t)

    t = Test(
        "iotest_061_prealloc_zero_full",
        "iotest 061: a fully written image zeroed with write -z, then downgraded",
    )
    t.image("t.qcow2", "qcow2", "64M", "compat=1.1")
    t.run("-f qcow2 t.qcow2", "write -P 0x2a 0 64M", "write -z 0 64M")
    t.img("amend -o compat=0.10 t.qcow2")
    t.run("-f qcow2 t.qcow2", "read -P 0 0 64M", "map")
    out.append(t)
    return out


def t069() -> list[Test]:
    t = Test(
        "iotest_069_missing_backing",
        "iotest 069: opening an image whose backing file is missing (final state kept openable)",
    )
    t.pristine()
    t.img("create -q -f qcow2 -b nothere.qcow2 -F qcow2 -u gone.qcow2 128K")
    t.run("gone.qcow2", "quit")
    t.run("-f qcow2 gone.qcow2", "read 0 512")
    t.run("", "open -o backing=null gone.qcow2", "read 0 512", "info")
    t.run(
        "",
        "open -o driver=qcow2,backing.driver=null-co,backing.size=131072 gone.qcow2",
        "read -P 0 0 512",
    )
    t.run("", "open -r gone.qcow2")
    t.wipe("gone.qcow2")
    return [t]


def t072() -> list[Test]:
    t = Test(
        "iotest_072_nested_formats",
        "iotest 072: qcow2 opened over qcow2 (driver=qcow2,file.driver=qcow2) reads the inner raw data",
    )
    t.image("t.base", "raw", "64M")
    t.run("-f raw t.base", "write -P 42 0 512", "write -P 23 512 512", "write -P 66 1024 512")
    t.img("convert -f raw -O qcow2 t.base t.qcow2")
    t.img("convert -f qcow2 -O qcow2 t.qcow2 t2.qcow2")
    t.run(
        "",
        "open -o driver=qcow2,file.driver=qcow2,file.file.filename=t.qcow2",
        "read -P 42 0 512",
        "read -P 23 512 512",
        "read -P 66 1024 512",
    )
    t.run("t.qcow2", "read -P 42 0 512")
    t.run(
        "",
        "open -o driver=raw,file.driver=qcow2,file.file.filename=t.qcow2",
        "read -P 42 0 512",
        "length",
        "map",
    )
    return [t]


def t073() -> list[Test]:
    t = Test(
        "iotest_073_contiguous_clusters",
        "iotest 073: count_contiguous_clusters across normal/unallocated/compressed/zero cluster pairs over a backing file",
    )
    t.image("t.base", "qcow2", "128M")
    t.img("create -q -f qcow2 -b t.base -F qcow2 t.qcow2")
    t.run("-f qcow2 t.base", "write -P 0xa5 0 128M")
    img, base = "-f qcow2 t.qcow2", "-f qcow2 t.base"
    steps = [
        (img, "write -P 0x11 0 0x10000"), (base, "write -P 0x11 0x10000 0x10000"), (img, "read -P 0x11 0 0x20000"),
        (img, "write -P 0x22 0x20000 0x10000"), (img, "write -c -P 0x22 0x30000 0x10000"), (img, "read -P 0x22 0x20000 0x20000"),
        (img, "write -P 0x33 0x40000 0x20000"), (base, "write -P 0x33 0x40000 0x20000"), (img, "write -P 0 0x40000 0x10000"),
        (img, "write -z 0x50000 0x10000"), (img, "read -P 0 0x40000 0x20000"),
        (base, "write -P 0x44 0x60000 0x10000"), (img, "write -P 0x44 0x70000 0x10000"), (img, "read -P 0x44 0x60000 0x20000"),
        (base, "write -P 0x55 0x80000 0x10000"), (img, "write -c -P 0x55 0x90000 0x10000"), (img, "read -P 0x55 0x80000 0x20000"),
        (base, "write -P 0x66 0xa0000 0x20000"), (base, "write -P 0 0xa0000 0x10000"), (img, "write -z 0xb0000 0x10000"),
        (img, "read -P 0 0xa0000 0x20000"),
        (img, "write -c -P 0x77 0xc0000 0x10000"), (img, "write -P 0x77 0xd0000 0x10000"), (img, "read -P 0x77 0xc0000 0x20000"),
        (img, "write -c -P 0x88 0xe0000 0x10000"), (base, "write -P 0x88 0xf0000 0x10000"), (img, "read -P 0x88 0xe0000 0x20000"),
        (img, "write -c -P 0 0x100000 0x10000"), (img, "write -c -P 0x99 0x110000 0x10000"), (img, "write -z 0x110000 0x10000"),
        (img, "read -P 0 0x100000 0x20000"),
        (img, "write -P 0xaa 0x120000 0x10000"), (img, "write -P 0 0x130000 0x10000"), (img, "write -z 0x120000 0x10000"),
        (img, "read -P 0 0x120000 0x20000"),
        (img, "write -z 0x140000 0x10000"), (base, "write -P 0 0x150000 0x10000"), (img, "read -P 0 0x140000 0x20000"),
        (img, "write -c -P 0 0x170000 0x10000"), (img, "write -z 0x160000 0x10000"), (img, "read -P 0 0x160000 0x20000"),
    ]  # fmt: skip
    for r, c in steps:
        t.run(r, c)
    t.run(img, "map", "alloc 0 0x180000")
    return [t]


def all_tests() -> list[Test]:
    tests: list[Test] = []
    for f in (t061, t069, t072, t073):
        tests += f()
    return tests
