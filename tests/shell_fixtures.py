"""Sessions on scratch images for the shell tests."""

from __future__ import annotations

from pathlib import Path

from qio.block.node import OpenFlags
from qio.block.options import Options
from qio.output import Console
from qio.render.plain import PlainRenderer
from qio.session import OpenRequest, Session
from tests.capture import capture_console


def raw_image(path: Path, size: int = 1 << 20) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def open_session(
    image: Path | None,
    driver: str = "raw",
    renderer: PlainRenderer | None = None,
    console: Console | None = None,
) -> Session:
    console = console or capture_console()
    session = Session(renderer or PlainRenderer(console))
    if image is not None:
        options = Options()
        options.set("driver", driver)
        assert session.openfile(OpenRequest(str(image), options, OpenFlags()))
    return session
