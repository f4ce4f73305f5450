"""qemu-iotests 103-153 as conformance cases."""

from __future__ import annotations

from builder import Test


def t103() -> list[Test]:
    t = Test(
        "iotest_103_cache_sizes",
        "iotest 103: qcow2 metadata cache size options: invalid combinations, valid ones, minimal L2 cache with COW",
    )
    t.image("t.qcow2", "qcow2", "64K")
    t.qio("-f qcow2 -c 'write -q -P 42 0 64k' t.qcow2")
    for o in (
        "cache-size=1.25M,l2-cache-size=1M,refcount-cache-size=0.25M",
        "cache-size=1M,l2-cache-size=2M",
        "cache-size=1M,refcount-cache-size=2M",
        "cache-size=0,l2-cache-size=0,refcount-cache-size=0",
        "l2-cache-entry-size=256",
        "l2-cache-entry-size=4242",
        "l2-cache-entry-size=128k",
        "l2-cache-size=-1",
        "cache-size=foo",
        "cache-clean-interval=-1",
    ):
        t.run("", f"open -o {o} t.qcow2")
    for o in (
        "cache-size=0", "l2-cache-size=0", "refcount-cache-size=0", "cache-size=2M",
        "cache-size=2M,l2-cache-size=1M", "cache-size=2M,refcount-cache-size=1M",
        "l2-cache-size=1M,refcount-cache-size=0.25M",
    ):  # fmt: skip
        t.run("", f"open -o {o} t.qcow2", "read -P 42 0 64k")
    for o in ("l2-cache-entry-size=512", "l2-cache-entry-size=16k", "l2-cache-entry-size=64k"):
        t.run("", f"open -o {o} t.qcow2", "read -P 42 0 64k")
    t.snapshot("t.qcow2", "foo")
    t.run("", "open -o cache-size=0 t.qcow2", "write 0 64k", "read -P 0xcd 0 64k")
    return [t]


def t111() -> list[Test]:
    t = Test(
        "iotest_111_missing_backing_create",
        "iotest 111: image over a backing file that does not exist (created with -u; qemu-img create error itself not comparable)",
    )
    t.pristine()
    t.img("create -q -f qcow2 -u -b t.inexistent -F qcow2 t.qcow2 64M")
    t.run("t.qcow2", "read 0 512")
    t.run("-f qcow2 t.qcow2", "info")
    t.run("", "open -o backing=null t.qcow2", "read 0 512")
    t.wipe("t.qcow2")
    return [t]


def t114() -> list[Test]:
    t = Test(
        "iotest_114_bad_backing_format",
        "iotest 114: an unknown backing file format in the header; open fails without probing, backing.driver overrides it",
    )
    t.image("t.base", "qcow2", "64M")
    t.img("create -q -f qcow2 -b t.base -F raw t.qcow2 64M")
    t.poke_file("t.qcow2", 120, b"foo")
    t.run("", "open t.qcow2", "read 0 4k")
    t.run("", "open -o backing.driver=qcow2 t.qcow2", "read 0 4k", "info")
    t.run("-f qcow2 t.qcow2", "read 0 4k")
    t.run("", "open -r -o backing.driver=raw t.qcow2", "read 0 4k", "map")
    # keep the image openable for the harness: give it back a real format name
    t.run(
        "-f raw t.qcow2",
        "write -q -P 0x72 120 1",
        "write -q -P 0x61 121 1",
        "write -q -P 0x77 122 1",
        replay=False,
    )
    t.run("t.qcow2", "info", "read -P 0 0 4k")
    return [t]


def t153() -> list[Test]:
    t = Test(
        "iotest_153_force_share",
        "iotest 153: -U / force-share with qemu-io (qemu-system and concurrent-lock parts need a second process)",
    )
    t.image("t.base", "qcow2", "32M")
    t.img("create -q -f qcow2 -b t.base -F qcow2 t.qcow2")
    for flag in ("", "-U"):
        t.run(f"{flag} t.qcow2".strip(), "read 0 512")
        t.run(f"{flag} -r t.qcow2".strip(), "read 0 512")
        t.run("", f"open {flag} t.qcow2".replace("  ", " "), "read 0 512")
        t.run("", f"open -r {flag} t.qcow2".replace("  ", " "), "read 0 512")
    t.run("", "open -r -U -o driver=null-co,force-share=on", "length")
    t.run("", "open -r -U -o driver=null-co,force-share=off")
    t.run("", "open -U -o driver=null-co,force-share=on")
    t.run("", "open -r -o driver=null-co,force-share=on", "read 0 512")
    t.run("", "open -o driver=null-co,force-share=on")
    t.run("--image-opts -U -r driver=null-co,force-share=off", "length")
    t.run("", "bogus", "help bogus")
    t.run("", "bogus")  # an unknown command alone: exit status 1
    t.run("-U -r --image-opts driver=qcow2,file.filename=t.qcow2,file.locking=off", "read 0 512")
    t.run("", "open -o file.locking=bogus t.qcow2")
    return [t]


def all_tests() -> list[Test]:
    tests: list[Test] = []
    for f in (t103, t111, t114, t153):
        tests += f()
    return tests
