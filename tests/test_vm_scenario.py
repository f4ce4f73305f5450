"""The seed scenario with a real Linux guest on ``qio-nbd -f raw blkverify:raw.img:test.qcow2``.

A tiny guest (a Debian kernel and a static busybox initramfs, built by ``tests/vm_guest.py``
from Debian packages) boots in QEMU with its disk on ``nbd+unix://`` served by qio-nbd through
blkverify: the trusted copy ``raw.img`` and the image under test ``test.qcow2``.

* clean run: the guest makes an ext2 filesystem, writes files, reads them back after dropping
  its caches and verifies their md5 sums; after shutdown both children hold the same content
  (``qemu-img compare``, qio's ``verify``) and no mismatch was recorded;
* corrupted run: one sector of a file is overwritten in test.qcow2 only, then the guest boots
  again and checks its files.  qio-nbd reports the mismatch on stderr and in its record file,
  ``qio -c 'mismatches -l RECORD'`` lists it, and the guest finishes either way: with the
  default ``--on-mismatch raw`` its files verify (it got the trusted data), with
  ``--on-mismatch error`` its check fails with an I/O error.

Needs downloads (two Debian packages, once, cached in ``$QIO_VM_CACHE`` or
``~/.cache/qio/vm``) and a minute or more, so it runs only with ``QIO_VM=1``; otherwise, or
where qemu-system-x86_64, the kernel or busybox cannot be had, it is skipped with the reason
(``pytest -rs`` prints it).  KVM is used when /dev/kvm works (one short probe boot decides;
``QIO_VM_ACCEL=kvm|tcg`` forces the choice), TCG otherwise.  Every QEMU run is killed after a
generous timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nbd_support import Server, env
from tests.qemu_oracle import qio_run
from tests.vm_guest import MARKER, Guest, GuestUnavailable, build_guest

QEMU_SYSTEM = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")
DISK_SIZE = "32M"
BOOT_TIMEOUT = {"kvm": 120.0, "tcg": 600.0}
PROBE_TIMEOUT = 20.0
CORRUPT = 0x5A  # 'Z': not a character of the marker text, so every byte of the sector differs

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("QIO_VM") != "1",
        reason="the VM scenario downloads a kernel and boots a guest: set QIO_VM=1 to run it",
    ),
    pytest.mark.skipif(
        QEMU_SYSTEM is None,
        reason="qemu-system-x86_64 is not installed (apt-get install -y qemu-system-x86)",
    ),
    pytest.mark.skipif(
        QEMU_IMG is None, reason="qemu-img is not installed (apt-get install -y qemu-utils)"
    ),
]


@dataclass
class Boot:
    status: int | None  # None: killed at the timeout
    serial: str
    seconds: float
    accel: str


def _boot(guest: Guest, accel: str, mode: str, directory: Path, url: str | None) -> Boot:
    """Boot the guest once; QEMU is killed if it has not finished within the timeout."""
    assert QEMU_SYSTEM is not None
    serial = directory / f"serial-{mode}-{accel}.log"
    argv = [
        QEMU_SYSTEM, "-nodefaults", "-display", "none", "-no-reboot", "-m", "128",
        "-accel", accel, "-kernel", str(guest.kernel), "-initrd", str(guest.initramfs),
        "-append", f"console=ttyS0 panic=-1 quiet qio.mode={mode}",
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    if url is not None:
        argv += ["-drive", f"file={url},format=raw,if=virtio"]
    timeout = PROBE_TIMEOUT if mode == "probe" else BOOT_TIMEOUT[accel]
    start = time.monotonic()
    with open(directory / f"qemu-{mode}-{accel}.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            status = None
    seconds = time.monotonic() - start
    text = serial.read_text(errors="replace") if serial.exists() else ""
    print(f"\n--- boot qio.mode={mode} accel={accel}: status {status}, {seconds:.1f} s")
    print("\n".join(line for line in text.splitlines() if "QIO-VM" in line or ": OK" in line))
    return Boot(status, text, seconds, accel)


@pytest.fixture(scope="module")
def guest() -> Guest:
    cache = Path(os.environ.get("QIO_VM_CACHE", Path.home() / ".cache" / "qio" / "vm"))
    start = time.monotonic()
    try:
        built = build_guest(cache)
    except GuestUnavailable as exc:
        pytest.skip(f"cannot build the guest: {exc}")
    print(f"\nguest: {built.origin} ({time.monotonic() - start:.1f} s to get and build)")
    return built


@pytest.fixture(scope="module")
def accel(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """kvm when it actually runs a guest here (nested KVM can be broken), else tcg."""
    forced = os.environ.get("QIO_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not (os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)):
        return "tcg"
    probe = _boot(guest, "kvm", "probe", tmp_path_factory.mktemp("probe"), None)
    if probe.status == 0 and "QIO-VM-DONE" in probe.serial:
        return "kvm"
    print("KVM does not run the guest here; using TCG")
    return "tcg"


def _make_images(directory: Path) -> None:
    assert QEMU_IMG is not None
    for fmt, name in (("raw", "raw.img"), ("qcow2", "test.qcow2")):
        subprocess.run([QEMU_IMG, "create", "-q", "-f", fmt, name, DISK_SIZE], cwd=directory,
                       check=True, timeout=60)  # fmt: skip


def _serve_and_boot(
    guest: Guest, accel: str, mode: str, directory: Path, *extra: str
) -> tuple[Boot, Server, int]:
    """qio-nbd serving blkverify:raw.img:test.qcow2 on a unix socket, one boot against it."""
    sock = directory / "disk.sock"
    pid = directory / "qio-nbd.pid"
    argv = [
        sys.executable, "-m", "qio.nbd", "-f", "raw", "-t", "-k", str(sock),
        "--pid-file", str(pid), *extra, "blkverify:raw.img:test.qcow2",
    ]  # fmt: skip
    server = Server(argv, directory, socket_path=sock, pid_file=pid).start()
    try:
        boot = _boot(guest, accel, mode, directory, server.url)
    finally:
        server_status = server.stop()
    print(f"qio-nbd exit status {server_status}; its stderr:\n{server.stderr}", end="")
    return boot, server, server_status


def _guest_finished(boot: Boot) -> None:
    assert boot.status is not None, f"the guest did not finish in time:\n{boot.serial}"
    assert "QIO-VM-DONE" in boot.serial, boot.serial
    assert "QIO-VM-FAILED" not in boot.serial, boot.serial


def _qemu_img(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run([QEMU_IMG, *args], cwd=directory, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def _qio_verify(directory: Path) -> str:
    r = qio_run(
        ["--image-opts", "-c", "verify", "driver=blkverify,x-raw=raw.img,x-image=test.qcow2"],
        directory,
    )
    return r.stdout


@pytest.fixture(scope="module")
def written(guest: Guest, accel: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean run: the guest made its filesystem and files on the blkverify pair."""
    directory = tmp_path_factory.mktemp("clean")
    _make_images(directory)
    boot, server, status = _serve_and_boot(
        guest, accel, "write", directory, "--mismatch-log", "clean.jsonl"
    )
    _guest_finished(boot)
    assert "QIO-VM-WRITTEN" in boot.serial and "QIO-VM-VERIFIED" in boot.serial, boot.serial
    assert status == 0
    assert "blkverify mismatch" not in server.stderr
    return directory


def test_clean_run_children_identical(written: Path) -> None:
    assert not (written / "clean.jsonl").exists()
    compare = _qemu_img(written, "compare", "-f", "raw", "-F", "qcow2", "raw.img", "test.qcow2")
    assert (compare.returncode, compare.stdout) == (0, "Images are identical.\n")
    check = _qemu_img(written, "check", "test.qcow2")
    assert check.returncode == 0, check.stdout + check.stderr
    assert _qio_verify(written) == (
        "verify: 0 mismatching extents, 0 bytes differ in 33554432 bytes at offset 0\n"
    )


@pytest.mark.parametrize("action", ["raw", "error"])
def test_corrupted_run(
    written: Path, guest: Guest, accel: str, action: str, tmp_path: Path
) -> None:
    for name in ("raw.img", "test.qcow2"):
        shutil.copy(written / name, tmp_path / name)
    # The sector where the marker file starts (file data begins on a block boundary).
    offset = (tmp_path / "raw.img").read_bytes().find(MARKER)
    assert offset > 0 and offset % 512 == 0
    sector = offset // 512
    corrupt = qio_run(
        ["-f", "qcow2", "-c", f"write -q -P {CORRUPT:#x} {offset} 512", "test.qcow2"], tmp_path
    )
    assert corrupt.status == 0, corrupt.stdout + corrupt.stderr
    print(f"corrupted sector {sector} (offset {offset}) of test.qcow2")

    boot, server, status = _serve_and_boot(
        guest, accel, "verify", tmp_path, "--mismatch-log", "mismatches.jsonl",
        f"--on-mismatch={action}",
    )  # fmt: skip
    _guest_finished(boot)
    assert status == 0
    if action == "raw":  # the guest got the trusted data: its files are intact
        assert "QIO-VM-VERIFIED" in boot.serial, boot.serial
    else:  # the guest got EIO for its read, and said so
        assert "QIO-VM-CHECK-FAILED" in boot.serial, boot.serial
        assert "marker.txt: OK" not in boot.serial

    outcome = "client gets the raw data" if action == "raw" else "client gets EIO"
    lines = [line for line in server.stderr.splitlines() if "blkverify mismatch" in line]
    assert lines, server.stderr
    for line in lines:
        assert line.startswith(
            f"qio-nbd: blkverify mismatch in export '' at offset {offset} (sector {sector}): read "
        ), line
        assert line.endswith(f"; {outcome}"), line

    entries = [json.loads(x) for x in (tmp_path / "mismatches.jsonl").read_text().splitlines()]
    assert len(entries) == len(lines)
    assert {(e["op"], e["offset"], e["sector"], e["action"]) for e in entries} == {
        ("read", offset, sector, action)
    }

    listing = qio_run(["-c", "mismatches -l mismatches.jsonl"], tmp_path)
    print(listing.stdout, end="")
    assert listing.status == 0
    out = listing.stdout.splitlines()
    first = entries[0]
    assert out[0] == (
        f"1: blkverify: read offset={first['request_offset']} bytes={first['request_bytes']} "
        f"contents mismatch at offset {offset} (sector {sector})"
    )
    assert out[1].startswith("   qio-nbd export '', client unix, ")
    count = f"{len(entries)} mismatch{'es' if len(entries) != 1 else ''}"
    assert out[-1] == f"mismatches: {count} recorded in mismatches.jsonl"

    # The guest only read: the pair still differs in exactly that sector.
    verify = _qio_verify(tmp_path)
    assert f"{offset:>18} {512:>14} {sector:>14} {sector:>14}" in verify, verify
    compare = _qemu_img(tmp_path, "compare", "-f", "raw", "-F", "qcow2", "raw.img", "test.qcow2")
    assert compare.returncode == 1
    assert compare.stdout == f"Content mismatch at offset {offset}!\n"
