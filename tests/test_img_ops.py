"""qio-img compare, convert, snapshot, resize and rebase against the real qemu-img.

Every scenario is run twice on identical inputs, once with qemu-img and once with qio-img
(in this process): stdout, stderr (program name aside) and the exit status must match, and
the images left behind must be byte-for-byte the same (snapshot dates aside) and clean under
``qemu-img check``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.differential import QEMU_IMG, QEMU_IO, tool_env

pytestmark = pytest.mark.oracle

ENV = tool_env()


def qemu(cwd: Path, *args: str) -> tuple[int, str, str]:
    # bytes, not text: universal newlines would turn the progress meter's \r into \n
    p = subprocess.run([QEMU_IMG, *args], cwd=cwd, env=ENV, capture_output=True, check=False)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def qio(cwd: Path, *args: str) -> tuple[int, str, str]:
    """qio-img in this process (fast), in ``cwd``; messages renamed to qemu-img's."""
    from qio.img.main import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as exc:
                rc = int(exc.code or 0)
    finally:
        os.chdir(old)
    fix = lambda s: s.replace("qio-img", "qemu-img")  # noqa: E731
    return rc, fix(out.getvalue()), fix(err.getvalue())


def sh(cwd: Path, *cmd: str) -> str:
    """A setup step with the real tools (qemu-img create, qemu-io writes)."""
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, check=True)
    return p.stdout


def io_write(cwd: Path, image: str, *commands: str, fmt: str | None = None) -> None:
    args = [QEMU_IO, *(["-f", fmt] if fmt else [])]
    for c in commands:
        args += ["-c", c]
    sh(cwd, *args, image)


def sized(path: Path, size: int) -> None:
    with open(path, "ab") as f:
        f.truncate(size)


def check_clean(cwd: Path, image: str) -> str:
    rc, out, err = qemu(cwd, "check", image)
    assert rc == 0, out + err
    return out


def info(cwd: Path, image: str) -> dict[str, object]:
    data = json.loads(qemu(cwd, "info", "--output=json", "-U", image)[1])
    data.pop("actual-size", None)
    data.pop("dirty-flag", None)
    data.pop("filename", None)
    return data


def masked_bytes(path: Path) -> bytes:
    """The image's bytes with the snapshot dates zeroed (they are the wall clock)."""
    data = bytearray(path.read_bytes())
    if data[:4] != b"QFI\xfb":
        return bytes(data)
    nb, offset = struct.unpack_from(">IQ", data, 60)
    for _ in range(nb):
        offset = -(-offset // 8) * 8
        _, _, id_len, name_len, _, _, _, _, extra = struct.unpack_from(">QIHHIIQII", data, offset)
        data[offset + 16 : offset + 24] = bytes(8)
        offset += 40 + extra + id_len + name_len
    return bytes(data)


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    q, p = tmp_path / "q", tmp_path / "p"
    q.mkdir()
    p.mkdir()
    yield q, p


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Input images built once per module (qemu-io is slow to start), copied per test."""
    built: dict[str, Path] = {}
    for name, setup in (
        ("resize", _resize_setup),
        ("rebase", _rebase_setup),
        ("convert", _convert_setup),
    ):
        d = tmp_path_factory.mktemp(name)
        setup(d)
        built[name] = d
    return built


def fill(template: Path, *dirs: Path) -> None:
    for d in dirs:
        for f in template.iterdir():
            shutil.copy2(f, d / f.name)


def both(q: Path, p: Path, *args: str) -> tuple[int, str, str]:
    """Run the command with both tools; their outputs must be identical."""
    expected = qemu(q, *args)
    got = qio(p, *args)
    assert got == expected, f"qio-img {' '.join(args)}"
    return expected


def clone(q: Path, p: Path) -> None:
    for f in q.iterdir():
        shutil.copy2(f, p / f.name)


# -- compare ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("compare")
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "a.qcow2", "4M")
    io_write(d, "a.qcow2", "write -P 1 0 64k", "write -P 2 1M 100k")
    shutil.copy(d / "a.qcow2", d / "b.qcow2")
    io_write(d, "b.qcow2", "write -P 3 1100 1", "write -P 3 3M 1k", "write -z 1M 4k")
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "c.qcow2", "5M")
    io_write(d, "c.qcow2", "write -P 7 4M 512")
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "ov.qcow2")
    io_write(d, "ov.qcow2", "write -P 9 2M 64k")
    sh(d, QEMU_IMG, "convert", "-O", "raw", "a.qcow2", "a.raw")
    shutil.copy(d / "a.raw", d / "a2.raw")
    os.truncate(d / "a2.raw", 5 << 20)
    sized(d / "odd.raw", 3000000)
    return d


COMPARE_CASES = [
    "a.qcow2 a.qcow2",
    "a.qcow2 b.qcow2",
    "-s a.qcow2 b.qcow2",
    "-s a.qcow2 a.raw",
    "-p a.qcow2 a.qcow2",
    "-p c.qcow2 a.qcow2",
    "a.qcow2 a.raw",
    "-f qcow2 -F raw a.qcow2 a.raw",
    "-f raw a.qcow2 a.qcow2",
    "a.qcow2 c.qcow2",
    "c.qcow2 a.qcow2",
    "-s c.qcow2 a.qcow2",
    "a.qcow2 ov.qcow2",
    "-s -p ov.qcow2 ov.qcow2",
    "odd.raw a.qcow2",
    "a2.raw a.qcow2",
    "-q a.qcow2 c.qcow2",
    "-U -T none a.qcow2 b.qcow2",
    "-T bogus a.qcow2 b.qcow2",
    "a.qcow2 nothere.qcow2",
    "a.qcow2",
    "-Z a.qcow2 b.qcow2",
    "-f",
]


@pytest.mark.parametrize("args", COMPARE_CASES)
def test_compare(compare_dir: Path, args: str) -> None:
    expected = qemu(compare_dir, "compare", *args.split())
    assert qio(compare_dir, "compare", *args.split()) == expected


def test_compare_all_lists_every_extent(compare_dir: Path) -> None:
    rc, out, err = qio(compare_dir, "compare", "--all", "a.qcow2", "b.qcow2")
    assert (rc, err) == (1, "")
    assert out == (
        "Content mismatch at offset 1024, length 512!\n"
        "Content mismatch at offset 1048576, length 4096!\n"
        "Content mismatch at offset 3145728, length 1024!\n"
    )
    # the first run is where qemu-img stops
    assert qemu(compare_dir, "compare", "a.qcow2", "b.qcow2")[1].startswith(
        "Content mismatch at offset 1024!"
    )
    rc, out, _ = qio(compare_dir, "compare", "--all", "a.qcow2", "c.qcow2")
    assert rc == 1
    assert out == (
        "Content mismatch at offset 0, length 65536!\n"
        "Content mismatch at offset 1048576, length 102400!\n"
        "Warning: Image size mismatch!\n"
        "Content mismatch at offset 4194304, length 512!\n"
    )
    assert qio(compare_dir, "compare", "--all", "a.qcow2", "a.raw") == (
        0,
        "Images are identical.\n",
        "",
    )


# -- snapshot --------------------------------------------------------------------------------
def _snapshot_setup(d: Path) -> None:
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "s.qcow2", "4M")
    io_write(d, "s.qcow2", "write -P 1 0 64k", "write -c -P 5 1M 64k", "write -z 2M 64k")
    sized(d / "c1.img", 1 << 20)


SNAPSHOT_STEPS: list[tuple[str, ...]] = [
    ("-c", "snap1", "s.qcow2"),
    ("io", "write -P 2 0 64k", "write -P 3 3M 4k"),
    ("-c", "snap2", "s.qcow2"),
    ("-c", "snap1", "s.qcow2"),
    ("-l", "s.qcow2"),
    ("-a", "snap1", "s.qcow2"),
    ("-d", "2", "s.qcow2"),
    ("-d", "snap2", "s.qcow2"),
    ("io", "write -P 9 0 128k"),
    ("-a", "3", "s.qcow2"),
    ("-d", "snap1", "s.qcow2"),
    ("-a", "nosuch", "s.qcow2"),
    ("-d", "snap1", "s.qcow2"),
    ("-l", "s.qcow2"),
    ("-q", "-c", "", "s.qcow2"),
    ("-l", "-c", "x", "s.qcow2"),
    ("-f", "raw", "-l", "s.qcow2"),
    ("-l", "c1.img"),
    ("-c", "x", "c1.img"),
    ("-a", "x", "c1.img"),
    ("-d", "x", "c1.img"),
    ("s.qcow2",),
]


def test_snapshot_sequence(sides: tuple[Path, Path]) -> None:
    q, p = sides
    _snapshot_setup(q)
    clone(q, p)
    for step in SNAPSHOT_STEPS:
        if step[0] == "io":
            io_write(q, "s.qcow2", *step[1:])
            io_write(p, "s.qcow2", *step[1:])
            continue
        expected = qemu(q, "snapshot", *step)
        got = qio(p, "snapshot", *step)
        if "-l" in step:  # the DATE column is the wall clock of each run
            mask = lambda s: "\n".join(line[:44] + line[64:] for line in s.split("\n"))  # noqa: E731
            expected = (expected[0], mask(expected[1]), expected[2])
            got = (got[0], mask(got[1]), got[2])
        assert got == expected, step
        assert masked_bytes(p / "s.qcow2") == masked_bytes(q / "s.qcow2"), step
        check_clean(p, "s.qcow2")


def test_snapshot_apply_other_size_and_extended_l2(sides: tuple[Path, Path]) -> None:
    q, p = sides
    sh(q, QEMU_IMG, "create", "-f", "qcow2", "g.qcow2", "1M")
    io_write(q, "g.qcow2", "write -P 1 0 64k")
    sh(q, QEMU_IMG, "create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k",
       "x.qcow2", "1M")
    io_write(q, "x.qcow2", "write -P 1 0 4k", "write -z 64k 4k")
    sh(q, QEMU_IMG, "create", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M")
    io_write(q, "v2.qcow2", "write -P 1 0 64k")
    clone(q, p)
    steps = [
        ("g.qcow2", "-c", "small"),
        ("g.qcow2", "resize", "3G"),
        ("g.qcow2", "io", "write -P 3 2G 64k"),
        ("g.qcow2", "-c", "big"),
        ("g.qcow2", "-a", "small"),
        ("g.qcow2", "-a", "big"),
        ("x.qcow2", "-c", "a"),
        ("x.qcow2", "io", "write -P 2 0 4k"),
        ("x.qcow2", "-c", "b"),
        ("x.qcow2", "-a", "a"),
        ("x.qcow2", "-d", "b"),
        ("v2.qcow2", "-c", "a"),
        ("v2.qcow2", "io", "write -P 2 0 64k"),
        ("v2.qcow2", "-a", "a"),
    ]
    for image, *step in steps:
        if step[0] == "io":
            io_write(q, image, step[1])
            io_write(p, image, step[1])
        elif step[0] == "resize":
            both(q, p, "resize", image, step[1])
        else:
            both(q, p, "snapshot", *step, image)
        assert masked_bytes(p / image) == masked_bytes(q / image), (image, step)
        check_clean(p, image)
    rc, _, _ = qemu(p, "compare", "x.qcow2", "v2.qcow2")
    assert rc == 1


# -- resize ----------------------------------------------------------------------------------
RESIZE_CASES = [
    "r.qcow2 +1M",
    "r.qcow2 abc",
    "r.qcow2 -- -5M",
    "r.qcow2 0",
    "r.qcow2 1.5k",
    "r.qcow2 -1",
    "--shrink r.qcow2 -- -512k",
    "--shrink r.qcow2 100k",
    "--preallocation=bogus r.qcow2 2M",
    "--preallocation=full r.qcow2 1M",
    "--preallocation=metadata r.qcow2 +3M",
    "--preallocation=falloc r.qcow2 +1M",
    "r.qcow2 99999999999999999999",
    "r.qcow2 +0x10",
    "r.qcow2 0x10k",
    "r.qcow2 2M extra",
    "r.qcow2 1E",
    "r.qcow2 8E",
    "r.qcow2",
    "r.raw +1M",
    "-f raw --shrink r.raw 1000",
    "-f raw --preallocation=full r.raw 3M",
    "-q r.qcow2 +1M",
    "nothere 1M",
    "-Z r.qcow2 1M",
]


def _resize_setup(d: Path) -> None:
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "r.qcow2", "1M")
    io_write(d, "r.qcow2", "write -P 1 0 1M")
    sized(d / "r.raw", 1 << 20)


@pytest.mark.parametrize("args", RESIZE_CASES)
def test_resize(templates: dict[str, Path], sides: tuple[Path, Path], args: str) -> None:
    q, p = sides
    fill(templates["resize"], q, p)
    both(q, p, "resize", *args.split())
    assert (p / "r.raw").stat().st_size == (q / "r.raw").stat().st_size
    assert (p / "r.qcow2").read_bytes() == (q / "r.qcow2").read_bytes()
    check_clean(p, "r.qcow2")


# -- rebase ----------------------------------------------------------------------------------
def _rebase_setup(d: Path) -> None:
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "base.qcow2", "4M")
    io_write(d, "base.qcow2", "write -P 1 0 4M", "write -z 1M 64k")
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "base2.qcow2", "3M")
    io_write(d, "base2.qcow2", "write -P 1 0 512k", "write -P 3 600k 5000")
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2")
    io_write(d, "ov.qcow2", "write -P 2 64k 64k")
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2")
    io_write(d, "mid.qcow2", "write -P 7 2M 100k")
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2")
    io_write(d, "top.qcow2", "write -P 8 2M 4k")
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.qcow2", "-F",
       "qcow2", "v2.qcow2")
    sh(d, QEMU_IMG, "convert", "-O", "raw", "base.qcow2", "base.raw")
    sized(d / "raw.img", 1 << 20)


REBASE_CASES: list[list[str]] = [
    ["-u", "-b", "other.qcow2", "ov.qcow2"],
    ["ov.qcow2"],
    ["-u", "-b", "x", "-F", "bogus", "ov.qcow2"],
    ["-u", "ov.qcow2"],
    ["-p", "-b", "", "ov.qcow2"],
    ["-b", "nothere", "-F", "qcow2", "ov.qcow2"],
    ["-b", "base2.qcow2", "-F", "qcow2", "ov.qcow2"],
    ["-p", "-b", "base2.qcow2", "-F", "qcow2", "ov.qcow2"],
    ["-u", "-b", "base2.qcow2", "-F", "qcow2", "ov.qcow2"],
    ["-q", "-b", "base.raw", "-F", "raw", "ov.qcow2"],
    ["-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
    ["-u", "-b", "base2.qcow2", "-F", "qcow2", "v2.qcow2"],
    ["-u", "-F", "qcow2", "v2.qcow2"],
    ["-u", "-b", "x" * 1100, "-F", "qcow2", "v2.qcow2"],
    ["-u", "-b", "x", "-F", "raw", "-f", "raw", "raw.img"],
    ["-b", "x", "-f", "raw", "raw.img"],
    ["-t", "bogus", "-u", "v2.qcow2"],
    ["-b", "base.qcow2", "-F", "qcow2", "v2.qcow2", "extra"],
]


@pytest.mark.parametrize("argv", REBASE_CASES, ids=lambda a: " ".join(a)[:60])
def test_rebase(templates: dict[str, Path], sides: tuple[Path, Path], argv: list[str]) -> None:
    q, p = sides
    fill(templates["rebase"], q, p)
    both(q, p, "rebase", *argv)
    for image in ("ov.qcow2", "top.qcow2", "v2.qcow2", "raw.img"):
        assert (p / image).read_bytes() == (q / image).read_bytes(), image
        if image.endswith(".qcow2"):
            check_clean(p, image)


def test_rebase_keeps_content(templates: dict[str, Path], sides: tuple[Path, Path]) -> None:
    _, p = sides
    fill(templates["rebase"], p)
    shutil.copy(p / "top.qcow2", p / "top0.qcow2")
    shutil.copy(p / "ov.qcow2", p / "ov0.qcow2")
    assert qio(p, "rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")[0] == 0
    assert qemu(p, "compare", "top.qcow2", "top0.qcow2")[0] == 0
    assert qio(p, "rebase", "-b", "", "ov.qcow2")[0] == 0
    assert qemu(p, "compare", "ov.qcow2", "ov0.qcow2")[0] == 0
    assert info(p, "ov.qcow2").get("backing-filename") is None


# -- convert ---------------------------------------------------------------------------------
def _convert_setup(d: Path) -> None:
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "src.qcow2", "8M")
    io_write(
        d,
        "src.qcow2",
        "write -P 1 0 64k",
        "write -P 2 1M 1000",
        "write -z 2M 1M",
        "write -P 3 4M 12k",
        "write -P 0 5M 64k",
        "write -P 4 6M 2M",
        "write -P 5 8100k 3k",
    )
    sh(d, QEMU_IMG, "create", "-f", "qcow2", "-b", "src.qcow2", "-F", "qcow2", "ov.qcow2")
    io_write(d, "ov.qcow2", "write -P 9 1M 64k", "write -z 6M 64k")
    sized(d / "small.raw", 3000 << 10)
    io_write(d, "small.raw", "write -P 7 100k 8k", fmt="raw")
    sh(d, QEMU_IMG, "snapshot", "-c", "snap", "src.qcow2")
    io_write(d, "src.qcow2", "write -P 6 0 64k")


CONVERT_CASES = [
    "-O raw src.qcow2 t.raw",
    "-O qcow2 src.qcow2 t.qcow2",
    "-c -O qcow2 src.qcow2 t.qcow2",
    "-p -O qcow2 src.qcow2 t.qcow2",
    "-S 0 -O qcow2 src.qcow2 t.qcow2",
    "-S 0 -O raw src.qcow2 t.raw",
    "-S 8k -O qcow2 src.qcow2 t.qcow2",
    "-O qcow2 -o cluster_size=4k src.qcow2 t.qcow2",
    "-O qcow2 -o compat=0.10,cluster_size=512 src.qcow2 t.qcow2",
    "-O qcow2 -o extended_l2=on,cluster_size=128k src.qcow2 t.qcow2",
    "-O qcow2 ov.qcow2 t.qcow2",
    "-O qcow2 -B src.qcow2 -F qcow2 ov.qcow2 t.qcow2",
    "-O qcow2 -o backing_file=src.qcow2,backing_fmt=qcow2 ov.qcow2 t.qcow2",
    "-O qcow2 -B src.qcow2 ov.qcow2 t.qcow2",
    "-O raw -B src.qcow2 -F qcow2 ov.qcow2 t.raw",
    "-c -O raw src.qcow2 t.raw",
    "-O bogus src.qcow2 t.raw",
    "-O qcow2 -o foo=bar src.qcow2 t.qcow2",
    "-O qcow2 -o cluster_size=3k src.qcow2 t.qcow2",
    "-O qcow2 src.qcow2 small.raw t.qcow2",
    "-O qcow2 -B src.qcow2 -F qcow2 src.qcow2 small.raw t.qcow2",
    "-c -O qcow2 -o preallocation=metadata src.qcow2 t.qcow2",
    "-O qcow2 -o preallocation=metadata src.qcow2 t.qcow2",
    "-O qcow2 -o help src.qcow2 t.qcow2",
    "-O qcow2 -o compression_type=zstd -c src.qcow2 t.qcow2",
    "-l snap -O qcow2 src.qcow2 t.qcow2",
    "-l snapshot.name=snap -O raw src.qcow2 t.raw",
    "-l nosuch -O qcow2 src.qcow2 t.qcow2",
    "-f raw -O qcow2 small.raw t.qcow2",
    "-t bogus -O qcow2 small.raw t.qcow2",
    "-O qcow2 nothere t.qcow2",
    "-S 100 src.qcow2 t.raw",
    "-m 17 src.qcow2 t.raw",
    "-n -o cluster_size=4k src.qcow2 t.raw",
    "-O raw",
    "-Z",
    "-n --target-is-zero -B src.qcow2 -O qcow2 src.qcow2 ov.qcow2",
    "-n --target-image-opts src.qcow2 driver=qcow2,file.filename=ov.qcow2",
    "-n --target-image-opts -O qcow2 src.qcow2 driver=qcow2,file.filename=ov.qcow2",
    "--target-is-zero -O qcow2 src.qcow2 t.qcow2",
    "-C -c -O qcow2 src.qcow2 t.qcow2",
    "--salvage -O raw --image-opts driver=raw,file.driver=blkdebug,file.image.filename=small.raw,"
    "file.inject-error.0.event=read_aio,file.inject-error.0.sector=200,file.inject-error.0.once=off"
    " t.raw",
    "-O raw --image-opts driver=raw,file.driver=blkdebug,file.image.filename=small.raw,"
    "file.inject-error.0.event=read_aio,file.inject-error.0.sector=200 t.raw",
]


@pytest.mark.parametrize("args", CONVERT_CASES)
def test_convert(templates: dict[str, Path], sides: tuple[Path, Path], args: str) -> None:
    q, p = sides
    fill(templates["convert"], q, p)
    argv = args.split()
    both(q, p, "convert", *argv)
    assert (p / "ov.qcow2").read_bytes() == (q / "ov.qcow2").read_bytes()
    for name in ("t.raw", "t.qcow2"):
        if not (q / name).exists():
            assert not (p / name).exists()
            continue
        # in-order writes make qemu-img's output deterministic: the files must be equal
        assert (p / name).read_bytes() == (q / name).read_bytes(), name
        if name.endswith(".qcow2"):
            check_clean(p, name)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("extra", ["", "-c", "-S 0", "-p"])
def test_convert_existing_target(
    templates: dict[str, Path], sides: tuple[Path, Path], fmt: str, extra: str
) -> None:
    q, p = sides
    fill(templates["convert"], q)
    sh(q, QEMU_IMG, "create", "-f", fmt, f"t.{fmt}", "8M")
    io_write(q, f"t.{fmt}", "write -P 8 0 8M", fmt=fmt)
    clone(q, p)
    argv = ["-n", *extra.split(), "-O", fmt, "src.qcow2", f"t.{fmt}"]
    if extra == "-c" and fmt == "raw":
        argv = ["-n", "-O", fmt, "ov.qcow2", f"t.{fmt}"]
    both(q, p, "convert", *argv)
    assert (p / f"t.{fmt}").read_bytes() == (q / f"t.{fmt}").read_bytes()


def test_snapshot_edge_images(sides: tuple[Path, Path]) -> None:
    """An empty image (empty L1 table), 1-bit refcounts (the second reference overflows:
    EINVAL and a leaked L1 copy, as in qemu-img) and 512-byte clusters."""
    q, p = sides
    sh(q, QEMU_IMG, "create", "-f", "qcow2", "z.qcow2", "0")
    sh(q, QEMU_IMG, "create", "-f", "qcow2", "-o", "refcount_bits=1", "r1.qcow2", "1M")
    io_write(q, "r1.qcow2", "write -P 1 0 64k")
    sh(q, QEMU_IMG, "create", "-f", "qcow2", "-o", "cluster_size=512", "small.qcow2", "1M")
    io_write(q, "small.qcow2", "write -P 1 0 1M")
    clone(q, p)
    for image, step in (
        ("z.qcow2", ("-c", "x")),
        ("z.qcow2", ("-a", "x")),
        ("z.qcow2", ("-d", "x")),
        ("r1.qcow2", ("-c", "x")),
        ("small.qcow2", ("-c", "x")),
        ("small.qcow2", ("-a", "x")),
    ):
        both(q, p, "snapshot", *step, image)
        assert masked_bytes(p / image) == masked_bytes(q / image), (image, step)
        assert qemu(p, "check", image)[:2] == qemu(q, "check", image)[:2]


def test_snapshot_apply_refused_with_bitmaps(sides: tuple[Path, Path]) -> None:
    q, p = sides
    sh(q, QEMU_IMG, "create", "-f", "qcow2", "bm.qcow2", "1M")
    sh(q, QEMU_IMG, "bitmap", "--add", "bm.qcow2", "b0")
    sh(q, QEMU_IMG, "snapshot", "-c", "s", "bm.qcow2")
    sized(q / "r.raw", 1 << 20)
    clone(q, p)
    both(q, p, "snapshot", "-a", "s", "bm.qcow2")
    check_clean(p, "bm.qcow2")
    both(q, p, "convert", "-l", "s", "-O", "raw", "r.raw", "t.raw")


@pytest.mark.parametrize(
    "argv",
    [
        ["-p", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
        ["-p", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2"],
        ["-p", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2"],
        ["-p", "-b", "base.qcow2", "-F", "qcow2", "sub/mid.qcow2"],
        ["-p", "-b", "mid.qcow2", "-F", "qcow2", "sub/top.qcow2"],
    ],
    ids=lambda a: " ".join(a),
)
def test_rebase_within_chain(
    templates: dict[str, Path], sides: tuple[Path, Path], argv: list[str]
) -> None:
    """Rebasing onto an image of the chain reuses it (only what lies between is compared),
    but only when QEMU's bdrv_find_backing_image finds it: a relative name for an image in
    a subdirectory is resolved twice and is not found, so the new backing file is opened
    and compared in full (the progress meter shows the difference)."""
    q, p = sides
    for d in (q, p):
        (d / "sub").mkdir()
        for name in ("base.qcow2", "mid.qcow2", "top.qcow2"):
            shutil.copy2(templates["rebase"] / name, d / name)
            shutil.copy2(templates["rebase"] / name, d / "sub" / name)
    both(q, p, "rebase", *argv)
    image = argv[-1]
    assert (p / image).read_bytes() == (q / image).read_bytes()
    check_clean(p, image)
