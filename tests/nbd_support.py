"""Helpers for the NBD tests: free ports, servers that always get cleaned up, tool runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QEMU_IO = shutil.which("qemu-io")
QEMU_IMG = shutil.which("qemu-img")
QEMU_NBD = shutil.which("qemu-nbd")

needs_qemu = pytest.mark.skipif(
    not (QEMU_IO and QEMU_IMG and QEMU_NBD),
    reason="qemu-io, qemu-img and qemu-nbd are needed (apt-get install -y qemu-utils)",
)

TIMEOUT = 30


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["LC_ALL"] = "C"
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qio_has_driver(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@dataclass
class Result:
    rc: int
    out: str
    err: str


def run(argv: Sequence[str], cwd: Path, timeout: float = TIMEOUT) -> Result:
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def qio_cmd() -> list[str]:
    return [sys.executable, "-m", "qio"]


def qio_nbd_cmd() -> list[str]:
    return [sys.executable, "-m", "qio.nbd"]


_STATS = re.compile(
    r"^(?P<pre>.*, -?\d+ ops; )(?:\d\d\.\d\d sec|\d+:\d\d:\d\d\.\d\d) "
    r"\([^)]*/sec and [^)]* ops/sec\)$"
)
_CSTATS = re.compile(r"^(?P<pre>-?\d+,-?\d+,)\d+:\d\d:\d\d\.\d\d,[^,]+,[^,]+$")


def normalise(text: str, replacements: dict[str, str] | None = None) -> str:
    """Mask timing figures, the program name, and per-run names (ports, paths)."""
    for old, new in (replacements or {}).items():
        text = text.replace(old, new)
    lines = []
    for line in text.split("\n"):
        m = _STATS.match(line)
        if m:
            line = m.group("pre") + "<TIME>"
        m = _CSTATS.match(line)
        if m:
            line = m.group("pre") + "<TIME>"
        line = re.sub(r"^(qemu-io|qio): ", "PROG: ", line)
        lines.append(line)
    return "\n".join(lines)


@dataclass
class Server:
    """A running NBD server process, stopped (and reaped) by ``stop`` or the context exit."""

    argv: list[str]
    cwd: Path
    port: int | None = None
    socket_path: Path | None = None
    pid_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    stderr: str = ""
    _log: Path | None = field(default=None, repr=False)

    def start(self) -> Server:
        self._log = self.cwd / f"server-{id(self)}.log"
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stderr = self._log.read_text()
                raise RuntimeError(f"server exited early: {self.argv}\n{self.stderr}")
            if (
                self.pid_file is not None
                and self.pid_file.exists()
                and self.pid_file.stat().st_size
            ):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server did not start: {self.argv}")

    @property
    def url(self) -> str:
        if self.socket_path is not None:
            return f"nbd+unix:///?socket={self.socket_path}"
        return f"nbd://127.0.0.1:{self.port}"

    def url_for(self, export: str) -> str:
        if self.socket_path is not None:
            return f"nbd+unix:///{export}?socket={self.socket_path}"
        return f"nbd://127.0.0.1:{self.port}/{export}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        rc = 0
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(timeout=10)
        elif self.proc is not None:
            rc = self.proc.returncode
        if self._log is not None and self._log.exists():
            self.stderr = self._log.read_text()
        return rc

    def wait(self, timeout: float = 10) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            if self._log is not None and self._log.exists():
                self.stderr = self._log.read_text()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server(
    program: list[str],
    image: str,
    cwd: Path,
    fmt: str | None,
    unix: bool,
    extra: Sequence[str],
    persistent: bool = True,
) -> Server:
    pid = cwd / f"nbd-{free_port()}-{time.monotonic_ns()}.pid"
    argv = list(program)
    if fmt is not None:
        argv += ["-f", fmt]
    port = None
    sock = None
    if unix:
        sock = cwd / f"{pid.stem}.sock"
        argv += ["-k", str(sock)]
    else:
        port = free_port()
        argv += ["-p", str(port), "-b", "127.0.0.1"]
    if persistent:
        argv.append("-t")
    argv += ["--pid-file", str(pid), *extra, image]
    return Server(argv, cwd, port=port, socket_path=sock, pid_file=pid)


def qemu_nbd(
    image: str,
    cwd: Path,
    fmt: str | None = "raw",
    unix: bool = False,
    extra: Sequence[str] = (),
    persistent: bool = True,
) -> Server:
    assert QEMU_NBD is not None
    return _server([QEMU_NBD], image, cwd, fmt, unix, extra, persistent)


def qio_nbd(
    image: str,
    cwd: Path,
    fmt: str | None = "raw",
    unix: bool = False,
    extra: Sequence[str] = (),
    persistent: bool = True,
) -> Server:
    return _server(qio_nbd_cmd(), image, cwd, fmt, unix, extra, persistent)


def make_raw(path: Path, size: int = 1 << 20) -> None:
    """A sparse raw image: data at 0-64k, a byte ramp at 192k, 0xee in the last 4k."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"\x5a" * 65536)
        f.seek(196608)
        f.write(bytes(range(256)) * 16)
        f.seek(size - 4096)
        f.write(b"\xee" * 4096)
