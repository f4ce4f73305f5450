"""``mismatches -l FILE``: qio lists the mismatch record file a qio-nbd server wrote."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qio.nbd.mismatch import MismatchRecorder, RequestContext, load_mismatch_records
from qio.render.terminal import TerminalRenderer
from qio.results import LoggedMismatch, Mismatch
from tests.capture import capture_console, out_text, strip_ansi
from tests.nbd_support import env
from tests.qemu_oracle import qio_run

QEMU_IO = shutil.which("qemu-io")
QEMU_IMG = shutil.which("qemu-img")


def qio(directory: Path, *args: str) -> tuple[str, str, int]:
    result = qio_run(list(args), directory)
    return result.stdout, result.stderr, result.status


def write_record(path: Path) -> list[str]:
    """Two mismatches as qio-nbd records them; returns the times it wrote."""
    recorder = MismatchRecorder(action="raw", log_path=str(path), stderr=io.StringIO())
    recorder.current = RequestContext(export="disk0", client="127.0.0.1:51234")
    raw = b"\x11" * 32
    test = b"\x11" * 4 + b"\x99" + b"\x11" * 27
    recorder.handle(Mismatch("read", 6144, 4096, 8292, 0, 0, raw, test, 8288))
    recorder.action = "error"
    recorder.current = RequestContext(export="disk0", client="unix")
    recorder.handle(Mismatch("read", 0, 512, None, -5, 0))
    return [json.loads(line)["time"] for line in path.read_text().splitlines()]


def test_lists_a_record_file_without_an_image(tmp_path: Path) -> None:
    times = write_record(tmp_path / "m.jsonl")
    out, err, status = qio(tmp_path, "-c", "mismatches -l m.jsonl")
    assert out == (
        "1: blkverify: read offset=6144 bytes=4096 contents mismatch at offset 8292 (sector 16)\n"
        f"   qio-nbd export 'disk0', client 127.0.0.1:51234, {times[0]}: "
        "the client got the raw data\n"
        "2: blkverify: read offset=0 bytes=512 return value mismatch -5 != 0\n"
        f"   qio-nbd export 'disk0', client unix, {times[1]}: the client got EIO\n"
        "mismatches: 2 mismatches recorded in m.jsonl\n"
    )
    assert err == ""
    assert status == 0


def test_record_file_and_session_are_listed_apart(tmp_path: Path) -> None:
    write_record(tmp_path / "m.jsonl")
    (tmp_path / "a.img").write_bytes(bytes(65536))
    (tmp_path / "b.img").write_bytes(bytes(512) + b"\x01" + bytes(65535 - 512))
    out, _err, status = qio(
        tmp_path,
        "--image-opts",
        "-c", "read -q 0 4k",
        "-c", "mismatches -lm.jsonl",
        "-c", "mismatches",
        "driver=blkverify,mismatch=report,raw.filename=a.img,"
        "test.driver=raw,test.file.filename=b.img",
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == (
        "blkverify: read offset=0 bytes=4096 contents mismatch at offset 512 (sector 1)"
    )
    assert lines[5] == "mismatches: 2 mismatches recorded in m.jsonl"
    assert lines[6:] == [
        "1: blkverify: read offset=0 bytes=4096 contents mismatch at offset 512 (sector 1)",
        "mismatches: 1 mismatch recorded in this session",
    ]
    assert status == 1  # the session's read failed


def test_empty_record_file(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text("\n")
    out, _err, status = qio(tmp_path, "-c", "mismatches -l m.jsonl")
    assert out == "mismatches: none recorded in m.jsonl\n"
    assert status == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "mismatches: Could not open 'm.jsonl': No such file or directory"),
        ('{"op": "read"}\n', "mismatches: m.jsonl:1: not a mismatch record"),
        ("\n[1, 2]\n", "mismatches: m.jsonl:2: not a mismatch record"),
        (
            '{"op": "read", "request_offset": 0, "request_bytes": 1, "raw_bytes": "zz"}\n',
            "mismatches: m.jsonl:1: not a mismatch record",
        ),
        (b"\xff\xfe\n", "mismatches: m.jsonl: not a mismatch record file"),
    ],
)
def test_bad_record_files(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    if isinstance(content, bytes):
        (tmp_path / "m.jsonl").write_bytes(content)
    elif content is not None:
        (tmp_path / "m.jsonl").write_text(content)
    out, err, status = qio(tmp_path, "-c", "mismatches -l m.jsonl", "-c", "mismatches")
    assert out == f"{message}\nmismatches: none recorded in this session\n"
    assert err == ""
    assert status == 1


def test_bad_arguments(tmp_path: Path) -> None:
    out, err, status = qio(tmp_path, "-c", "mismatches -l", "-c", "mismatches a b")
    assert err == "mismatches: option requires an argument -- 'l'\n"
    usage = "mismatches [-l file] -- lists the blkverify mismatches of this session or of a"
    assert out.splitlines() == [usage + " qio-nbd record file"] * 2
    assert status == 1


def test_terminal_shows_the_bytes_of_each_entry(tmp_path: Path) -> None:
    write_record(tmp_path / "m.jsonl")
    console = capture_console()
    r = TerminalRenderer(console, width=120, color_system="standard")  # type: ignore[arg-type]
    r.mismatch_log("m.jsonl", load_mismatch_records(str(tmp_path / "m.jsonl")))
    lines = strip_ansi(out_text(console)).splitlines()
    assert lines[0].startswith("1: blkverify: read offset=6144 bytes=4096 contents mismatch")
    assert lines[1].startswith("   qio-nbd export 'disk0', client 127.0.0.1:51234, ")
    assert lines[2].startswith(
        "blkverify read mismatch: first difference at offset 8292 (0x2064), sector 16"
    )
    assert lines[4].split() == ["00002060:"] + ["11"] * 20 + ["99"] + ["11"] * 11
    assert "test returned -5 (Input/output error), raw returned 0 (success)" in "\n".join(lines)
    assert lines[-1] == "mismatches: 2 mismatches recorded in m.jsonl"


def test_logged_mismatch_keeps_the_origin(tmp_path: Path) -> None:
    write_record(tmp_path / "m.jsonl")
    first, second = load_mismatch_records(str(tmp_path / "m.jsonl"))
    assert isinstance(first, LoggedMismatch)
    assert (first.export, first.client, first.action) == ("disk0", "127.0.0.1:51234", "raw")
    assert first.mismatch.raw_bytes == b"\x11" * 32 and first.mismatch.window_offset == 8288
    assert (second.action, second.mismatch.offset, second.mismatch.test_ret) == ("error", None, -5)


@pytest.mark.skipif(
    QEMU_IO is None or QEMU_IMG is None,
    reason="qemu-io and qemu-img are needed (apt-get install -y qemu-utils)",
)
def test_qio_nbd_record_read_back_by_qio(tmp_path: Path) -> None:
    """The real server and driver: qemu-io reads a blkverify export, qio lists the record."""
    assert QEMU_IO is not None
    assert QEMU_IMG is not None
    (tmp_path / "raw.img").write_bytes(b"\x11" * 65536)
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "test.qcow2", "64k"], cwd=tmp_path,
                   check=True)  # fmt: skip
    subprocess.run([QEMU_IO, "-f", "qcow2", "-c", "write -q -P 0x11 0 64k",
                    "-c", "write -q -P 0x22 8200 3", "test.qcow2"], cwd=tmp_path,
                   check=True)  # fmt: skip
    sock = tmp_path / "s.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "qio.nbd", "-f", "raw", "-k", str(sock), "--mismatch-log",
         "m.jsonl", "blkverify:raw.img:test.qcow2"],
        cwd=tmp_path, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not sock.exists() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.02)
        client = subprocess.run(
            [QEMU_IO, "-f", "raw", "-c", "read -P 0x11 0 64k", f"nbd+unix:///?socket={sock}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        _out, stderr = server.communicate(timeout=30)  # one client: the server ends after it
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert client.returncode == 0, client.stdout + client.stderr
    assert stderr == (
        "qio-nbd: blkverify mismatch in export '' at offset 8200 (sector 16): "
        "read offset=0 bytes=65536; client gets the raw data\n"
    )
    out, _err, status = qio(tmp_path, "-c", "mismatches -l m.jsonl")
    lines = out.splitlines()
    assert lines[0] == (
        "1: blkverify: read offset=0 bytes=65536 contents mismatch at offset 8200 (sector 16)"
    )
    assert lines[1].startswith("   qio-nbd export '', client unix, ")
    assert lines[1].endswith(": the client got the raw data")
    assert lines[2] == "mismatches: 1 mismatch recorded in m.jsonl"
    assert status == 0
