"""Run qio commands in-process and capture what they print (for fast unit tests)."""

from __future__ import annotations

from qio.output import Console
from qio.render.plain import PlainRenderer
from qio.session import Session


class CaptureStream:
    """Stands in for an output stream: collects the bytes instead of writing them."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.isatty = False

    def write(self, text: str) -> None:
        self.data += text.encode("utf-8", "surrogateescape")

    def write_bytes(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        pass

    def discard(self) -> None:
        pass


def run_commands(*lines: str) -> tuple[str, str, int]:
    """(stdout, stderr, last status) of ``lines`` run with no image open."""
    out, err = CaptureStream(), CaptureStream()
    session = Session(PlainRenderer(Console(out, err)), "qio")  # type: ignore[arg-type]
    status = 0
    for line in lines:
        status = session.run_line(line)
    return out.data.decode(), err.data.decode(), status
