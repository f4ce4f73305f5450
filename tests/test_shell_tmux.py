"""End to end on a real terminal: qio's shell inside tmux, driven by keystrokes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.capture import REPO

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


class Tmux:
    """One private tmux server (its own socket) running one qio shell."""

    def __init__(self, socket: Path) -> None:
        self.socket = str(socket)

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=20
        )
        return done.stdout

    def screen(self, colours: bool = False) -> str:
        return self("capture-pane", "-p", "-t", "qio", *(["-e"] if colours else []))

    def wait_for(self, test: Callable[[str], bool], what: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if test(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{screen}")
            time.sleep(0.05)

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "qio", *keys)


@pytest.fixture()
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.write(b"Hello, qio! " + bytes(20))
        f.truncate(1 << 30)
    t = Tmux(tmp_path / "tmux.sock")
    env = {
        "PYTHONPATH": str(REPO),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "TERM": "xterm-256color",
    }
    command = " ".join(
        ["env"]
        + [f"{k}={v}" for k, v in env.items()]
        + [sys.executable, "-m", "qio", "-f", "raw", str(image)]
    )
    # tmux runs qio through sh, which then says how it ended; the pane stays for reading
    t(
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-c",
        str(tmp_path),
        "-s",
        "qio",
        "-x",
        "120",
        "-y",
        "40",
        f'{command}; echo "qio exited with status $?"',
        ";",
        "set-option",
        "-t",
        "qio",
        "remain-on-exit",
        "on",
    )
    try:
        t.wait_for(lambda s: s.startswith("qio>") and "mismatches" in s, "the prompt")
        yield t
    finally:
        t("kill-server")


def test_shell_on_a_terminal(tmux: Tmux, tmp_path: Path) -> None:
    # the toolbar shows the image and its graph
    screen = tmux.wait_for(lambda s: "raw → file" in s, "the toolbar")
    # (the path is too long for 120 columns: the toolbar drops the directories)
    assert " disk.img │ raw → file disk.img │ 1 GiB │ read-write │ 0 mismatches" in screen

    # a partial command and TAB: "leng" is completed to "length"
    tmux.keys("leng", "Tab")
    tmux.wait_for(lambda s: "qio> length" in s, "the completed command")
    tmux.keys("Enter")
    tmux.wait_for(lambda s: "\n1 GiB" in s, "the length")

    # read -v: the dump is coloured on the terminal
    tmux.keys("read -v 0 32", "Enter")
    tmux.wait_for(lambda s: "read 32/32 bytes at offset 0" in s, "the read report")
    coloured = tmux.screen(colours=True)
    assert re.search(r"\x1b\[[0-9;]*32m48", coloured), coloured  # 'H' in green
    assert re.search(r"\x1b\[[0-9;]*2m00000000:", coloured), coloured  # offset dimmed
    plain = tmux.screen()
    assert "00000000:  48 65 6c 6c 6f 2c 20 71 69 6f 21 20 00 00 00 00  Hello..qio..." in plain

    # ↑ recalls the last command
    tmux.keys("Up", "Enter")
    tmux.wait_for(lambda s: s.count("read 32/32 bytes at offset 0") == 2, "the repeated read")

    # suggestions from history: typing a prefix shows the rest of an earlier line
    tmux.keys("read -")
    tmux.wait_for(lambda s: "qio> read -v 0 32" in s, "the suggestion")
    tmux.keys("C-u")
    # Ctrl-R searches the history
    tmux.keys("C-r", "leng")
    tmux.wait_for(lambda s: "(reverse-i-search)`leng': length" in s, "the search")
    tmux.keys("Enter")  # takes the line found; the toolbar shows the command's synopsis
    tmux.wait_for(lambda s: " length -- gets the length of the current file" in s, "the hint")
    tmux.keys("Enter")
    tmux.wait_for(lambda s: s.count("\n1 GiB") == 2, "the command found by Ctrl-R")

    # Ctrl-C during a long command (a 64 MiB dump is four million lines for the terminal)
    # stops it at the next piece and returns to the prompt
    tmux.keys("read -v 0 64M", "Enter")
    tmux.wait_for(lambda s: re.search(r"^0*[1-9a-f][0-9a-f]{3,}:", s, re.M) is not None, "the dump")
    tmux.keys("C-c")
    screen = tmux.wait_for(lambda s: "interrupted after" in s, "the interruption", timeout=60)
    assert re.search(r"qio: dump interrupted after \d+ of 67108864 bytes", screen), screen
    tmux.wait_for(lambda s: "read 67108864/67108864 bytes at offset 0" in s, "the read report")
    tmux.keys("length", "Enter")
    tmux.wait_for(lambda s: "qio> length\n1 GiB\n" in s, "a command after the interruption")

    # quit: the process ends; status 1 because the interrupted command failed
    tmux.keys("quit", "Enter")
    tmux.wait_for(lambda s: "qio exited with status 1" in s, "the end of qio")
    history = (tmp_path / "state" / "qio" / "history").read_text()
    assert "+read -v 0 32\n" in history and "+quit\n" in history
