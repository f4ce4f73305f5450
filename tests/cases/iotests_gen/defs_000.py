"""qemu-iotests 001-029 as conformance cases."""

from __future__ import annotations

from builder import Test, do_io, io, io_test

FORMATS = (("raw", "img"), ("qcow2", "qcow2"))


def t001() -> list[Test]:
    out = []
    for fmt, ext in FORMATS:
        t = Test(
            f"iotest_001_rw_whole_{fmt}",
            f"iotest 001 ({fmt}): read, rewrite and verify a whole 128M image",
        )
        t.image(f"t.{ext}", fmt, "128M")
        t.run(f"-f {fmt} t.{ext}", "read 0 128M")
        t.run(f"-f {fmt} t.{ext}", "write -P 0xa 0 128M")
        t.run(f"-f {fmt} t.{ext}", "read -P 0xa 0 128M")
        out.append(t)
    return out


def t002() -> list[Test]:
    out = []
    for fmt, ext in FORMATS:
        t = Test(
            f"iotest_002_pread_pwrite_{fmt}",
            f"iotest 002 ({fmt}): read/write -p (byte-granularity), unaligned writes and pattern checks",
        )
        t.image(f"t.{ext}", fmt, "128M")
        r = f"-f {fmt} t.{ext}"
        t.run(r, "read -p 0 128M")
        t.run(r, "write -pP 0xa 0 128M")
        t.run(r, "read -pP 0xa 0 128M")
        for c in ("0xab 66 42", "0xac 512 288", "0xad 800 224", "0xae 66000 128k", "0xaf 256k 42"):
            t.run(r, f"write -pP {c}")
        for c in (
            "0xa 0 66", "0xab 66 42", "0xa 108 404", "0xac 512 288", "0xad 800 224",
            "0xa 1k 64976", "0xae 66000 128k", "0xa 197072 65072", "0xaf 256k 42", "0xa 262186 470",
        ):  # fmt: skip
            t.run(r, f"read -pP {c}")
        out.append(t)
    return out


def t003() -> list[Test]:
    out = []
    for fmt, ext in FORMATS:
        t = Test(
            f"iotest_003_readv_writev_{fmt}",
            f"iotest 003 ({fmt}): readv/writev of the whole image, a 7-vector write at 67M",
        )
        t.image(f"t.{ext}", fmt, "128M")
        r = f"-f {fmt} t.{ext}"
        t.run(r, "readv 0 128M")
        t.run(r, "writev -P 0xa 0 128M")
        t.run(r, "readv -P 0xa 0 128M")
        t.run(r, "writev -P 0xb 67M 8k 8k 8k 8k 8k 8k 8k")
        t.run(r, "readv -P 0xb 67M 8k 8k 8k 8k 8k 8k 8k")
        out.append(t)
    return out


def t004() -> list[Test]:
    t = Test(
        "iotest_004_beyond_eof",
        "iotest 004: write/read/writev/readv before, into, at and past the end of a 128M image",
    )
    t.image("t.img", "raw", "128M")
    t.image("t.qcow2", "qcow2", "128M")
    for fmt, ext in FORMATS:
        r = f"-f {fmt} t.{ext}"
        for verb in ("write", "read"):
            for c in ("127M 1M", "127M 4M", "128M 4096", "140M 4096", "-p 140M 4096"):
                t.run(r, f"{verb} {c}")
            t.run(r, f"{verb}v 140M 4096")
        t.run(
            r,
            "aio_write 127M 4M",
            "aio_flush",
            "aio_read 128M 512",
            "aio_flush",
            "write -z 128M 512",
            "discard 128M 512",
            "read -P 0xcd 127M 1M",
        )
    return [t]


def t005() -> list[Test]:
    out = []
    for fmt, ext in FORMATS:
        t = Test(
            f"iotest_005_large_image_{fmt}",
            f"iotest 005 ({fmt}): a 5000G image; small read and small write",
        )
        t.image(f"t.{ext}", fmt, "5000G")
        t.run(f"-f {fmt} t.{ext}", "read 1024 4096")
        t.run(f"-f {fmt} t.{ext}", "write 8192 4096")
        out.append(t)
    return out


def t008() -> list[Test]:
    out = []
    for fmt, ext in FORMATS:
        t = Test(
            f"iotest_008_aio_rw_{fmt}",
            f"iotest 008 ({fmt}): aio_read/aio_write of the whole 128M image",
        )
        t.image(f"t.{ext}", fmt, "128M")
        t.run(f"-f {fmt} t.{ext}", "aio_read 0 128M")
        t.run(f"-f {fmt} t.{ext}", "aio_write -P 0xa 0 128M")
        t.run(f"-f {fmt} t.{ext}", "aio_read -P 0xa 0 128M")
        out.append(t)
    return out


def t009_010_011() -> list[Test]:
    t9 = Test(
        "iotest_009_free_clusters",
        "iotest 009: qcow2 free-cluster accounting regression; image must check clean",
    )
    t9.image("t.qcow2", "qcow2", "6G")
    t9.run(
        "-f qcow2 t.qcow2",
        "write -P 65 2048k 4k",
        "write 4k 4k",
        "write 9M 4k",
        "read -P 65 -s 4k -l 4k 2044k 8k",
    )
    t10 = Test(
        "iotest_010_used_cluster",
        "iotest 010: qcow2 wrong-used-cluster regression; image must check clean",
    )
    t10.image("t.qcow2", "qcow2", "6G")
    t10.run(
        "-f qcow2 t.qcow2",
        "write -P 165 2048k 4k", "write 64k 4k", "write 9M 4k", "write -P 165 2044k 4k",
        "write -P 99 8M 4k", "read -P 165 2044k 8k",
    )  # fmt: skip
    t11 = Test(
        "iotest_011_aio_same_cluster",
        "iotest 011: two overlapping aio_write (i M and i M+512, 1M each) on qcow2, ten times; image must check clean",
    )
    t11.image("t.qcow2", "qcow2", "6G")
    for i in range(1, 11):
        t11.run("-f qcow2 t.qcow2", f"aio_write {i << 20} 1M", f"aio_write {(i << 20) + 512} 1M")
    return [t9, t10, t11]


def t012() -> list[Test]:
    t = Test(
        "iotest_012_read_only",
        "iotest 012: open read-only (-r) and read (chmod a-w not expressible; -r part only)",
    )
    t.image("t.img", "raw", "128M")
    t.image("t.qcow2", "qcow2", "128M")
    t.run("-r -f raw t.img", "read 0 512")
    t.run("-r -f qcow2 t.qcow2", "read 0 512")
    t.run("-r -f qcow2 t.qcow2", "write 0 512", replay=False)
    return [t]


def _pattern_tests(
    t: Test, run: str, ops: tuple[str, ...], offsets: tuple[int, ...], cluster: int, num: int
) -> None:
    for offset in offsets:
        for op in ops:
            for cmds in io_test(op, offset, cluster, num):
                t.run(run, *cmds)


OPS = ("writev", "read", "write", "readv")
G4 = 4294967296


def _compress_test(num: str, topic: str, cluster: int, num_large: int, size: str) -> list[Test]:
    """013/023 shape: io_test on an empty image, convert -c, reads, then odd offsets."""
    out = []
    empty = Test(
        f"iotest_{num}_{topic}_c{cluster}_empty",
        f"iotest {num}: qcow2 {cluster}-byte clusters, io_test patterns on an empty image",
    )
    empty.image("t.qcow2", "qcow2", size, f"cluster_size={cluster}")
    _pattern_tests(empty, "-f qcow2 t.qcow2", OPS, (0, G4), cluster, num_large)
    out.append(empty)

    comp = Test(
        f"iotest_{num}_{topic}_c{cluster}_compressed",
        f"iotest {num}: qcow2 {cluster}-byte clusters, io_test patterns written, image compressed "
        "with qemu-img convert -c; reads, then odd-offset writes over compressed clusters",
    )
    comp.image("t.qcow2", "qcow2", size, f"cluster_size={cluster}")
    for offset in (0, G4):
        for op in ("writev",):
            for cmds in io_test(op, offset, cluster, num_large):
                comp.qio(f"-f qcow2 {_quiet_cmds(cmds)} t.qcow2")
    comp.img("convert -f qcow2 -O qcow2 -c t.qcow2 c.qcow2")
    _pattern_tests(comp, "-f qcow2 c.qcow2", ("read", "readv"), (0, G4), cluster, num_large)
    _pattern_tests(comp, "-f qcow2 c.qcow2", OPS, (512, G4 + 512), cluster, num_large)
    out.append(comp)
    return out


def t013() -> list[Test]:
    return _compress_test("013", "patterns", 4096, 8, "6G")


def io_test2(
    t: Test, run: str, img: str, offset: int, cluster: int, num: int, convert_to: str
) -> None:
    """common.pattern's io_test2: compressed/used/free cluster mix; convert -c in the middle."""
    step = 9 * cluster
    for k in (4, 5, 8):
        t.qio(
            f"-f qcow2 {_quiet_cmds(do_io('writev', offset + k * cluster, cluster, step, num, 165))} {img}"
        )
    t.img(f"convert -f qcow2 -O qcow2 -c {img} {convert_to}")
    run = run.replace(img, convert_to)
    for k in (0, 1, 3):
        t.run(run, *do_io("writev", offset + k * cluster, cluster, step, num, 165))
    t.run(run, *do_io("readv", offset, 2 * cluster, step, num, 165))
    t.run(run, *do_io("readv", offset + 3 * cluster, 3 * cluster, step, num, 165))
    t.run(run, *do_io("readv", offset + 8 * cluster, cluster, step, num, 165))
    t.run(run, *do_io("readv", offset + 2 * cluster, cluster, step, num, 0))
    t.run(run, *do_io("readv", offset + 6 * cluster, 2 * cluster, step, num, 0))


def _quiet_cmds(cmds: list[str]) -> str:
    return " ".join("-c '" + c.replace(" -P", " -q -P", 1) + "'" for c in cmds)


def t014() -> list[Test]:
    out = []
    t = Test(
        "iotest_014_test2_offset0",
        "iotest 014: io_test2 (used/compressed/free cluster mix, 4k clusters) at offset 0",
    )
    t.image("o.qcow2", "qcow2", "6G", "cluster_size=4096")
    io_test2(t, "-f qcow2 o.qcow2", "o.qcow2", 0, 4096, 256, "t.qcow2")
    out.append(t)
    snap = Test(
        "iotest_014_snapshots",
        "iotest 014: io_test patterns (4k clusters) after each of three qemu-img snapshot -c "
        "(the io_test2 prelude is iotest_014_test2_offset0; here a plain fill stands in for it)",
    )
    snap.image("t.qcow2", "qcow2", "6G", "cluster_size=4096")
    snap.qio("-f qcow2 -c 'write -q -P 165 0 1M' -c 'write -q -P 165 4G 1M' t.qcow2")
    for i in (1, 2, 3):
        snap.snapshot("t.qcow2", f"test{i}")
        _pattern_tests(snap, "-f qcow2 t.qcow2", OPS, (0, G4), 4096, 8)
    out += [snap]
    return out


def t015() -> list[Test]:
    t = Test(
        "iotest_015_refcount_growth_snapshots",
        "iotest 015: 1k clusters, 36M image filled twice with snapshots in between (refcount table growth); "
        "snapshot -a then aio_read verification",
    )
    t.image("t.qcow2", "qcow2", "36M", "cluster_size=1k")
    t.run("-f qcow2 t.qcow2", "aio_write -P 123 0 36M")
    t.snapshot("t.qcow2", "snap1")
    t.run("-f qcow2 t.qcow2", "aio_write -P 165 0 36M")
    t.snapshot("t.qcow2", "snap2")
    t.img("snapshot -a snap1 t.qcow2")
    t.run("-f qcow2 t.qcow2", "aio_read -P 123 0 36M")
    t.img("snapshot -a snap2 t.qcow2")
    t.run("-f qcow2 t.qcow2", "aio_read -P 165 0 36M")
    return [t]


def _backing_fill(t: Test, run: str, offsets: tuple[int, ...], top: bool) -> None:
    for offset in offsets:
        if not top:
            t.run(run, *io("writev", offset, 512, 1024, 64))
            t.run(run, *io("writev", offset + 65536, 65536, 65536, 1))
        else:
            t.run(run, *io("writev", offset + 512, 512, 1024, 64))
            t.run(run, *io("writev", offset + 65536 + 65536, 65536, 65536, 1))


def _backing_read(t: Test, run: str, offsets: tuple[int, ...]) -> None:
    for offset in offsets:
        t.run(run, *io("readv", offset, 512, 1024, 64))
        t.run(run, *io("readv", offset + 512, 512, 1024, 64))
        t.run(run, *io("readv", offset + 65536, 65536, 65536, 1))
        t.run(run, *io("readv", offset + 131072, 65536, 65536, 1))
        t.run(run, *do_io("readv", offset + 65536 + 65536 * 4, 65536, 65536, 1, 0))


def t017_018_020() -> list[Test]:
    out = []
    t = Test(
        "iotest_017_backing_reads",
        "iotest 017: alternating backing-file/image-file sectors and clusters at 0 and 4G",
    )
    t.image("t.base", "qcow2", "6G")
    _backing_fill(t, "-f qcow2 t.base", (0, G4), top=False)
    t.img("create -q -f qcow2 -b t.base -F qcow2 t.qcow2 6G")
    _backing_fill(t, "-f qcow2 t.qcow2", (0, G4), top=True)
    _backing_read(t, "-f qcow2 t.qcow2", (0, G4))
    out.append(t)

    t = Test(
        "iotest_018_convert_merge",
        "iotest 018: convert merges the backing file into the output; reads of the merged image",
    )
    t.image("t.base", "qcow2", "6G")
    _backing_fill(t, "-f qcow2 t.base", (0, G4), top=False)
    t.img("create -q -f qcow2 -b t.base -F qcow2 t.orig 6G")
    _backing_fill(t, "-f qcow2 t.orig", (0, G4), top=True)
    t.img("convert -O qcow2 t.orig t.qcow2")
    _backing_read(t, "-f qcow2 t.qcow2", (0, G4))
    out.append(t)

    t = Test(
        "iotest_020_commit",
        "iotest 020: qemu-img commit of the overlay into its base; reads from the base "
        "(base preallocated with metadata so that the parallel commit job lays it out deterministically)",
    )
    t.image("t.base", "qcow2", "6G", "preallocation=metadata")
    _backing_fill(t, "-f qcow2 t.base", (0, G4), top=False)
    t.img("create -q -f qcow2 -b t.base -F qcow2 t.qcow2 6G")
    _backing_fill(t, "-f qcow2 t.qcow2", (0, G4), top=True)
    t.img("commit -q t.qcow2")
    _backing_read(t, "-f qcow2 t.base", (0, G4))
    out.append(t)
    return out


def t019() -> list[Test]:
    out = []
    for n, opt in ((1, "-B t.base"), (2, "-o backing_file=t.base,backing_fmt=qcow2")):
        t = Test(
            f"iotest_019_convert_backing_{n}",
            f"iotest 019: convert with {opt.split('=')[0]} keeps backing clusters out of the output; alloc and reads",
        )
        t.image("t.base", "qcow2", "6G")
        for offset in (0, G4):
            t.run("-f qcow2 t.base", *do_io("writev", offset, 512, 1024, 64, 42))
            t.run("-f qcow2 t.base", *do_io("writev", offset + (1 << 20), 65536, 65536, 1, 42))
        t.img("create -q -f qcow2 -b t.base -F qcow2 t.orig 6G")
        for offset in (0, G4):
            t.run("-f qcow2 t.orig", *do_io("writev", offset + 512, 512, 1024, 64, 43))
            t.run(
                "-f qcow2 t.orig", *do_io("writev", offset + (1 << 20) + 65536, 65536, 65536, 1, 43)
            )
        extra = " -F qcow2" if n == 1 else ""
        t.img(f"convert -f qcow2 -O qcow2 {opt}{extra} t.orig t.qcow2")
        r = "-f qcow2 t.qcow2"
        for offset in (0, G4):
            t.run(r, f"alloc {offset + (1 << 20)} 65536")
        for offset in (0, G4):
            t.run(r, *do_io("readv", offset, 512, 1024, 64, 42))
            t.run(r, *do_io("readv", offset + 512, 512, 1024, 64, 43))
            t.run(r, *do_io("readv", offset + (1 << 20), 65536, 65536, 1, 42))
            t.run(r, *do_io("readv", offset + (1 << 20) + 65536, 65536, 65536, 1, 43))
            t.run(r, *do_io("readv", offset + (1 << 20) + 4 * 65536, 65536, 65536, 1, 0))
        out.append(t)
    return out


def t021() -> list[Test]:
    out = []
    for fmt, ext in FORMATS:
        t = Test(
            f"iotest_021_invalid_patterns_{fmt}",
            f"iotest 021 ({fmt}): invalid -P patterns for every I/O command",
        )
        t.image(f"t.{ext}", fmt, "128M")
        for pattern in ("-1", "300", "12m", "4k", "route66"):
            for op in ("writev", "read", "write", "readv", "aio_read", "aio_write"):
                t.run(f"-f {fmt} t.{ext}", f"{op} -P {pattern} 0 4096")
        out.append(t)
    return out


def t022() -> list[Test]:
    t = Test(
        "iotest_022_vmstate",
        "iotest 022: write -b / read -b (vmstate area) io_test patterns, 4k clusters",
    )
    t.image("t.qcow2", "qcow2", "6G", "cluster_size=4096")
    for offset in (10485760, G4):
        for op in ("write -b", "read -b"):
            for cmds in io_test(op, offset, 4096, 8):
                t.run("-f qcow2 t.qcow2", *cmds)
    return [t]


def t023() -> list[Test]:
    out = []
    for cluster in (1024, 4096, 16384, 65536):
        out += _compress_test("023", "patterns", cluster, 3, "8G")
        t = Test(
            f"iotest_023_test2_c{cluster}",
            f"iotest 023: io_test2 at offsets 0 and 4G with {cluster}-byte clusters",
        )
        t.image("o.qcow2", "qcow2", "8G", f"cluster_size={cluster}")
        io_test2(t, "-f qcow2 o.qcow2", "o.qcow2", 0, cluster, 4, "t.qcow2")
        out.append(t)
    return out


def t024() -> list[Test]:
    c = 65536
    t = Test(
        "iotest_024_rebase",
        "iotest 024: qemu-img rebase onto a new backing file keeps the guest view (subdirectory part skipped: needs mkdir)",
    )
    t.image("t.base_old", "qcow2", "1G")
    t.run("-f qcow2 t.base_old", *do_io("writev", 0, c, 2 * c, 8, 0x11))
    t.image("t.base_new", "qcow2", "1G")
    t.run("-f qcow2 t.base_new", *do_io("writev", 0, 2 * c, 4 * c, 4, 0x22))
    t.img("create -q -f qcow2 -b t.base_old -F qcow2 t.qcow2 1G")
    t.run("-f qcow2 t.qcow2", *do_io("writev", 0, 4 * c, 0, 1, 0x33))
    t.run("-f qcow2 t.qcow2", *do_io("writev", 8 * c, 4 * c, 0, 1, 0x33))
    expect = [0x33, 0x33, 0x33, 0x33, 0x11, 0, 0x11, 0] * 2
    for i, p in enumerate(expect):
        t.run("-f qcow2 t.qcow2", f"readv -P {p} {i * c} {c}")
    t.img("rebase -b t.base_new -F qcow2 t.qcow2")
    for i, p in enumerate(expect):
        t.run("-f qcow2 t.qcow2", f"readv -P {p} {i * c} {c}")
    t.run("-f qcow2 t.qcow2", "map", "alloc 0 1G")
    return [t]


def all_tests() -> list[Test]:
    tests: list[Test] = []
    for f in (
        t001, t002, t003, t004, t005, t008, t009_010_011, t012, t013, t014, t015,
        t017_018_020, t019, t021, t022, t023, t024,
    ):  # fmt: skip
        tests += f()
    return tests
