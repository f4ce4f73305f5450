"""Helpers for tests that run commands in-process and look at what they printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from qio.output import Console, Stream

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TIMING = re.compile(
    r"\d+\.\d\d sec|\d+:\d\d:\d\d\.\d\d|\(([0-9.]+ [A-Za-z]+/sec) and [0-9.]+ ops/sec\)"
)


class CaptureStream(Stream):
    """A Stream that keeps what it is given (unbuffered, not a terminal)."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__(-1, buffered=False)
        self.isatty = tty
        self.data = bytearray()

    def _raw_write(self, data: bytes) -> None:
        self.data += data

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "surrogateescape")


def capture_console(err_tty: bool = False) -> Console:
    return Console(CaptureStream(), CaptureStream(err_tty))


def out_text(console: Console) -> str:
    return console.out.text  # type: ignore[attr-defined]


def err_text(console: Console) -> str:
    return console.err.text  # type: ignore[attr-defined]


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def mask_timing(text: str) -> str:
    return TIMING.sub("<T>", text)


def qio_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def run_qio(
    args: list[str], cwd: Path, stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "qio", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=qio_env(**env),
        timeout=60,
    )


def run_commands(*lines: str) -> tuple[str, str, int]:
    """(stdout, stderr, last status) of ``lines`` run in-process with no image open."""
    from qio.render.plain import PlainRenderer
    from qio.session import Session

    console = capture_console()
    session = Session(PlainRenderer(console), "qio")
    status = 0
    for line in lines:
        status = session.run_line(line)
    return out_text(console), err_text(console), status
