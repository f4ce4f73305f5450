"""qio-img create against qemu-img create: output, exit status and the files, byte for byte."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from qio.img.common import ImgError
from qio.img.create import create_image, option_pairs
from tests.differential import QEMU_IMG, tool_env
from tests.img_differential import ImgPair, normalise, run_qemu_img, run_qio_img


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("template")
    env = tool_env()
    for args in (
        ["-f", "qcow2", "base.qcow2", "64M"],
        ["-f", "raw", "base.img", "32M"],
        ["-f", "qcow2", "sub/b2.qcow2", "16M"],
    ):
        (d / "sub").mkdir(exist_ok=True)
        subprocess.run([QEMU_IMG, "create", "-q", *args], cwd=d, env=env, check=True)
    (d / "old.qcow2").write_bytes(b"old contents" * 1000)
    (d / "adir").mkdir()
    return d


# Every line: the arguments after "create".
CASES = """
x.img 10M
-f raw x.img 1000
-f raw -o preallocation=full x.img 1M
-f raw -o preallocation=falloc x.img 1M
-f raw -o preallocation=metadata x.img 1M
-f raw -o preallocation=foo x.img 1M
-f raw -o size=8E x.img
-f raw x.img 4E
-f raw -o extent_size_hint=5G x.img 1M
-f raw -o nocow=on,extent_size_hint=1M x.img 1M
-f raw -b base.img x.img 1M
-f raw -F raw x.img 1M
-f raw x.img 0
-f qcow2 x.qcow2
-f qcow2 x.qcow2 1x
-f qcow2 x.qcow2 9E
-f qcow2 x.qcow2 1.5k
-f qcow2 x.qcow2 0x1k
-f qcow2 x.qcow2 1 2
-f qcow2 old.qcow2 1M
-f qcow2 -o compat=2 old.qcow2 1M

-f foo x 1M
-f file ff 1M
-f null-co nn 1M
-f null-co -o help
-f file -o help x
-f file -o preallocation=full,size=1M ff
-f qcow2 -o cluster_size=1x x.qcow2 1M
-f qcow2 -o refcount_bits=x x.qcow2 1M
-f qcow2 -o refcount_bits=3 x.qcow2 1M
-f qcow2 -o refcount_bits=0x8 x.qcow2 1M
-f qcow2 -o lazy_refcounts=x x.qcow2 1M
-f qcow2 -o compat=2 x.qcow2 1M
-f qcow2 -o compat=v2 x.qcow2 1M
-f qcow2 -o compression_type=lz x.qcow2 1M
-f qcow2 -o preallocation=foo x.qcow2 1M
-f qcow2 -o size=1M x.qcow2 1M
-f qcow2 -o size=1M x.qcow2
-f qcow2 -o , x.qcow2 1M
-f qcow2 -o a, x.qcow2 1M
-f qcow2 -o a,, x.qcow2 1M
-f qcow2 -o bogus=1 x.qcow2 1M
-f qcow2 -o nocow x.qcow2 1M
-f qcow2 -o extended_l2=on,cluster_size=4k x.qcow2 1M
-f qcow2 x.qcow2 1023
-f qcow2 x.qcow2 0
-f qcow2 -o data_file_raw=on x.qcow2 1M
-f qcow2 nonexist/x.qcow2 1M
-f raw nonexist/x.img 1M
-f qcow2 -o lazy_refcounts x.qcow2 1M
-f qcow2 -o size=8E x.qcow2
-f qcow2 -o size=16E x.qcow2
-f qcow2 x.qcow2 4E
-f qcow2 -o cluster_size=512 x.qcow2 4P
-f qcow2 -o compat=0.10,extended_l2=on x.qcow2 1M
-f qcow2 -o compat=0.10,compression_type=zstd x.qcow2 1M
-f qcow2 -o compat=0.10,data_file=d x.qcow2 1M
-f qcow2 -o compat=0.10,refcount_bits=8 x.qcow2 1M
-f qcow2 -o compat=0.10,lazy_refcounts=on x.qcow2 1M
-f qcow2 -o backing_fmt=raw x.qcow2 1M
-f qcow2 -o cluster_size=4M x.qcow2 1M
-f qcow2 -o cluster_size=1000 x.qcow2 1M
-f qcow2 -o refcount_bits=128 x.qcow2 1M
-f qcow2 -b x.qcow2 -F qcow2 x.qcow2
-f qcow2 -u -b nope -F foo x.qcow2 1M
-f qcow2 -b nope -F foo x.qcow2 1M
-f qcow2 -b nope -F qcow2 x.qcow2 1M
-f qcow2 -o encrypt.format=luks x.qcow2 1M
-f qcow2 -o encryption=on x.qcow2 1M
-f qcow2 -u -b nope x.qcow2 1M
-f qcow2 -u -b nope -F raw x.qcow2
-f qcow2 -u -b nope -F raw x.qcow2 1M
-f qcow2 -b '' -F raw x.qcow2 1M
-f qcow2 -b base.qcow2 x.qcow2
-f qcow2 -b base.img x.qcow2
-f qcow2 -b base.qcow2 -F qcow2 x.qcow2
-f qcow2 -b base.img -F raw x.qcow2
-f qcow2 -b base.img -F raw x.qcow2 1G
-f qcow2 -b b2.qcow2 -F qcow2 sub/x.qcow2
-f qcow2 -b b2.qcow2 -F qcow2 x.qcow2
-f qcow2 -b base.qcow2 -F raw x.qcow2
-f qcow2 -b base.img -F raw -o preallocation=metadata x.qcow2
-f qcow2 -b base.img -F raw -o preallocation=metadata,extended_l2=on x.qcow2
-f qcow2 -b base.img -F raw -o compat=0.10 x.qcow2
-f qcow2 -b base.img -F raw -o cluster_size=512 x.qcow2
-f qcow2 -o data_file=dd x.qcow2 1M
-f qcow2 -o data_file=dd,data_file_raw=on x.qcow2 1M
-f qcow2 -o data_file=dd,preallocation=metadata x.qcow2 64M
-f qcow2 -o data_file=dd,preallocation=falloc x.qcow2 64M
-f qcow2 -o data_file=dd,data_file_raw=on,preallocation=full x.qcow2 1M
-f qcow2 -o data_file=dd,data_file_raw=on,backing_file=base.img,backing_fmt=raw x.qcow2 1M
-f qcow2 -o cluster_size=512 x.qcow2 3G
-f qcow2 -o cluster_size=2048 x.qcow2 10M
-f qcow2 x.qcow2 16T
-f qcow2 -o compat=0.10 x.qcow2 1M
-f qcow2 -o compat=0.10,cluster_size=512 x.qcow2 1G
-f qcow2 -o compression_type=zstd x.qcow2 1M
-f qcow2 -o extended_l2=on x.qcow2 1G
-f qcow2 -o extended_l2=on,cluster_size=2M x.qcow2 1G
-f qcow2 -o refcount_bits=1 x.qcow2 1M
-f qcow2 -o refcount_bits=64 x.qcow2 1M
-f qcow2 -o refcount_bits=1,cluster_size=512 x.qcow2 1G
-f qcow2 -o lazy_refcounts=on x.qcow2 1M
-f qcow2 -o preallocation=metadata x.qcow2 64M
-f qcow2 -o preallocation=falloc x.qcow2 64M
-f qcow2 -o preallocation=full x.qcow2 8M
-f qcow2 -o preallocation=metadata,lazy_refcounts=on x.qcow2 64M
-f qcow2 -o preallocation=metadata,extended_l2=on x.qcow2 1G
-f qcow2 -o compat=0.10,preallocation=metadata x.qcow2 1M
-q -f qcow2 -o cluster_size=512,preallocation=metadata,refcount_bits=1 x.qcow2 4M
-f qcow2 -o lazy_refcounts=yes,extended_l2=true x.qcow2 1G
-f qcow2 -o backing_file=a,,b,backing_fmt=raw -u x.qcow2 1M
-f qcow2 -o refcount_bits=-16 x.qcow2 1M
-f qcow2 -o refcount_bits= x.qcow2 1M
-f qcow2 -o refcount_bits=020 x.qcow2 1M
-f qcow2 -o refcount_bits=99999999999999999999 x.qcow2 1M
-f qcow2 -o refcount_bits=1_6 x.qcow2 1M
-f qcow2 -o cluster_size=-1 x.qcow2 1M
-f qcow2 -o preallocation= x.qcow2 1M
-f qcow2 -o compression_type= x.qcow2 1M
-f qcow2 -o =1 x.qcow2 1M
-f qcow2 -o size=0x100k x.qcow2
-f raw -o extent_size_hint=0x1k,size=0x10k x.img
-f qcow2 -o extent_size_hint=0x1k,data_file=dx,cluster_size=0x1k,size=0x10k x.qcow2
-f qcow2 -o cluster_size=0x1k,bogus=1 x.qcow2 1M
-f file -o size=0x100k x.img
-f qcow2 adir 1M
-f qcow2 -o data_file=adir x.qcow2 1M
-f qcow2 -o compat=0.10 -o compat=1.1 x.qcow2 1M
-f qcow2 -o help x.qcow2
-f qcow2 -o help
-f qcow2 -o ? x
-f raw -o help x
-f raw -o help
-f foo -o help
-f qcow2 -o cluster_size=1x,help
-x
-qx a
-xq
-f
--foo
"""


@pytest.mark.oracle
@pytest.mark.parametrize("line", CASES.strip("\n").split("\n"))
def test_create_like_qemu_img(line: str, tmp_path: Path, template: Path) -> None:
    pair = ImgPair(tmp_path, template)
    pair.check(["create", *shlex.split(line)])


@pytest.mark.oracle
def test_images_pass_qemu_img_check(tmp_path: Path) -> None:
    for i, opts in enumerate(
        (
            "cluster_size=512,preallocation=metadata,refcount_bits=1",
            "preallocation=falloc,lazy_refcounts=on",
            "extended_l2=on,preallocation=metadata",
        )
    ):
        name = str(tmp_path / f"i{i}.qcow2")
        create_image(name, "qcow2", 32 << 20, dict(p for p in option_pairs(opts)), quiet=True)
        result = run_qemu_img(["check", name], tmp_path)
        assert result.status == 0 and "No errors were found" in result.out, result


@pytest.mark.oracle
def test_api_size_from_backing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.qcow2"
    create_image(str(base), "qcow2", 3 << 20, {}, quiet=True)
    top = tmp_path / "top.qcow2"
    create_image(str(top), "qcow2", None, {}, backing=str(base), backing_fmt="qcow2")
    assert capsys.readouterr().out == (
        f"Formatting '{top}', fmt=qcow2 cluster_size=65536 extended_l2=off "
        f"compression_type=zlib size=3145728 backing_file={base} backing_fmt=qcow2 "
        "lazy_refcounts=off refcount_bits=16\n"
    )
    info = subprocess.run(
        [QEMU_IMG, "info", "--output=json", str(top)],
        env=tool_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"virtual-size": 3145728' in info and f'"backing-filename": "{base}"' in info


def test_api_errors_carry_the_filename(tmp_path: Path) -> None:
    with pytest.raises(ImgError) as caught:
        create_image(
            str(tmp_path / "a.qcow2"), "qcow2", 1 << 20, {"cluster_size": "1000"}, quiet=True
        )
    assert caught.value.message == (
        f"{tmp_path}/a.qcow2: Cluster size must be a power of two between 512 and 2048k"
    )
    assert not (tmp_path / "a.qcow2").exists()  # QEMU deletes what it could not finish
    with pytest.raises(ImgError, match="Image creation needs a size parameter"):
        create_image(str(tmp_path / "b.qcow2"), "qcow2", None, {}, quiet=True)


def test_option_pairs_keep_order_and_duplicates() -> None:
    assert option_pairs("a=1,b=x,,y,a=2,lazy,nocow") == [
        ("a", "1"),
        ("b", "x,y"),
        ("a", "2"),
        ("lazy", "on"),
        ("cow", "off"),
    ]


@pytest.mark.oracle
def test_create_on_nbd_exports(tmp_path: Path) -> None:
    """qcow2 and raw "created" on NBD exports (QEMU's fallback: open, grow, zero sector 0)."""
    from tests.nbd_support import QEMU_NBD, qemu_nbd

    if QEMU_NBD is None:
        pytest.skip("qemu-nbd is not installed")
    pair = ImgPair(tmp_path)
    for d in (pair.q, pair.p):
        (d / "export.img").write_bytes(b"\xaa" * (8 << 20))
    with qemu_nbd("export.img", pair.q) as q_server, qemu_nbd("export.img", pair.p) as p_server:
        for args in (
            ["create", "-f", "qcow2", "{url}", "4M"],
            ["create", "-f", "raw", "{url}", "16M"],
            ["create", "-f", "raw", "-o", "preallocation=full", "{url}", "1M"],
        ):
            q = run_qemu_img([a.replace("{url}", q_server.url) for a in args], pair.q)
            p = run_qio_img([a.replace("{url}", p_server.url) for a in args], pair.p)
            assert (
                p.status,
                p.out.replace(p_server.url, "URL"),
                normalise(p.err, pair.p).replace(p_server.url, "URL"),
            ) == (q.status, q.out.replace(q_server.url, "URL"), q.err.replace(q_server.url, "URL"))
    assert (pair.q / "export.img").read_bytes() == (pair.p / "export.img").read_bytes()
    unreachable = ["create", "-f", "raw", "nbd://127.0.0.1:1/x", "1M"]
    q = run_qemu_img(unreachable, pair.q)
    p = run_qio_img(unreachable, pair.p)
    assert (p.status, p.out, normalise(p.err, pair.p)) == (q.status, q.out, q.err)
