"""qio's NBD client against the real qemu-nbd, differentially against the real qemu-io.

Each case starts two qemu-nbd servers on two copies of the same image; qemu-io talks to one,
qio to the other, with the same commands.  stdout, stderr (program name and timing masked,
ports and socket paths replaced) and the exit status must be identical, and so must the two
images afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nbd_support import (
    QEMU_IMG,
    QEMU_IO,
    Server,
    make_raw,
    needs_qemu,
    normalise,
    qemu_nbd,
    qio_cmd,
    run,
)

pytestmark = [needs_qemu, pytest.mark.oracle]


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]  # qemu-io arguments; {URL} is the server's URL, {EXP} its export URL
    image: str = "raw"  # raw | qcow2 | odd
    unix: bool = False
    export: str | None = None
    server_extra: tuple[str, ...] = ()


IO_SCRIPT = (
    "-c", "read -P 0x5a 0 64k",
    "-c", "read -v 196608 32",
    "-c", "write -P 0x11 1k 3k",
    "-c", "read -P 0x11 1k 3k",
    "-c", "write -f -P 0x22 8k 4k",
    "-c", "write -z 128k 64k",
    "-c", "write -z -u 256k 64k",
    "-c", "write -z -n 320k 4k",
    "-c", "discard 512k 64k",
    "-c", "flush",
    # (two aio requests in flight complete in whatever order qemu-nbd answers: one at a time)
    "-c", "aio_write -P 0x33 600k 4k",
    "-c", "aio_flush",
    "-c", "aio_read -P 0x5a 4k 4k",
    "-c", "aio_flush",
    "-c", "read -P 0x33 600k 4k",
    "-c", "readv -P 0 700k 4k 4k",
    "-c", "writev -P 0x44 800k 4k 4k",
    "-c", "read 1M 1",
    "-c", "write 1048575 2",
    "-c", "length",
    "-c", "map",
    "-c", "alloc 0 1M",
    "-c", "alloc 2M",
    "-c", "info",
    "-c", "truncate 512k",
    "-c", "truncate 2M",
    "-c", "length",
)  # fmt: skip

CASES = [
    Case("tcp_raw_io", ("-f", "raw", *IO_SCRIPT, "{URL}")),
    Case("unix_raw_io_named", ("-f", "raw", *IO_SCRIPT, "{EXP}"), unix=True, export="exp1"),
    Case(
        "tcp_qcow2_export_status",
        (
            "-f",
            "raw",
            "-c",
            "map",
            "-c",
            "alloc 0 64k",
            "-c",
            "alloc 64k 64k",
            "-c",
            "alloc 1M 64k",
            "-c",
            "write -z -u 0 64k",
            "-c",
            "discard 64k 64k",
            "-c",
            "map",
            "-c",
            "read -P 0 0 128k",
            "-c",
            "read -P 0x5a 1M 4k",
            "{URL}",
        ),
        image="qcow2",
        server_extra=("-f", "qcow2", "--discard=unmap"),
    ),  # fmt: skip
    Case("probe_warning", ("-c", "read -q 0 512", "-c", "write -q -P 1 0 512", "{URL}")),
    Case("probe_warning_unix", ("-c", "read -q 0 512", "{EXP}"), unix=True, export="e"),
    Case("read_only_probe", ("-r", "-c", "read -q -P 0x5a 0 4k", "-c", "info", "{URL}")),
    Case("nbd_driver_info", ("-f", "nbd", "-c", "info", "-c", "map", "-c", "length", "{URL}")),
    Case(
        "image_opts_tcp",
        (
            "--image-opts",
            "-c",
            "read -q -P 0x5a 0 512",
            "-c",
            "info",
            "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,"
            "file.server.port={PORT}",
        ),
    ),  # fmt: skip
    Case(
        "image_opts_unix_legacy",
        (
            "--image-opts",
            "-c",
            "read -q -P 0x5a 0 512",
            "driver=nbd,path={SOCK},export=x1",
        ),
        unix=True,
        export="x1",
    ),  # fmt: skip
    Case("legacy_tcp", ("-f", "raw", "-c", "read -q -P 0x5a 0 4k", "nbd:127.0.0.1:{PORT}")),
    Case(
        "legacy_unix_export",
        ("-f", "raw", "-c", "read -q -P 0xee 1020k 4k", "nbd:unix:{SOCK}:exportname=z"),
        unix=True,
        export="z",
    ),
    Case("missing_export", ("-f", "raw", "-c", "read 0 1", "{URL}/nosuch")),
    Case(
        "missing_export_unix",
        ("-f", "raw", "-c", "read 0 1", "nbd+unix:///nope?socket={SOCK}"),
        unix=True,
        export="x",
    ),
    Case("no_default_export", ("-f", "raw", "-c", "read 0 1", "{URL}"), export="named"),
    Case("read_only_server", ("-f", "raw", "-c", "write 0 512", "{URL}"), server_extra=("-r",)),
    Case(
        "read_only_server_r",
        ("-r", "-f", "raw", "-c", "write 0 512", "-c", "read -q -P 0x5a 0 512", "{URL}"),
        server_extra=("-r",),
    ),
    Case(
        "odd_size",
        (
            "-f",
            "raw",
            "-c",
            "length",
            "-c",
            "read -P 0x61 0 1000",
            "-c",
            "read -P 0 1000 24",
            "-c",
            "read 1024 1",
            "-c",
            "map",
            "-c",
            "write -q -P 0x62 990 10",
            "{URL}",
        ),
        image="odd",
    ),  # fmt: skip
    Case(
        "json_filename",
        (
            "-c",
            "read -q -P 0x5a 0 512",
            "-c",
            "info",
            'json:{"driver":"raw","file":{"driver":"nbd","server":{"type":"inet",'
            '"host":"127.0.0.1","port":"{PORT}"}}}',
        ),
    ),  # fmt: skip
]


def _prepare(kind: str, path: Path) -> None:
    assert QEMU_IMG is not None and QEMU_IO is not None
    if kind == "raw":
        make_raw(path)
    elif kind == "odd":
        path.write_bytes(b"a" * 1000)
    elif kind == "qcow2":
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), "2M"], check=True)
        subprocess.run(
            [QEMU_IO, "-f", "qcow2", "-c", "write -q -P 0x5a 0 128k", "-c",
             "write -q -z 1M 64k", "-c", "write -q -P 0x5a 1M 4k", str(path)],
            check=True,
        )  # fmt: skip


def _expand(args: tuple[str, ...], server: Server, export: str | None) -> list[str]:
    url = server.url
    exp_url = server.url_for(export or "")
    out = []
    for a in args:
        a = a.replace("{URL}", url).replace("{EXP}", exp_url)
        a = a.replace("{PORT}", str(server.port)).replace("{SOCK}", str(server.socket_path))
        out.append(a)
    return out


def _masks(server: Server) -> dict[str, str]:
    masks: dict[str, str] = {}
    if server.socket_path is not None:
        masks[str(server.socket_path)] = "<SOCK>"
    if server.port is not None:
        masks[f":{server.port}"] = ":<PORT>"
    return masks


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_client_matches_qemu_io(case: Case, tmp_path: Path) -> None:
    assert QEMU_IO is not None and QEMU_IMG is not None
    oracle_img = tmp_path / "oracle.img"
    cand_img = tmp_path / "cand.img"
    _prepare(case.image, oracle_img)
    if case.image == "qcow2":
        shutil.copy(oracle_img, cand_img)
    else:
        _prepare(case.image, cand_img)  # not a copy: a copy would lose the holes
    fmt_args = [a for a in case.server_extra]
    fmt = None if "-f" in fmt_args else "raw"
    extra = list(fmt_args)
    if case.export is not None:
        extra += ["-x", case.export]
    with (
        qemu_nbd(str(oracle_img), tmp_path, fmt=fmt, unix=case.unix, extra=extra) as s_oracle,
        qemu_nbd(str(cand_img), tmp_path, fmt=fmt, unix=case.unix, extra=extra) as s_cand,
    ):
        expected = run([QEMU_IO, *_expand(case.args, s_oracle, case.export)], tmp_path)
        got = run([*qio_cmd(), *_expand(case.args, s_cand, case.export)], tmp_path)
    exp_masks = _masks(s_oracle)
    got_masks = _masks(s_cand)
    assert normalise(got.out, got_masks) == normalise(expected.out, exp_masks)
    assert normalise(got.err, got_masks) == normalise(expected.err, exp_masks)
    assert got.rc == expected.rc
    if case.image == "qcow2":
        cmp = run([QEMU_IMG, "compare", "-f", "qcow2", "-F", "qcow2", str(oracle_img),
                   str(cand_img)], tmp_path)  # fmt: skip
        assert cmp.rc == 0, cmp.out + cmp.err
    else:
        assert oracle_img.read_bytes() == cand_img.read_bytes()


URL_ERRORS = [
    "nbd://127.0.0.1:1/x",
    "nbd:127.0.0.1:1",
    "nbd+unix:///e?socket=does-not-exist.sock",
    "nbd:unix:does-not-exist.sock:exportname=e",
    "nbd+unix:///e",
    "nbd+unix://host/e?socket=s",
    "nbd+unix:///e?socket=s&x=y",
    "nbd://127.0.0.1:1?socket=x",
    "nbd:///x",
    "nbd://",
    "nbd:",
    "nbd:127.0.0.1",
    "nbd:127.0.0.1:abc",
    "nbd://127.0.0.1:99999",
    "nbd://127.0.0.1:/",
    "nbd://[::1",
    "nbd://127.0.0.1:1/%zz",
    "nbd:[::1",
    "nbd::",
    "nbd:host:",
    "nbd::1",
    "nbd:127.0.0.1:1:exportname=",
    "nbd+unix:e?socket=s",
    "nbdx://127.0.0.1",
    "nbd:unix:",
    "nbd+unix:///e?socket=",
]

OPTION_ERRORS = [
    "driver=nbd",
    "driver=nbd,server.type=inet",
    "driver=nbd,server.type=inet,server.host=127.0.0.1",
    "driver=nbd,server.host=127.0.0.1,server.port=1",
    "driver=nbd,server.type=bogus,server.host=127.0.0.1,server.port=1",
    "driver=nbd,server.type=unix",
    "driver=nbd,server.type=unix,server.path=x.sock,server.host=x",
    "driver=nbd,host=127.0.0.1,port=1",
    "driver=nbd,path=x.sock,port=3",
    "driver=nbd,path=x.sock,host=x",
    "driver=nbd,path=x.sock,server.type=unix",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=1,server.bogus=1",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=1,reconnect-delay=abc",
    "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=1,tls-creds=foo",
]


@pytest.mark.parametrize("filename", URL_ERRORS)
def test_url_errors_match(filename: str, tmp_path: Path) -> None:
    assert QEMU_IO is not None
    args = ["-f", "raw", "-c", "read 0 512", filename]
    expected = run([QEMU_IO, *args], tmp_path)
    got = run([*qio_cmd(), *args], tmp_path)
    assert (normalise(got.out), normalise(got.err), got.rc) == (
        normalise(expected.out),
        normalise(expected.err),
        expected.rc,
    )


@pytest.mark.parametrize("options", OPTION_ERRORS)
def test_option_errors_match(options: str, tmp_path: Path) -> None:
    assert QEMU_IO is not None
    args = ["--image-opts", "-c", "read 0 512", options]
    expected = run([QEMU_IO, *args], tmp_path)
    got = run([*qio_cmd(), *args], tmp_path)
    assert (normalise(got.out), normalise(got.err), got.rc) == (
        normalise(expected.out),
        normalise(expected.err),
        expected.rc,
    )
