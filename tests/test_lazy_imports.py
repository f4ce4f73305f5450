"""A piped run imports neither prompt_toolkit nor rich (they cost start-up time)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.capture import qio_env

HEAVY = ("rich", "prompt_toolkit")


def imported_packages(args: list[str], stdin: bytes, cwd: Path) -> set[str]:
    """Top-level packages imported by ``python -X importtime -m qio ARGS`` (stdout a pipe)."""
    ran = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "qio", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=qio_env(),
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr.decode()[-2000:]
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", ran.stderr.decode(), re.M)
    assert names, "no -X importtime output"
    return {name.strip().split(".")[0] for name in names}


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "a.img"
    path.write_bytes(bytes(1 << 16))
    return path


def test_piped_c_run_imports_neither(image: Path) -> None:
    loaded = imported_packages(
        ["-f", "raw", "-c", "read -v 0 512", "-c", "map", "-c", "help", str(image)],
        b"",
        image.parent,
    )
    assert "qio" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_piped_stdin_run_imports_neither(image: Path) -> None:
    loaded = imported_packages(["-f", "raw", str(image)], b"read -v 0 64\ninfo\n", image.parent)
    assert not loaded & set(HEAVY)


def test_forced_colour_imports_rich_only(image: Path) -> None:
    """The check above can fail: forcing colour does load rich (and still not the shell)."""
    loaded = imported_packages(
        ["--color=always", "-f", "raw", "-c", "read -v 0 64", str(image)], b"", image.parent
    )
    assert "rich" in loaded
    assert "prompt_toolkit" not in loaded
