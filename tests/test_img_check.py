"""qio-img check against qemu-img check: clean images of many shapes, and a corpus of qcow2
images damaged by editing bytes (leaks, refcounts too low or too high, L2 entries past the end
of the file, misaligned tables, overlapping metadata, wrong COPIED flags).

For every image both tools check a copy: stdout, stderr and the exit status must be equal.
Then both repair a copy each (``-r leaks``, ``-r all``): again equal output, equal files, and
the image qio-img repaired must be clean for qemu-img check.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.skipif(QEMU_IMG is None or QEMU_IO is None, reason="qemu-img/qemu-io missing"),
]

COPIED = 1 << 63
COMPRESSED = 1 << 62
OFFSET_MASK = 0x00FFFFFFFFFFFE00


# -- building images ---------------------------------------------------------------------------
def qemu_img(*args: str, cwd: Path) -> None:
    subprocess.run([QEMU_IMG, *args], cwd=cwd, check=True, capture_output=True)


def qemu_io(path: Path, *commands: str, extra: tuple[str, ...] = ()) -> None:
    args = [QEMU_IO, *extra]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, path.name], cwd=path.parent, check=True, capture_output=True)


class Image:
    """Byte-level access to a qcow2 file (version 2 or 3, standard L2 entries)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray(path.read_bytes())

    def save(self) -> None:
        self.path.write_bytes(self.data)

    def u64(self, offset: int) -> int:
        return struct.unpack_from(">Q", self.data, offset)[0]

    def put64(self, offset: int, value: int) -> None:
        struct.pack_into(">Q", self.data, offset, value)

    @property
    def cluster_bits(self) -> int:
        return struct.unpack_from(">I", self.data, 20)[0]

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l1_offset(self) -> int:
        return self.u64(40)

    @property
    def reftable_offset(self) -> int:
        return self.u64(48)

    @property
    def refcount_bits(self) -> int:
        version = struct.unpack_from(">I", self.data, 4)[0]
        return 16 if version == 2 else 1 << struct.unpack_from(">I", self.data, 96)[0]

    def l1_entry_at(self, index: int) -> int:
        return self.l1_offset + 8 * index

    def l2_entry_at(self, guest: int) -> int:
        """File offset of the L2 entry mapping guest offset ``guest``."""
        cb = self.cluster_bits
        l2_bits = cb - 3
        l1 = self.u64(self.l1_entry_at(guest >> (cb + l2_bits)))
        return (l1 & OFFSET_MASK) + 8 * ((guest >> cb) & ((1 << l2_bits) - 1))

    def host_cluster(self, guest: int) -> int:
        return (self.u64(self.l2_entry_at(guest)) & OFFSET_MASK) >> self.cluster_bits

    def refcount_at(self, cluster: int) -> int:
        """File offset of the (16-bit) refcount entry of host cluster ``cluster``."""
        assert self.refcount_bits == 16
        per_block = self.cluster_size * 8 // 16
        block = self.u64(self.reftable_offset + 8 * (cluster // per_block)) & OFFSET_MASK
        return block + 2 * (cluster % per_block)

    def set_refcount(self, cluster: int, value: int) -> None:
        struct.pack_into(">H", self.data, self.refcount_at(cluster), value)


def base_image(
    directory: Path, name: str, *commands: str, opts: str = "", size: str = "1M"
) -> Path:
    path = directory / name
    args = ["create", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    qemu_img(*args, name, size, cwd=directory)
    if commands:
        qemu_io(path, *commands)
    return path


# -- the corpus -------------------------------------------------------------------------------------
Maker = Callable[[Path], Path]
CORPUS: dict[str, Maker] = {}


def case(name: str) -> Callable[[Maker], Maker]:
    def register(maker: Maker) -> Maker:
        CORPUS[name] = maker
        return maker

    return register


TWO_CLUSTERS = ("write -P 1 0 64k", "write -P 2 128k 64k")


@case("clean-64k")
def _clean(d: Path) -> Path:
    return base_image(d, "img.qcow2", *TWO_CLUSTERS)


@case("clean-empty")
def _empty(d: Path) -> Path:
    return base_image(d, "img.qcow2")


@case("clean-512b-clusters")
def _small(d: Path) -> Path:
    return base_image(
        d, "img.qcow2", "write 0 3k", "write 100k 1k", "write 900k 20k", opts="cluster_size=512"
    )


@case("clean-2m-clusters")
def _big(d: Path) -> Path:
    return base_image(
        d, "img.qcow2", "write 0 64k", "write 5M 1M", opts="cluster_size=2M", size="8M"
    )


@case("clean-4k-fragmented")
def _frag(d: Path) -> Path:
    return base_image(
        d,
        "img.qcow2",
        "write 64k 4k",
        "write 0 4k",
        "write 8k 4k",
        "write 4k 4k",
        opts="cluster_size=4k",
    )


@case("clean-compressed")
def _compressed(d: Path) -> Path:
    return base_image(
        d, "img.qcow2", "write -c -P 3 0 64k", "write -c -P 4 64k 64k", "write 256k 64k"
    )


@case("clean-zero-clusters")
def _zero(d: Path) -> Path:
    return base_image(d, "img.qcow2", "write 0 128k", "write -z 0 64k", "write -z -u 64k 64k")


@case("clean-v2")
def _v2(d: Path) -> Path:
    return base_image(d, "img.qcow2", *TWO_CLUSTERS, opts="compat=0.10")


@case("clean-extended-l2")
def _extl2(d: Path) -> Path:
    return base_image(
        d,
        "img.qcow2",
        "write 0 4k",
        "write 64k 64k",
        "write -z 200k 8k",
        opts="extended_l2=on",
    )


@case("clean-refcount-bits-1")
def _rc1(d: Path) -> Path:
    return base_image(d, "img.qcow2", *TWO_CLUSTERS, opts="refcount_bits=1")


@case("clean-snapshots")
def _snapshots(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    qemu_img("snapshot", "-c", "one", "img.qcow2", cwd=d)
    qemu_io(path, "write -P 5 0 4k", "write 512k 64k")
    qemu_img("snapshot", "-c", "two", "img.qcow2", cwd=d)
    qemu_io(path, "write -P 6 128k 4k")
    return path


@case("clean-backing")
def _backing(d: Path) -> Path:
    base_image(d, "base.qcow2", "write -P 7 0 1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "img.qcow2", cwd=d)
    path = d / "img.qcow2"
    qemu_io(path, "write -P 8 64k 4k")
    return path


@case("leak")
def _leak(d: Path) -> Path:
    """The L2 entry of a data cluster cleared: the cluster leaks."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.put64(img.l2_entry_at(128 << 10), 0)
    img.save()
    return path


@case("refcount-zero")
def _refcount_zero(d: Path) -> Path:
    """A used data cluster with refcount 0: corruption, rebuilt by -r all."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.set_refcount(img.host_cluster(0), 0)
    img.save()
    return path


@case("refcount-too-high")
def _refcount_high(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.set_refcount(img.host_cluster(128 << 10), 3)
    img.save()
    return path


@case("refcount-too-low")
def _refcount_low(d: Path) -> Path:
    """A cluster shared by a snapshot (refcount 2) counted only once."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    qemu_img("snapshot", "-c", "snap", "img.qcow2", cwd=d)
    img = Image(path)
    img.set_refcount(img.host_cluster(0), 1)
    img.save()
    return path


@case("shared-data-cluster")
def _shared(d: Path) -> Path:
    """Two L2 entries pointing at one cluster (the other one leaks)."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.put64(img.l2_entry_at(128 << 10), img.u64(img.l2_entry_at(0)))
    img.save()
    return path


@case("l2-entry-past-eof")
def _past_eof(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.put64(img.l2_entry_at(128 << 10), COPIED | (64 << 20))
    img.save()
    return path


@case("l2-entry-just-past-eof")
def _just_past_eof(d: Path) -> Path:
    """Pointing at the cluster that starts at the end of the file."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.put64(img.l2_entry_at(256 << 10), COPIED | len(img.data))
    img.save()
    return path


@case("l2-entry-misaligned")
def _misaligned_data(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    at = img.l2_entry_at(0)
    img.put64(at, img.u64(at) + 512)
    img.save()
    return path


@case("l2-zero-entry-misaligned")
def _misaligned_prealloc(d: Path) -> Path:
    """A preallocated zero cluster at a misaligned offset: -r all makes it a plain zero."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    at = img.l2_entry_at(0)
    img.put64(at, (img.u64(at) + 512) | 1)
    img.save()
    return path


@case("l2-table-misaligned")
def _misaligned_l2(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    at = img.l1_entry_at(0)
    img.put64(at, img.u64(at) + 512)
    img.save()
    return path


@case("l1-overlaps-reftable")
def _l1_on_reftable(d: Path) -> Path:
    """The header's L1 table offset pointed at the refcount table."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.put64(40, img.reftable_offset)
    img.save()
    return path


@case("reftable-overlaps-l1")
def _reftable_on_l1(d: Path) -> Path:
    """The refcount table pointed at the L1 table's cluster."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    struct.pack_into(">Q", img.data, 48, img.l1_offset)
    img.save()
    return path


@case("l2-copied-flag-clear")
def _copied_l2(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    at = img.l2_entry_at(0)
    img.put64(at, img.u64(at) & ~COPIED)
    img.save()
    return path


@case("l1-copied-flag-clear")
def _copied_l1(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    at = img.l1_entry_at(0)
    img.put64(at, img.u64(at) & ~COPIED)
    img.save()
    return path


@case("copied-flag-on-shared")
def _copied_shared(d: Path) -> Path:
    """COPIED set on a cluster a snapshot shares."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    qemu_img("snapshot", "-c", "snap", "img.qcow2", cwd=d)
    img = Image(path)
    at = img.l2_entry_at(128 << 10)
    img.put64(at, img.u64(at) | COPIED)
    img.save()
    return path


@case("compressed-with-copied")
def _compressed_copied(d: Path) -> Path:
    path = base_image(d, "img.qcow2", "write -c -P 3 0 64k")
    img = Image(path)
    at = img.l2_entry_at(0)
    img.put64(at, img.u64(at) | COPIED)
    img.save()
    return path


@case("l2-reserved-bits")
def _reserved(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    at = img.l2_entry_at(0)
    img.put64(at, img.u64(at) | 0x100)
    at = img.l1_entry_at(0)
    img.put64(at, img.u64(at) | 0x2)
    img.save()
    return path


@case("refblock-misaligned")
def _refblock_misaligned(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    at = img.reftable_offset + 8
    img.put64(at, img.u64(img.reftable_offset) + 4096)
    img.save()
    return path


@case("refblock-outside-image")
def _refblock_outside(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.put64(img.reftable_offset + 8, len(img.data) + (256 << 10))
    img.save()
    return path


@case("refblock-refcount-2")
def _refblock_shared(d: Path) -> Path:
    """An L2 entry pointing at the refcount block."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.put64(img.l2_entry_at(0), COPIED | img.u64(img.reftable_offset))
    img.save()
    return path


@case("dirty-lazy-refcounts")
def _dirty(d: Path) -> Path:
    """A crash with lazy refcounts: the dirty bit is set and refcounts are behind."""
    path = base_image(d, "img.qcow2", "write 0 64k", opts="lazy_refcounts=on")
    proc = subprocess.run(
        [QEMU_IO, "-c", "write -P 9 128k 128k", "-c", "abort", str(path)], capture_output=True
    )
    assert proc.returncode != 0
    return path


@case("corrupt-bit-and-leak")
def _corrupt_bit(d: Path) -> Path:
    path = _leak(d)
    img = Image(path)
    img.put64(72, img.u64(72) | 2)
    img.save()
    return path


@case("clean-bitmaps")
def _bitmaps(d: Path) -> Path:
    path = base_image(d, "img.qcow2", "write 0 64k")
    qemu_img("bitmap", "--add", "img.qcow2", "b0", cwd=d)
    qemu_img("bitmap", "--add", "-g", "512k", "img.qcow2", "b1", cwd=d)
    qemu_io(path, "write 256k 64k")
    return path


@case("clean-data-file")
def _data_file(d: Path) -> Path:
    return base_image(d, "img.qcow2", *TWO_CLUSTERS, opts="data_file=data.raw")


@case("leak-refcount-bits-1")
def _leak_rc1(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS, opts="refcount_bits=1")
    img = Image(path)
    img.put64(img.l2_entry_at(0), 0)
    img.save()
    return path


@case("leak-in-snapshot")
def _leak_snapshot(d: Path) -> Path:
    """A snapshot's L1 table pointed away from its L2 table."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    qemu_img("snapshot", "-c", "snap", "img.qcow2", cwd=d)
    qemu_io(path, "write 0 4k")  # the active L2 table is copied
    img = Image(path)
    snapshot_l1 = img.u64(img.u64(64))
    img.put64(snapshot_l1, 0)
    img.save()
    return path


@case("snapshot-l1-misaligned")
def _snapshot_l1(d: Path) -> Path:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    qemu_img("snapshot", "-c", "snap", "img.qcow2", cwd=d)
    img = Image(path)
    table = img.u64(64)
    img.put64(table, img.u64(table) + 512)
    img.save()
    return path


@case("extended-l2-bad-bitmap")
def _extl2_bitmap(d: Path) -> Path:
    path = base_image(d, "img.qcow2", "write 0 64k", "write 128k 4k", opts="extended_l2=on")
    img = Image(path)
    l2 = img.u64(img.l1_offset) & OFFSET_MASK
    img.put64(l2 + 8, 0x0000000100000001)  # subcluster 0 both allocated and zero
    img.put64(l2 + 16 * 5 + 8, 0x3)  # unallocated cluster with allocated subclusters
    img.save()
    return path


@case("compressed-past-eof")
def _compressed_eof(d: Path) -> Path:
    path = base_image(d, "img.qcow2", "write -c -P 3 0 64k", "write -c -P 4 64k 64k")
    img = Image(path)
    at = img.l2_entry_at(64 << 10)
    img.put64(at, (img.u64(at) & ~((1 << 54) - 1)) | (32 << 20))
    img.save()
    return path


@case("l1-entry-without-offset")
def _l1_flags_only(d: Path) -> Path:
    """An L1 entry with only the COPIED flag: the header is read as an L2 table."""
    path = base_image(d, "img.qcow2", "write 0 64k", size="2G")
    img = Image(path)
    img.put64(img.l1_entry_at(1), COPIED)
    img.save()
    return path


def _with_snapshot(d: Path) -> tuple[Path, Image, int]:
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    qemu_img("snapshot", "-c", "snap", "img.qcow2", cwd=d)
    img = Image(path)
    return path, img, img.u64(64)  # the snapshot table's offset


@case("snapshot-extra-data-too-big")
def _snapshot_extra(d: Path) -> Path:
    path, img, table = _with_snapshot(d)
    struct.pack_into(">I", img.data, table + 36, 2000)
    img.save()
    return path


@case("snapshot-entry-incomplete")
def _snapshot_incomplete(d: Path) -> Path:
    """A version 3 entry without the extra data QEMU requires."""
    path, img, table = _with_snapshot(d)
    struct.pack_into(">I", img.data, table + 36, 0)
    img.save()
    return path


@case("snapshot-table-misaligned")
def _snapshot_table(d: Path) -> Path:
    path, img, table = _with_snapshot(d)
    img.put64(64, table + 8)
    img.save()
    return path


@case("snapshot-count-too-big")
def _snapshot_count(d: Path) -> Path:
    path, img, _ = _with_snapshot(d)
    struct.pack_into(">I", img.data, 60, 70000)
    img.save()
    return path


@case("reftable-empty")
def _reftable_empty(d: Path) -> Path:
    """refcount_table_clusters 0: only a check may open it, -r all rebuilds the structure."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    struct.pack_into(">I", img.data, 56, 0)
    img.save()
    return path


@case("unknown-autoclear-with-snapshot")
def _autoclear(d: Path) -> Path:
    """The read-write open of -r clears the unknown bit and rewrites the header before the
    check has read the snapshot table: in QEMU the snapshots are lost, and leak."""
    path, img, _ = _with_snapshot(d)
    img.put64(88, img.u64(88) | 1 << 5)
    img.save()
    return path


@case("v2-extension-end-too-long")
def _v2_extension(d: Path) -> Path:
    """An end-of-extensions marker whose length runs past the cluster: QEMU refuses it."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS, opts="compat=0.10")
    img = Image(path)
    img.put64(72, 0x40000)
    img.save()
    return path


@case("v2-copied-fix-hits-inactive-l1")
def _v2_inactive_l1(d: Path) -> Path:
    """Fixing a COPIED flag writes an L2 table that a (damaged, huge) snapshot L1 table
    covers: the overlap check marks the version 2 image corrupt and the repair stops."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS, opts="compat=0.10")
    qemu_img("snapshot", "-c", "snap", "img.qcow2", cwd=d)
    qemu_io(path, "write -P 9 512k 64k")  # the active L2 table is copied
    img = Image(path)
    at = img.l2_entry_at(512 << 10)
    img.put64(at, img.u64(at) & ~COPIED)
    struct.pack_into(">I", img.data, img.u64(64) + 8, 0x40000001)
    img.save()
    return path


@case("refblock-offset-unaligned")
def _refblock_unaligned(d: Path) -> Path:
    """The refcount table's first entry 512 bytes off: reading any refcount marks the image
    corrupt, -r all rebuilds, and the double check finds the image offline."""
    path = base_image(d, "img.qcow2", *TWO_CLUSTERS)
    img = Image(path)
    img.put64(img.reftable_offset, img.u64(img.reftable_offset) + 512)
    img.save()
    return path


@case("snapshot-table-far-past-eof")
def _snapshot_table_far(d: Path) -> Path:
    """The snapshot table pointer moved far past the end of the file: -r all rewrites the
    table, freeing the old one fails (its refcount table would be too big), and the refcount
    blocks that failed to be written make every later refcount lookup fail."""
    path, img, table = _with_snapshot(d)
    img.put64(64, table | 1 << 52)
    img.save()
    return path


# -- running both tools ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    stdout: str
    stderr: str
    status: int


class Forked:
    """qio-img / qio in a child forked from this process, which imported them once: the same
    as a fresh ``python -m qio.img`` without the interpreter start and imports every time."""

    def __init__(self) -> None:
        import qio.block.qcow2.check  # noqa: F401 - preload what every run needs
        import qio.block.qcow2.driver  # noqa: F401
        import qio.cli
        import qio.img.check  # noqa: F401
        import qio.img.main

        self.mains: dict[str, Callable[[list[str]], int]] = {
            "qio-img": qio.img.main.main,
            "qio": lambda args: _with_argv(qio.cli.main, args),
        }

    def run(self, program: str, args: list[str], cwd: Path) -> tuple[str, str, int]:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            pid = os.fork()
            if pid == 0:  # the child: become "PROGRAM ARGS" in CWD and never return
                status = 1
                try:
                    os.chdir(cwd)
                    os.environ["LC_ALL"] = "C"
                    os.dup2(out.fileno(), 1)
                    os.dup2(err.fileno(), 2)
                    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                    signal.alarm(60)
                    status = self.mains[program](args)
                except SystemExit as exc:
                    status = exc.code if isinstance(exc.code, int) else 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(status)
            _, wait_status = os.waitpid(pid, 0)
            out.seek(0)
            err.seek(0)
            return out.read().decode(), err.read().decode(), os.waitstatus_to_exitcode(wait_status)


def _with_argv(main: Callable[[], int], args: list[str]) -> int:
    sys.argv = ["qio", *args]
    return main()


_forked: Forked | None = None


def forked() -> Forked:
    global _forked
    if _forked is None:
        _forked = Forked()
    return _forked


def run_tool(tool: str, args: list[str], cwd: Path) -> Run:
    if tool == "qio":
        stdout, stderr, status = forked().run("qio-img", args, cwd)
        return Run(stdout, stderr.replace("qio-img", "qemu-img"), status)
    proc = subprocess.run([QEMU_IMG, *args], cwd=cwd, capture_output=True, timeout=60)
    return Run(proc.stdout.decode(), proc.stderr.decode(), proc.returncode)


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target)


@dataclass
class Comparison:
    qemu: Run
    qio: Run
    qemu_files: dict[str, bytes]
    qio_files: dict[str, bytes]
    qemu_after: Run | None = None  # qemu-img check of the image qio-img repaired


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def compare(work: Path, name: str, args: list[str]) -> Comparison:
    source = work / name / "src"
    tag = "_".join(a.strip("-").replace("=", "") for a in args) or "check"
    qemu_dir, qio_dir = work / name / f"qemu_{tag}", work / name / f"qio_{tag}"
    _copy_tree(source, qemu_dir)
    _copy_tree(source, qio_dir)
    qemu = run_tool("qemu", ["check", *args, "img.qcow2"], qemu_dir)
    qio = run_tool("qio", ["check", *args, "img.qcow2"], qio_dir)
    comparison = Comparison(qemu, qio, _files(qemu_dir), _files(qio_dir))
    if "-r" in args:
        comparison.qemu_after = run_tool("qemu", ["check", "img.qcow2"], qio_dir)
    return comparison


MODES: dict[str, list[str]] = {
    "check": [],
    "r-leaks": ["-r", "leaks"],
    "r-all": ["-r", "all"],
    "json": ["--output=json"],
    "r-all-json": ["-r", "all", "--output=json"],
    "quiet": ["-q", "-r", "all"],
}
# every image in the first three modes; the output variants on a few
EXTRA_MODES = {
    "clean-compressed": ("json",),
    "clean-snapshots": ("json",),
    "shared-data-cluster": ("json", "r-all-json"),
    "refcount-zero": ("json", "r-all-json", "quiet"),
    "leak": ("r-all-json", "quiet"),
    "reftable-overlaps-l1": ("json",),
}
# big clusters, big files: copying them is slow; 65536 snapshot entries to rewrite: slow
CHECK_ONLY = {"clean-2m-clusters", "snapshot-count-too-big"}
JOBS = [
    (name, mode)
    for name in CORPUS
    for mode in (
        ("check",)
        if name in CHECK_ONLY
        else ("check", "r-all")
        if name.startswith("clean-")  # nothing to repair: -r leaks adds nothing
        else ("check", "r-leaks", "r-all")
    )
    + EXTRA_MODES.get(name, ())
]
REPAIRS = [(name, mode) for name, mode in JOBS if MODES[mode][:1] == ["-r"]]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Comparison]:
    work = tmp_path_factory.mktemp("img_check")
    for name, maker in CORPUS.items():
        (work / name / "src").mkdir(parents=True)
        maker(work / name / "src")
    # one after the other: qio-img runs in forked children, and forking a process with
    # threads is not safe
    return {(name, mode): compare(work, name, MODES[mode]) for name, mode in JOBS}


@pytest.mark.parametrize(("name", "mode"), JOBS, ids=[f"{n}-{m}" for n, m in JOBS])
def test_same_as_qemu_img(
    outcomes: dict[tuple[str, str], Comparison], name: str, mode: str
) -> None:
    c = outcomes[(name, mode)]
    assert c.qio.stderr == c.qemu.stderr
    assert c.qio.stdout == c.qemu.stdout
    assert c.qio.status == c.qemu.status


@pytest.mark.parametrize(("name", "mode"), REPAIRS, ids=[f"{n}-{m}" for n, m in REPAIRS])
def test_repair_like_qemu_img(
    outcomes: dict[tuple[str, str], Comparison], name: str, mode: str
) -> None:
    c = outcomes[(name, mode)]
    assert c.qio_files.keys() == c.qemu_files.keys()
    for file_name, data in c.qemu_files.items():
        assert c.qio_files[file_name] == data, f"{file_name} differs after repair"
    if c.qemu.status == 0:
        # what qio-img repaired is clean for qemu-img
        assert c.qemu_after is not None and c.qemu_after.status == 0, c.qemu_after


# -- qemu-io on dirty images: repaired when opened read-write ------------------------------------
def _set_dirty(path: Path) -> Path:
    img = Image(path)
    img.put64(72, img.u64(72) | 1)
    img.save()
    return path


DIRTY: dict[str, Maker] = {
    "crash": _dirty,
    "leak": lambda d: _set_dirty(_leak(d)),
    "refcount-zero": lambda d: _set_dirty(_refcount_zero(d)),
    "copied-flag": lambda d: _set_dirty(_copied_l2(d)),
    "unrepairable": lambda d: _set_dirty(_reftable_on_l1(d)),
}
IO_RUNS: list[list[str]] = [
    ["-c", "read -q 0 512"],
    ["-c", "write -P 5 768k 64k", "-c", "write -P 6 64k 4k", "-c", "read -P 0 300k 4k"],
    ["-r", "-c", "read -q 0 512"],
]


def run_io(tool: str, args: list[str], cwd: Path) -> Run:
    if tool == "qemu":
        proc = subprocess.run([QEMU_IO, *args], cwd=cwd, capture_output=True, timeout=60)
        stdout, stderr, status = proc.stdout.decode(), proc.stderr.decode(), proc.returncode
    else:
        stdout, stderr, status = forked().run("qio", args, cwd)
    masked = [
        re.sub(r"^(qemu-io|qio): ", "PROG: ", re.sub(r"; [0-9:.]+ sec .*$", "", line))
        for line in (stdout + stderr).splitlines()
    ]
    return Run("\n".join(masked), "", status)


@pytest.mark.parametrize("run", range(len(IO_RUNS)), ids=["read", "write", "read-only"])
@pytest.mark.parametrize("name", list(DIRTY))
def test_dirty_image_open(tmp_path: Path, name: str, run: int) -> None:
    source = tmp_path / "src"
    source.mkdir()
    DIRTY[name](source)
    results = {}
    for tool in ("qemu", "qio"):
        shutil.copytree(source, tmp_path / tool)
        outcome = run_io(tool, [*IO_RUNS[run], "img.qcow2"], tmp_path / tool)
        results[tool] = (outcome, (tmp_path / tool / "img.qcow2").read_bytes())
    assert results["qio"][0] == results["qemu"][0]
    assert results["qio"][1] == results["qemu"][1]


# -- the command line ----------------------------------------------------------------------------
CLI_CASES: list[list[str]] = [
    ["-x", "img.qcow2"],
    ["-qx", "img.qcow2"],
    ["--foo", "img.qcow2"],
    ["--o", "json", "img.qcow2"],
    ["--help=x", "img.qcow2"],
    ["-f"],
    ["img.qcow2", "-r"],
    ["--format"],
    ["-r", "bad", "img.qcow2"],
    ["--repair=some", "img.qcow2"],
    [],
    ["img.qcow2", "other.qcow2"],
    ["--output=xml", "img.qcow2"],
    ["-T", "bogus", "img.qcow2"],
    ["-T", "none", "-U", "img.qcow2"],
    ["--outpu", "json", "--force-share", "img.qcow2"],
    ["img.qcow2", "-q"],
    ["-f", "raw", "img.qcow2"],
    ["-r", "leaks", "-f", "raw", "img.qcow2"],
    ["-f", "foo", "img.qcow2"],
    ["missing.qcow2"],
    ["--image-opts", "driver=qcow2,file.filename=img.qcow2"],
    ["--image-opts", "-f", "qcow2", "driver=qcow2,file.filename=img.qcow2"],
    ["--object", "secret,id=s0,data=x", "img.qcow2"],
    ["--object", "id=s0", "img.qcow2"],
    ["--object", "qom-type=foo,id=x", "img.qcow2"],
    ["--object", "secret", "img.qcow2"],
    ["-r", "all", "corrupt.qcow2"],
    ["corrupt.qcow2"],
]


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("img_check_cli")
    _clean(work)
    (work / "corrupt").mkdir()
    shutil.move(_corrupt_bit(work / "corrupt"), work / "corrupt.qcow2")
    return work


@pytest.mark.parametrize("args", CLI_CASES, ids=[" ".join(a) or "none" for a in CLI_CASES])
def test_command_line(cli_dir: Path, tmp_path: Path, args: list[str]) -> None:
    runs = {}
    for tool in ("qemu", "qio"):
        shutil.copytree(cli_dir, tmp_path / tool)
        runs[tool] = run_tool(tool, ["check", *args], tmp_path / tool)
    qemu, qio = runs["qemu"], runs["qio"]
    assert qio.status == qemu.status
    assert qio.stderr == qemu.stderr
    assert qio.stdout == qemu.stdout


# -- random damage ---------------------------------------------------------------------------------
def _random_damage(d: Path, seed: int) -> Path:
    """One to three metadata words of a snapshotted, partly compressed image overwritten
    (zeroed, a bit flipped, a small refcount, or pointed at another cluster); the seed
    picks which."""
    import random

    rng = random.Random(seed)
    path = base_image(
        d,
        "img.qcow2",
        "write -P 1 0 64k",
        "write -c -P 2 64k 64k",
        "write -P 3 256k 128k",
        "write -z 512k 64k",
    )
    qemu_img("snapshot", "-c", "s1", "img.qcow2", cwd=d)
    qemu_io(path, "write -P 4 0 4k", "write -P 5 768k 64k")
    img = Image(path)
    l2 = img.u64(img.l1_offset) & OFFSET_MASK
    refblock = img.u64(img.reftable_offset) & OFFSET_MASK
    words = [img.l1_offset, img.reftable_offset, img.u64(64), img.u64(64) + 8, 40, 48, 56, 64]
    words += [l2 + 8 * i for i in range(16)]
    shorts = [refblock + 2 * i for i in range(16)]
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.2:
            struct.pack_into(">H", img.data, rng.choice(shorts), rng.randint(0, 3))
            continue
        at = rng.choice(words)
        if kind < 0.45:
            img.put64(at, 0)
        elif kind < 0.75:
            img.put64(at, img.u64(at) ^ 1 << rng.choice([0, 1, 9, 16, 17, 18, 62, 63]))
        else:
            img.put64(at, rng.choice([1, 2, 3, 4, 5, 7, 8]) << 16 | rng.choice([0, COPIED]))
    img.save()
    return path


RANDOM_SEEDS = list(range(1, 11))


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_damage(tmp_path: Path, seed: int) -> None:
    source = tmp_path / "src"
    source.mkdir()
    _random_damage(source, seed)
    for args in ([], ["-r", "leaks"], ["-r", "all"]):
        tag = "_".join(args) or "check"
        runs, files = {}, {}
        for tool in ("qemu", "qio"):
            shutil.copytree(source, tmp_path / f"{tool}{tag}")
            runs[tool] = run_tool(tool, ["check", *args, "img.qcow2"], tmp_path / f"{tool}{tag}")
            files[tool] = (tmp_path / f"{tool}{tag}" / "img.qcow2").read_bytes()
        assert runs["qio"] == runs["qemu"], args
        assert files["qio"] == files["qemu"], args
