"""qemu-iotests 121-221 as conformance cases."""

from __future__ import annotations

from builder import Test


def t121() -> list[Test]:
    out = []
    for n, size, cmds in (
        (1, "64512K", ("write 62M 1025K", "write 64M 1M")),
        (2, "64513K", ("write 63M 130K",)),
    ):
        t = Test(
            f"iotest_121_reftable_growth_{n}",
            f"iotest 121 test {n}: refcount table growth may not collide with new refcount structures (1k clusters, metadata preallocation, resized to 65M)",
        )
        t.image("t.qcow2", "qcow2", size, "preallocation=metadata", "cluster_size=1k")
        t.img("resize -q t.qcow2 65M")
        t.run("-f qcow2 t.qcow2", *cmds)
        t.run("-f qcow2 t.qcow2", "read -P 0xcd 63M 130K", "length")
        out.append(t)
    return out


def t138() -> list[Test]:
    t = Test(
        "iotest_138_huge_cluster_offset",
        "iotest 138: a data cluster at 32 PB (512-byte clusters); qemu-io reads and maps it (qemu-img check part is the harness's)",
    )
    t.pristine()
    t.image("t.qcow2", "qcow2", "512", "cluster_size=512")
    t.qio("-f qcow2 -c 'write -q 0 512' t.qcow2")
    t.poke_file("t.qcow2", 2048, b"\x80\x80\x00\x00\x00\x00\x00\x00")
    t.run("-f qcow2 t.qcow2", "read 0 512", "map", "alloc 0 512")
    t.run("-f qcow2 t.qcow2", "write 0 512")
    t.wipe("t.qcow2")
    return [t]


def t179() -> list[Test]:
    t = Test(
        "iotest_179_write_zeroes_unmap",
        "iotest 179: write -z with and without -u on unallocated, data, zero and backed clusters (qemu-img map and blkdebug parts skipped)",
    )
    t.image("t.base", "qcow2", "64M")
    t.img("create -q -f qcow2 -b t.base -F qcow2 t.qcow2")
    b, o = "-f qcow2 t.base", "-f qcow2 t.qcow2"
    steps = [
        (b, "write -z -u 2M 2M"), (b, "write -z 6M 2M"), (b, "map"),
        (b, "write -z -u 10485761 2097150"), (b, "write -z 14680065 2097150"), (b, "map"),
        (b, "write 18M 14M"), (b, "write -z -u 20M 2M"), (b, "write -z 24M 6M"), (b, "map"),
        (b, "write -z -u 26M 2M"), (b, "write -z 28M 2M"), (b, "map"),
        (b, "write -z 32M 8M"), (b, "write -z -u 34M 2M"), (b, "write -z 36M 2M"), (b, "map"),
        (b, "write -z 40M 8M"), (b, "write 48M 8M"), (o, "write -z -u 42M 2M"), (o, "write -z 44M 2M"),
        (o, "write -z -u 50M 2M"), (o, "write -z 52M 2M"), (o, "write -z -u 58M 2M"), (o, "write -z 60M 2M"),
        (o, "map"),
    ]  # fmt: skip
    for r, c in steps:
        t.run(r, c)
    t.run(b, "w -z -u 20M 2M", "w -z 20M 2M", "w -z 28M 2M", "map")
    return [t]


def t221() -> list[Test]:
    t = Test(
        "iotest_221_unaligned_raw",
        "iotest 221: raw image of 65537 bytes: map, a one-byte write at 64k, map again (qemu-img map --output=json replaced by qemu-io map/alloc)",
    )
    t.image("t.img", "raw", "65537")
    t.qio("-f raw -c 'truncate 65537' t.img")
    t.run("-f raw t.img", "map", "length", "alloc 65536 1")
    t.run("-f raw t.img", "w 65536 1", "map", "length")
    t.run("-f raw t.img", "truncate 65537", "map", "read -v 65530 7", "w 65537 1")
    return [t]


def all_tests() -> list[Test]:
    tests: list[Test] = []
    for f in (t121, t138, t179, t221):
        tests += f()
    return tests
