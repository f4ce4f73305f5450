"""The seed scenario: a QEMU guest boots from a disk served by qio-nbd through blkverify.

The guest is a 512-byte boot sector (assembled from the source below, kept here as bytes so
the test needs no assembler): it reads 16 sectors through the BIOS, checks that they all
hold 0x51, prints QIO-BOOT-OK or QIO-BOOT-BAD on the serial port and ends QEMU through the
isa-debug-exit device.  The disk under test differs from the trusted copy in one byte of
sector 5, so every boot hits a blkverify mismatch:

* with ``--on-mismatch raw`` the guest gets the trusted data and boots fine, and the
  mismatch is on the server's stderr and in its JSON log;
* with ``--on-mismatch error`` the guest's BIOS read fails and the guest says so.

Skipped, with the reason printed, when qemu-system-x86_64 is not installed.

    cli; xor ax,ax; mov ds/es/ss,ax; mov sp,0x7c00; sti
    mov bx,0x8000; mov ah,2; mov al,16; mov ch,0; mov cl,2; mov dh,0; int 0x13; jc fail
    mov si,0x8000; mov cx,8192; check: lodsb; cmp al,0x51; jne fail; loop check
    mov si,okmsg; call puts; mov al,0x10; jmp quit
    fail: mov si,badmsg; call puts; mov al,0x20
    quit: out 0xf4,al; halt: hlt; jmp halt
    puts: lodsb; test al,al; jz ret; mov dx,0x3f8; out dx,al; jmp puts
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nbd_support import Server, env, free_port, qio_has_driver

QEMU_SYSTEM = shutil.which("qemu-system-x86_64")

BOOT_CODE = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007cfbbb0080b402b010b500b102b600cd137217be0080b90020ac3c51750c"
    "e2f9be4e7ce81100b010eb08be5b7ce80700b020e6f4f4ebfdac84c07406baf803eeebf5c351494f2d"
    "424f4f542d4f4b0a0051494f2d424f4f542d4241440a"
)
EXIT_OK = (0x10 << 1) | 1  # isa-debug-exit turns the written value v into exit status 2v+1
EXIT_BAD = (0x20 << 1) | 1


def _disk(path: Path, damaged: bool) -> None:
    sector0 = BOOT_CODE + bytes(510 - len(BOOT_CODE)) + b"\x55\xaa"
    body = bytearray(b"\x51" * (16 * 512))
    if damaged:
        body[4 * 512 + 7] = 0x52  # sector 5 of the disk
    data = sector0 + bytes(body)
    path.write_bytes(data + bytes((1 << 20) - len(data)))


def _server(tmp_path: Path, action: str) -> tuple[Server, Path]:
    trusted = tmp_path / "trusted.img"
    test = tmp_path / "test.img"
    _disk(trusted, damaged=False)
    _disk(test, damaged=True)
    log = tmp_path / "mismatches.jsonl"
    port = free_port()
    pid = tmp_path / "vm.pid"
    if qio_has_driver("qio.block.drivers.blkverify"):
        program = [sys.executable, "-m", "qio.nbd"]
    else:  # this branch has no blkverify yet: the test double speaks the same interface
        program = [sys.executable, "-m", "tests.fake_blkverify"]
    argv = [
        *program, "-p", str(port), "-t", "--pid-file", str(pid), "--mismatch-log", str(log),
        f"--on-mismatch={action}", "--image-opts",
        f"driver=raw,file.driver=blkverify,file.x-raw={trusted},file.x-image={test}",
    ]  # fmt: skip
    return Server(argv, tmp_path, port=port, pid_file=pid), log


def _boot(server: Server, tmp_path: Path) -> tuple[int, str]:
    assert QEMU_SYSTEM is not None
    serial = tmp_path / "serial.log"
    argv = [
        QEMU_SYSTEM, "-nodefaults", "-display", "none", "-machine", "pc,accel=tcg", "-m", "32",
        "-drive", f"file=nbd://127.0.0.1:{server.port},format=raw,if=ide",
        "-serial", f"file:{serial}", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-no-reboot",
    ]  # fmt: skip
    try:
        proc = subprocess.run(argv, env=env(), capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the guest did not finish within 60 seconds")
    return proc.returncode, serial.read_text() if serial.exists() else ""


@pytest.mark.skipif(
    QEMU_SYSTEM is None,
    reason="qemu-system-x86_64 is not installed (apt-get install -y qemu-system-x86)",
)
@pytest.mark.parametrize(
    ("action", "status", "text"),
    [("raw", EXIT_OK, "QIO-BOOT-OK"), ("error", EXIT_BAD, "QIO-BOOT-BAD")],
)
def test_guest_boots_from_blkverify_export(
    action: str, status: int, text: str, tmp_path: Path
) -> None:
    server, log = _server(tmp_path, action)
    with server:
        rc, serial = _boot(server, tmp_path)
    assert text in serial, serial
    assert rc == status
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records, server.stderr
    assert {r["sector"] for r in records} == {5}
    assert {r["action"] for r in records} == {action}
    assert "blkverify mismatch" in server.stderr
