"""qemu-iotests 042-069 as conformance cases."""

from __future__ import annotations

from builder import Test


def t042() -> list[Test]:
    t = Test(
        "iotest_042_zero_size",
        "iotest 042: zero-size qcow2 images: created, converted, compressed, rebased; qemu-io on each",
    )
    t.image("t.orig", "qcow2", "0")
    t.img("convert -O qcow2 t.orig t.qcow2")
    t.img("convert -c -O qcow2 t.orig c.qcow2")
    t.img("rebase -u -b t.orig -F qcow2 c.qcow2")
    t.img("rebase -b t.orig -F qcow2 t.qcow2")
    for img in ("t.orig", "t.qcow2", "c.qcow2"):
        t.run(
            f"-f qcow2 {img}",
            "length",
            "read 0 512",
            "write 0 512",
            "map",
            "info",
            "alloc 0 0",
            "read 0 0",
            "write -z 0 0",
        )
    return [t]


def t048() -> list[Test]:
    out = []
    for fmt, ext in (("raw", "img"), ("qcow2", "qcow2")):
        t = Test(
            f"iotest_048_compare_setup_{fmt}",
            f"iotest 048 ({fmt}): the qemu-io steps of the qemu-img compare test (resize +32M, write -z of the new area)",
        )
        opts = ("cluster_size=4096",) if fmt == "qcow2" else ()
        t.image(f"t.{ext}", fmt, "128M", *opts)
        t.run(f"-f {fmt} t.{ext}", *[f"write -P 45 {524288 + i * 4096} 4096" for i in range(4)])
        t.img(f"resize -f {fmt} t.{ext} +32M")
        t.run(f"-f {fmt} t.{ext}", "write -z 128M 32M", "length", "read -P 0 128M 32M")
        t.run(
            f"-f {fmt} t.{ext}",
            "write -P 67 1228800 4096",
            "write -P 123 0 4096",
            "read -P 45 524288 16k",
        )
        t.run(f"-f {fmt} t.{ext}", "write -P 100 0 512", "write -P 101 512 512", "read -v 500 24")
        out.append(t)
    return out


def t052() -> list[Test]:
    out = []
    for fmt, ext in (("raw", "img"), ("qcow2", "qcow2")):
        t = Test(
            f"iotest_052_snapshot_mode_{fmt}",
            f"iotest 052 ({fmt}): -s (BDRV_O_SNAPSHOT): whole-image read and write leave the image unmodified",
        )
        t.image(f"t.{ext}", fmt, "128M")
        t.run(f"-s -f {fmt} t.{ext}", "read 0 128M")
        t.run(f"-s -f {fmt} t.{ext}", "write -P 0xa 0 128M", replay=False)
        t.run(f"-f {fmt} t.{ext}", "read -P 0 0 128M")
        out.append(t)
    return out


def t053() -> list[Test]:
    t = Test(
        "iotest_053_single_sector_compressed",
        "iotest 053: a single-sector image converted with -c; virtual size and data kept",
    )
    t.image("t.orig", "qcow2", "512")
    t.run("-f qcow2 t.orig", "write -P0xa 0 512")
    t.img("convert -c -O qcow2 t.orig t.qcow2")
    t.run("-f qcow2 t.qcow2", "read -P0xa 0 512", "length", "map", "read 0 1024", "write -c 0 512")
    return [t]


def t054() -> list[Test]:
    t = Test(
        "iotest_054_huge_size",
        "iotest 054: qcow2 header size set to 1 EB (qcow2.py set-header as a raw poke)",
    )
    t.pristine()
    t.image("t.qcow2", "qcow2", "4G")
    t.poke_file("t.qcow2", 24, (1024**6).to_bytes(8, "big"))
    t.run("-f qcow2 t.qcow2", "length", "read 0 512")
    t.run("-r t.qcow2", "length")
    t.wipe("t.qcow2")
    return [t]


L1 = 0x30000
RB = 0x20000
L2 = 0x40000


def t060() -> list[Test]:
    out = []
    t = Test(
        "iotest_060_l2_into_l1",
        "iotest 060: an L1 entry pointing at the L1 table; the overlap check marks the image corrupt; r/w open refused, r/o allowed",
    )
    t.pristine()
    t.image("t.qcow2", "qcow2", "64M", "compat=1.1")
    t.poke_file("t.qcow2", L1, b"\x80\x00\x00\x00\x00\x03\x00\x00")
    t.run("", "open -o overlap-check=all t.qcow2", "write -P 0x2a 0 512", replay=False)
    t.run("", "open -o overlap-check=all t.qcow2", "read 0 512", replay=False)
    t.run("", "open -r t.qcow2", "read 0 512", "info")
    t.wipe("t.qcow2")
    out.append(t)

    t = Test(
        "iotest_060_data_into_refblock",
        "iotest 060: a data cluster redirected onto the refcount block; write refused and image marked corrupt (qemu-img check -r part skipped)",
    )
    t.pristine()
    t.image("t.qcow2", "qcow2", "64M", "compat=1.1")
    t.qio(f"-f raw -c 'truncate {L2 + 65536}' t.qcow2")
    t.poke_file("t.qcow2", L1, b"\x80\x00\x00\x00\x00\x04\x00\x00")
    t.poke_file("t.qcow2", RB + 8, b"\x00\x01")
    t.poke_file("t.qcow2", L2, b"\x80\x00\x00\x00\x00\x02\x00\x00")
    t.run("", "open -o overlap-check=all t.qcow2", "write -P 0x2a 0 512", replay=False)
    t.run("", "open -r t.qcow2", "read 0 512", "info", "map")
    t.run("", "open -o overlap-check=all t.qcow2", "write -P 0x2a 0 512", replay=False)
    t.wipe("t.qcow2")
    out.append(t)

    t = Test(
        "iotest_060_data_into_inactive_l2",
        "iotest 060: a data cluster redirected onto a snapshot's inactive L2 table",
    )
    t.pristine()
    t.image("t.qcow2", "qcow2", "64M", "compat=1.1")
    t.run("", "open -o overlap-check=all t.qcow2", "write -P 1 0 512")
    t.snapshot("t.qcow2", "foo")
    t.run("", "open -o overlap-check=all t.qcow2", "write -P 2 0 512")
    t.setup("#")  # cut: the poke below must follow the replayed writes
    t.poke_file("t.qcow2", 0x80000, b"\x80\x00\x00\x00\x00\x04\x00\x00")
    t.run("", "open -o overlap-check=all t.qcow2", "write -P 3 0 512", replay=False)
    t.run("", "open -r t.qcow2", "read -P 2 0 512", "info")
    t.wipe("t.qcow2")
    out.append(t)
    return out


def t066() -> list[Test]:
    t = Test(
        "iotest_066_discard_zero_clusters",
        "iotest 066: write, write -z, discard of preallocated zero clusters (no leaks)",
    )
    t.image("t.qcow2", "qcow2", "64M", "compat=1.1")
    t.run("-f qcow2 t.qcow2", "write 0 256k", "write -z 0 256k", "discard 0 256k")
    t.run("-f qcow2 t.qcow2", "map", "read -P 0 0 256k")
    return [t]


def all_tests() -> list[Test]:
    tests: list[Test] = []
    for f in (t042, t048, t052, t053, t054, t060, t066):
        tests += f()
    return tests
