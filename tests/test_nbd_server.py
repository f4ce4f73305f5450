"""qio-nbd with the real QEMU tools as clients.

* qemu-io scripts through qio-nbd and through qemu-nbd give identical output and images;
* qemu-img convert / compare / map / check / info through qio-nbd agree with the same tools
  through qemu-nbd, and the data agrees with the image itself;
* several clients at once, SIGTERM, the non-persistent exit, the command line's errors;
* blkverify exports survive mismatches (recorded on stderr and in the JSON log).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qio.nbd.mismatch import load_mismatch_log
from tests.nbd_support import (
    QEMU_IMG,
    QEMU_IO,
    QEMU_NBD,
    Server,
    env,
    free_port,
    make_raw,
    needs_qemu,
    normalise,
    qemu_nbd,
    qio_has_driver,
    qio_nbd,
    qio_nbd_cmd,
    run,
)

pytestmark = [needs_qemu, pytest.mark.oracle]

QEMU_IO_SCRIPTS = {
    "io": (
        "-f", "raw",
        "-c", "read -P 0x5a 0 64k", "-c", "read -v 196608 48", "-c", "write -P 0x11 1k 3k",
        "-c", "write -f -P 0x22 8k 4k", "-c", "write -z 128k 64k", "-c", "write -z -u 256k 64k",
        "-c", "write -z -n 320k 4k", "-c", "discard 512k 64k", "-c", "flush",
        "-c", "aio_write -P 0x33 600k 4k", "-c", "aio_flush", "-c", "read -P 0x33 600k 4k",
        "-c", "read 1M 1", "-c", "write 1048575 2", "-c", "read -P 0xee 1020k 4k",
        "-c", "length", "-c", "map", "-c", "alloc 0 1M", "-c", "info", "-c", "truncate 2M",
        "-c", "read -P 0x11 1k 3k", "-c", "read -P 0 128k 192k",
    ),
    "probe": ("-c", "read -q 0 512", "-c", "write -P 0x61 0 512", "-c", "map"),
    "big": ("-f", "raw", "-c", "write -P 0x77 0 1M", "-c", "read -P 0x77 0 1M", "-c", "map"),
    "read_only_client": ("-r", "-f", "raw", "-c", "read -q -P 0x5a 0 4k", "-c", "write 0 1"),
}  # fmt: skip


def _pair(tmp_path: Path, extra: tuple[str, ...] = (), unix: bool = False):  # type: ignore[no-untyped-def]
    a = tmp_path / "a.img"
    b = tmp_path / "b.img"
    make_raw(a)
    make_raw(b)  # not a copy: a copy would lose the holes
    return (
        qemu_nbd(str(a), tmp_path, unix=unix, extra=extra),
        qio_nbd(str(b), tmp_path, unix=unix, extra=extra),
        a,
        b,
    )


def _masks(server: Server) -> dict[str, str]:
    masks = {}
    if server.port is not None:
        masks[f":{server.port}"] = ":<PORT>"
    if server.socket_path is not None:
        masks[str(server.socket_path)] = "<SOCK>"
    return masks


@pytest.mark.parametrize("script", sorted(QEMU_IO_SCRIPTS))
@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_qemu_io_through_qio_nbd(script: str, unix: bool, tmp_path: Path) -> None:
    assert QEMU_IO is not None
    ref, cand, a, b = _pair(tmp_path, ("-x", "exp"), unix)
    with ref, cand:
        args = QEMU_IO_SCRIPTS[script]
        expected = run([QEMU_IO, *args, ref.url_for("exp")], tmp_path)
        got = run([QEMU_IO, *args, cand.url_for("exp")], tmp_path)
    assert normalise(got.out, _masks(cand)) == normalise(expected.out, _masks(ref))
    assert normalise(got.err, _masks(cand)) == normalise(expected.err, _masks(ref))
    assert got.rc == expected.rc
    assert cand.stop() == 0
    assert a.read_bytes() == b.read_bytes()


def test_handshake_errors_match_qemu_nbd(tmp_path: Path) -> None:
    assert QEMU_IO is not None
    ref, cand, _, _ = _pair(tmp_path, ("-x", "exp", "-r", "-D", "a test disk"))
    with ref, cand:
        for suffix, args in (
            ("/nosuch", ["-c", "read 0 1"]),
            ("", ["-c", "read 0 1"]),
            ("/exp", ["-f", "raw", "-c", "write 0 1"]),
            ("/exp", ["-r", "-f", "raw", "-c", "read -q -P 0x5a 0 1", "-c", "write 0 1"]),
        ):
            expected = run([QEMU_IO, *args, ref.url + suffix], tmp_path)
            got = run([QEMU_IO, *args, cand.url + suffix], tmp_path)
            assert normalise(got.err, _masks(cand)) == normalise(expected.err, _masks(ref))
            assert normalise(got.out) == normalise(expected.out)
            assert got.rc == expected.rc
        # qemu-nbd -L is a client too: the export list, description and sizes must agree.
        assert QEMU_NBD is not None
        listing = [
            normalise(run([QEMU_NBD, "-L", "-b", "127.0.0.1", "-p", str(s.port)], tmp_path).out)
            for s in (ref, cand)
        ]
    assert "a test disk" in listing[1]
    assert listing[1] == listing[0]


def test_qemu_img_through_qio_nbd(tmp_path: Path) -> None:
    assert QEMU_IMG is not None
    ref, cand, a, b = _pair(tmp_path)
    with ref, cand:
        for sub in (["map", "--output=json"], ["map"], ["info"], ["info", "--output=json"]):
            expected = run([QEMU_IMG, *sub, "-f", "raw", ref.url], tmp_path)
            got = run([QEMU_IMG, *sub, "-f", "raw", cand.url], tmp_path)
            assert normalise(got.out, _masks(cand)) == normalise(expected.out, _masks(ref))
            assert got.rc == expected.rc == 0
        # Data through the export equals the image itself.
        cmp = run([QEMU_IMG, "compare", "-f", "raw", "-F", "raw", cand.url, str(a)], tmp_path)
        assert (cmp.rc, cmp.out) == (0, "Images are identical.\n")
        for fmt in ("raw", "qcow2"):
            out = tmp_path / f"converted.{fmt}"
            conv = run([QEMU_IMG, "convert", "-f", "raw", "-O", fmt, cand.url, str(out)], tmp_path)
            assert conv.rc == 0, conv.err
            cmp = run([QEMU_IMG, "compare", "-F", "raw", str(out), str(a)], tmp_path)
            assert cmp.rc == 0, cmp.out + cmp.err
        # qemu-img convert *into* the export.
        src = tmp_path / "src.img"
        src.write_bytes(bytes(range(256)) * 4096)
        conv = run([QEMU_IMG, "convert", "-n", "-f", "raw", "-O", "raw", str(src), cand.url],
                   tmp_path)  # fmt: skip
        assert conv.rc == 0, conv.err
    assert cand.stop() == 0
    assert b.read_bytes() == src.read_bytes()


def test_qcow2_file_checked_through_export(tmp_path: Path) -> None:
    """A qcow2 file exported as raw bytes: qemu-img check and qemu-io's qcow2 driver work
    through the export exactly as on the file."""
    assert QEMU_IMG is not None and QEMU_IO is not None
    q = tmp_path / "q.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(q), "4M"], tmp_path)
    run([QEMU_IO, "-f", "qcow2", "-c", "write -q -P 0x42 0 1M", "-c", "write -q -z 2M 64k",
         str(q)], tmp_path)  # fmt: skip
    direct = run([QEMU_IMG, "check", "-f", "qcow2", str(q)], tmp_path)
    direct_map = run([QEMU_IMG, "map", "--output=json", "-f", "qcow2", str(q)], tmp_path)
    with qio_nbd(str(q), tmp_path, fmt="raw", extra=("-r",)) as srv:
        over = run([QEMU_IMG, "check", "-f", "qcow2", srv.url], tmp_path)
        over_map = run([QEMU_IMG, "map", "--output=json", "-f", "qcow2", srv.url], tmp_path)
        io = run([QEMU_IO, "-r", "-f", "qcow2", "-c", "read -P 0x42 0 1M", "-c", "map",
                  srv.url], tmp_path)  # fmt: skip
    assert (over.rc, over.out) == (direct.rc, direct.out)
    assert direct.rc == 0
    # Host offsets differ in meaning (file vs export) only in name: both are file offsets.
    assert json.loads(over_map.out) == json.loads(direct_map.out)
    assert io.rc == 0, io.out + io.err
    assert "read 1048576/1048576 bytes at offset 0" in io.out


def test_several_clients_at_once(tmp_path: Path) -> None:
    assert QEMU_IO is not None
    img = tmp_path / "c.img"
    img.write_bytes(bytes(4 << 20))
    with qio_nbd(str(img), tmp_path, extra=("-e", "4")) as srv:
        procs = []
        for i in range(4):
            args = [QEMU_IO, "-f", "raw"]
            for j in range(16):
                off = (i * 16 + j) * 65536
                args += ["-c", f"aio_write -q -P {i + 1} {off} 64k"]
            args += ["-c", "aio_flush"]
            for j in range(16):
                args += ["-c", f"read -q -P {i + 1} {(i * 16 + j) * 65536} 64k"]
            procs.append(
                subprocess.Popen(
                    [*args, srv.url], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )  # fmt: skip
            )
        results = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], results
    data = img.read_bytes()
    for i in range(4):
        chunk = data[i * (1 << 20) : (i + 1) * (1 << 20)]
        assert chunk == bytes([i + 1]) * (1 << 20)


def test_sigterm_flushes_and_exits_zero(tmp_path: Path) -> None:
    assert QEMU_IO is not None
    img = tmp_path / "t.img"
    img.write_bytes(bytes(1 << 20))
    srv = qio_nbd(str(img), tmp_path, extra=("--cache=writeback",)).start()
    try:
        r = run([QEMU_IO, "-f", "raw", "-t", "writeback", "-c", "write -q -P 0x99 0 64k",
                 srv.url], tmp_path)  # fmt: skip
        assert r.rc == 0, r.err
    finally:
        rc = srv.stop(signal.SIGTERM)
    assert rc == 0, srv.stderr
    assert img.read_bytes()[:65536] == b"\x99" * 65536
    assert not srv.pid_file or not srv.pid_file.exists()


def test_non_persistent_server_exits_after_last_client(tmp_path: Path) -> None:
    assert QEMU_IO is not None
    img = tmp_path / "n.img"
    make_raw(img)
    sock = tmp_path / "n.sock"
    pid = tmp_path / "n.pid"
    srv = Server(
        [*qio_nbd_cmd(), "-f", "raw", "-k", str(sock), "--pid-file", str(pid), str(img)],
        tmp_path,
        socket_path=sock,
        pid_file=pid,
    ).start()
    r = run([QEMU_IO, "-f", "raw", "-c", "read -q -P 0x5a 0 4k", srv.url], tmp_path)
    assert r.rc == 0, r.err
    assert srv.wait(timeout=10) == 0
    assert not sock.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "qio-nbd: Invalid number of arguments\n"),
        (["-Z", "x"], "qio-nbd: invalid option -- 'Z'\n"),
        (["-f", "raw", "nosuch.img"],
         "qio-nbd: Failed to blk_new_open 'nosuch.img': Could not open 'nosuch.img': "
         "No such file or directory\n"),
        (["-k", "rel.sock", "x.img"], "qio-nbd: socket path must be absolute\n"),
        (["--cache=bogus", "x.img"], "qio-nbd: Invalid cache mode `bogus'\n"),
        (["--discard=bogus", "x.img"], "qio-nbd: Invalid discard mode `bogus'\n"),
        (["--on-mismatch=bogus", "x.img"],
         "qio-nbd: Invalid mismatch action `bogus' (use 'raw' or 'error')\n"),
        (["-f", "raw", "-p", "abc", "x.img"],
         "qio-nbd: address resolution failed for 127.0.0.1:abc: "
         "Servname not supported for ai_socktype\n"),
    ],
)  # fmt: skip
def test_command_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "x.img").write_bytes(bytes(4096))
    r = run([*qio_nbd_cmd(), *args], tmp_path, timeout=20)
    assert r.rc == 1
    assert r.err.startswith(message), r.err
    assert "Traceback" not in r.err


def test_port_in_use(tmp_path: Path) -> None:
    img = tmp_path / "p.img"
    other = tmp_path / "q.img"
    make_raw(img)
    make_raw(other)
    with qio_nbd(str(img), tmp_path) as srv:
        r = run([*qio_nbd_cmd(), "-f", "raw", "-p", str(srv.port), str(other)], tmp_path)
    assert r.rc == 1
    assert "Failed to find an available port: Address already in use" in r.err


# -- blkverify exports ---------------------------------------------------------------------
def _verify_server(tmp_path: Path, *extra: str, mode: str = "handler") -> tuple[Server, Path]:
    raw = tmp_path / "trusted.img"
    test = tmp_path / "test.img"
    raw.write_bytes(b"\x11" * (1 << 20))
    bad = bytearray(b"\x11" * (1 << 20))
    bad[8192 + 100] = 0x99  # one byte differs, in sector 16
    test.write_bytes(bytes(bad))
    log = tmp_path / "mismatches.jsonl"
    port = free_port()
    pid = tmp_path / "v.pid"
    argv = [
        sys.executable, "-m", "tests.fake_blkverify", "-p", str(port), "-t",
        "--pid-file", str(pid), "--mismatch-log", str(log), *extra, "--image-opts",
        f"driver=raw,file.driver=blkverify,file.x-raw={raw},file.x-image={test},"
        f"file.mode={mode}",
    ]  # fmt: skip
    return Server(argv, tmp_path, port=port, pid_file=pid), log


def test_blkverify_mismatch_gives_trusted_data_and_keeps_serving(tmp_path: Path) -> None:
    assert QEMU_IO is not None and QEMU_IMG is not None
    srv, log = _verify_server(tmp_path)
    with srv:
        r = run([QEMU_IO, "-f", "raw", "-c", "read -P 0x11 0 4k", "-c", "read -P 0x11 6k 4k",
                 "-c", "read -P 0x11 8k 512", srv.url], tmp_path)  # fmt: skip
        assert r.rc == 0, r.out + r.err
        assert "Pattern verification failed" not in r.out
        # Block status must not let a client skip reading (and so verifying) anything.
        m = run([QEMU_IMG, "map", "--output=json", "-f", "raw", srv.url], tmp_path)
        assert json.loads(m.out) == [
            {"start": 0, "length": 1 << 20, "depth": 0, "present": True, "zero": False,
             "data": True, "offset": 0}
        ]  # fmt: skip
        again = run([QEMU_IO, "-f", "raw", "-c", "read -q -P 0x11 0 1M", srv.url], tmp_path)
        assert again.rc == 0
    lines = [ln for ln in srv.stderr.splitlines() if "blkverify mismatch" in ln]
    assert len(lines) == 3
    assert "at offset 8292 (sector 16)" in lines[0]
    assert "read offset=6144 bytes=4096" in lines[0]
    records = load_mismatch_log(str(log))
    assert [(r.request_offset, r.offset, r.sector) for r in records] == [
        (6144, 8292, 16),
        (8192, 8292, 16),
        (0, 8292, 16),
    ]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["action"] for e in entries} == {"raw"}
    assert entries[0]["client"].startswith("127.0.0.1:")


def test_blkverify_mismatch_error_policy(tmp_path: Path) -> None:
    assert QEMU_IO is not None
    srv, log = _verify_server(tmp_path, "--on-mismatch=error")
    with srv:
        r = run([QEMU_IO, "-f", "raw", "-c", "read 6k 4k", "-c", "read -q -P 0x11 0 4k",
                 srv.url], tmp_path)  # fmt: skip
    assert r.out.splitlines()[0] == "read failed: Input/output error"
    assert r.rc == 1
    assert [e["action"] for e in map(json.loads, log.read_text().splitlines())] == ["error"]


def test_blkverify_driver_that_ends_the_program_does_not_end_the_server(tmp_path: Path) -> None:
    assert QEMU_IO is not None
    srv, log = _verify_server(tmp_path, mode="fatal")
    with srv:
        r = run([QEMU_IO, "-f", "raw", "-c", "read 6k 4k", srv.url], tmp_path)
        assert "read failed: Input/output error" in r.out
        r2 = run([QEMU_IO, "-f", "raw", "-c", "read -q -P 0x11 0 4k", srv.url], tmp_path)
        assert r2.rc == 0
    records = load_mismatch_log(str(log))
    assert [(r.request_offset, r.offset) for r in records] == [(6144, 8292)]


def test_pid_file_and_socket_removed_on_sigint(tmp_path: Path) -> None:
    img = tmp_path / "s.img"
    make_raw(img)
    srv = qio_nbd(str(img), tmp_path, unix=True).start()
    assert srv.socket_path is not None and srv.socket_path.exists()
    rc = srv.stop(signal.SIGINT)
    assert rc == 0
    assert not srv.socket_path.exists()
    assert srv.pid_file is not None and not srv.pid_file.exists()
    time.sleep(0)
    assert os.path.exists(img)


@pytest.mark.skipif(
    not qio_has_driver("qio.block.qcow2.driver"),
    reason="qio's qcow2 driver is not in this build (qio/block/qcow2)",
)
@pytest.mark.parametrize("with_backing", [False, True], ids=["qcow2", "qcow2_backing"])
def test_qcow2_stack_served_like_qemu_nbd(with_backing: bool, tmp_path: Path) -> None:
    """qio-nbd -f qcow2 (optionally with a backing chain) against qemu-nbd -f qcow2."""
    assert QEMU_IMG is not None and QEMU_IO is not None
    sides = []
    for side in ("ref", "cand"):
        d = tmp_path / side
        d.mkdir()
        top = d / "top.qcow2"
        if with_backing:
            base = d / "base.qcow2"
            run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(base), "2M"], d)
            run([QEMU_IO, "-f", "qcow2", "-c", "write -q -P 0x21 0 1M", str(base)], d)
            run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                 str(top)], d)  # fmt: skip
        else:
            run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(top), "2M"], d)
        run([QEMU_IO, "-f", "qcow2", "-c", "write -q -P 0x42 64k 64k", "-c",
             "write -q -z 1M 128k", str(top)], d)  # fmt: skip
        sides.append((d, top))
    script = [
        "-f", "raw", "-c", "map", "-c", "read -P 0x42 64k 64k", "-c", "write -P 0x43 1536k 4k",
        "-c", "write -z -u 0 64k", "-c", "discard 128k 64k", "-c", "map",
        "-c", "read -P 0 0 64k",
    ]  # fmt: skip
    ref = qemu_nbd(str(sides[0][1]), sides[0][0], fmt="qcow2")
    cand = qio_nbd(str(sides[1][1]), sides[1][0], fmt="qcow2")
    with ref, cand:
        outputs = []
        for srv, (d, _) in ((ref, sides[0]), (cand, sides[1])):
            io = run([QEMU_IO, *script, srv.url], d)
            m = run([QEMU_IMG, "map", "--output=json", "-f", "raw", srv.url], d)
            outputs.append((normalise(io.out, _masks(srv)), io.rc, m.out))
    assert outputs[1] == outputs[0]
    cmp = run([QEMU_IMG, "compare", str(sides[0][1]), str(sides[1][1])], tmp_path)
    assert cmp.rc == 0, cmp.out
