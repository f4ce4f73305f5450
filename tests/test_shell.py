"""The interactive shell driven through prompt_toolkit's pipe input (no terminal needed)."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from qio.commands.io import CHUNK
from qio.render.plain import PlainRenderer, Progress
from qio.results import Mismatch
from qio.session import Session
from qio.shell import ctrl_c_cancels, make_prompt_session, run_shell
from qio.shell.history import history_path
from qio.shell.toolbar import graph_summary, toolbar_text
from tests.capture import capture_console, err_text, mask_timing, out_text, qio_env
from tests.shell_fixtures import open_session, raw_image


@pytest.fixture(autouse=True)
def python_sigint_handler():  # type: ignore[no-untyped-def]
    """Python's own SIGINT handler during each test, even when the suite itself was started
    with SIGINT ignored (as a background job is): the Ctrl-C tests check that the shell puts
    back exactly the handler it found."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


ENTER = "\r"
CTRL_C = "\x03"
CTRL_D = "\x04"


def shell(session: Session, keys: str, history: Path) -> None:
    """Run the shell on ``keys`` typed ahead (prompt_toolkit keeps them for later prompts)."""
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        run_shell(session, input=pipe, output=DummyOutput(), history_file=history)


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    return raw_image(tmp_path / "a.img")


def test_commands_run_like_the_c_path(image: Path, tmp_path: Path) -> None:
    """Same engine: the shell's output equals ``qio -c ...`` for the same commands."""
    commands = ["write -P 0x41 0 4k", "read -v 0 32", "bogus", "read -P 0x42 0 512", "length"]
    session = open_session(image)
    shell(session, "".join(c + ENTER for c in commands) + "quit" + ENTER, tmp_path / "h")
    session.close_image()
    console = session.r.console
    args = ["-f", "raw"] + [a for c in commands for a in ("-c", c)] + [str(image)]
    ran = subprocess.run(
        [sys.executable, "-m", "qio", *args], capture_output=True, env=qio_env(), timeout=60
    )
    assert mask_timing(out_text(console)) == mask_timing(ran.stdout.decode())
    assert err_text(console) == ran.stderr.decode()
    assert session.last_error < 0 and ran.returncode == 1


def test_semicolons_separate_commands(image: Path, tmp_path: Path) -> None:
    session = open_session(image)
    shell(session, "length;;  info ; bogus;length" + ENTER + CTRL_D, tmp_path / "h")
    out = out_text(session.r.console)
    assert out.count("1 MiB\n") == 2
    assert "format name: raw\n" in out
    assert err_text(session.r.console) == 'command "bogus" not found\n'
    # the history keeps the line as typed
    assert "+length;;  info ; bogus;length\n" in (tmp_path / "h").read_text()


def test_ctrl_c_at_the_prompt_clears_the_line(image: Path, tmp_path: Path) -> None:
    session = open_session(image)
    shell(session, "write 0 1k" + CTRL_C + "length" + ENTER + "quit" + ENTER, tmp_path / "h")
    assert out_text(session.r.console) == "1 MiB\n"  # the abandoned write never ran
    assert session.last_error == 0
    with open(image, "rb") as f:
        assert f.read(1024) == bytes(1024)


def test_ctrl_d_and_quit_leave(image: Path, tmp_path: Path) -> None:
    session = open_session(image)
    shell(session, CTRL_D + "length" + ENTER, tmp_path / "h")
    assert out_text(session.r.console) == "\n"  # Ctrl-D on an empty line: a newline, then out
    session.close_image()
    session = open_session(image)
    shell(session, "quit" + ENTER + "length" + ENTER, tmp_path / "h")
    assert out_text(session.r.console) == ""
    assert session.quit


def test_history_is_persisted(image: Path, tmp_path: Path) -> None:
    history = tmp_path / "state" / "qio" / "history"
    session = open_session(image)
    shell(session, "length" + ENTER + "info" + ENTER + "quit" + ENTER, history)
    session.close_image()
    assert history.exists()
    # A new shell starts with the earlier commands (newest first, as ↑ walks them).
    later = make_prompt_session(open_session(None), output=DummyOutput(), history_file=history)
    assert list(later.history.load_history_strings())[:3] == ["quit", "info", "length"]


def test_history_location() -> None:
    assert history_path({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == Path(
        "/x/state/qio/history"
    )
    assert history_path({"HOME": "/h"}) == Path("/h/.local/state/qio/history")
    # a relative XDG_STATE_HOME is invalid by the spec and ignored
    assert history_path({"XDG_STATE_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.local/state/qio/history"
    )


def test_unwritable_history_is_a_warning_not_a_failure(image: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    session = open_session(image)
    shell(session, "length" + ENTER + CTRL_D, blocker / "qio" / "history")
    assert out_text(session.r.console) == "1 MiB\n\n"
    assert err_text(session.r.console).startswith("qio: warning: history not kept: ")


# -- toolbar ---------------------------------------------------------------------------------
def node(fmt: str, filename: str = "", **children: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(format_name=fmt, filename=filename, children=children)


def test_graph_summary() -> None:
    blkverify = node(
        "blkverify",
        raw=node("file", "a.img"),
        test=node("qcow2", "b.qcow2", file=node("file", "b.qcow2")),
    )
    assert graph_summary(blkverify) == "blkverify(raw: file a.img, test: qcow2 → file b.qcow2)"  # type: ignore[arg-type]
    top = node(
        "qcow2",
        "top.qcow2",
        file=node("file", "top.qcow2"),
        backing=node("qcow2", "base.qcow2", file=node("file", "base.qcow2")),
    )
    assert graph_summary(top) == (  # type: ignore[arg-type]
        "qcow2(file: file top.qcow2, backing: qcow2 → file base.qcow2)"
    )
    assert graph_summary(node("null-co")) == "null-co"  # type: ignore[arg-type]


def test_toolbar_text(image: Path) -> None:
    session = open_session(None)
    assert toolbar_text(session) == "no image open (open [-r] [-o options] FILE)"
    session = open_session(image)
    assert toolbar_text(session) == (
        f"{image} │ raw → file {image} │ 1 MiB │ read-write │ 0 mismatches"
    )
    assert toolbar_text(session, width=60) == (
        "a.img │ raw → file a.img │ 1 MiB │ read-write │ 0 mismatches"
    )
    session.mismatches.entries.append(Mismatch("read", 0, 512, 3))
    session.run_line("reopen -r")
    assert toolbar_text(session).endswith("│ read-only │ 1 mismatch")
    session.close_image()


def test_toolbar_is_shown_with_the_hint(image: Path) -> None:
    session = open_session(image)
    prompt = make_prompt_session(session, output=DummyOutput(), history_file=Path(os.devnull))
    prompt.default_buffer.reset(Document("read -v 0"))
    fragments = prompt.bottom_toolbar()  # type: ignore[operator, misc]
    text = "".join(t for _, t in fragments)
    # DummyOutput is 80 columns wide: too narrow for the full path
    assert text.startswith(" a.img │ raw → file a.img │ 1 MiB │ read-write │ 0 mismatches\n")
    assert text.endswith(
        "\n read [-abCqv] [-P pattern [-s off] [-l len]] off len -- "
        "reads a number of bytes at a specified offset"
    )
    session.close_image()


# -- Ctrl-C while a command runs -------------------------------------------------------------
class InterruptingRenderer(PlainRenderer):
    """Sends the process a real SIGINT after ``after`` chunks of a streamed request."""

    def __init__(self, console, after: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(console)
        self.after = after
        self.chunks = 0

    def progress(self, verb: str, total: int, enabled: bool = True) -> Progress:
        renderer = self

        class Interrupter(Progress):
            def update(self, done: int) -> None:
                renderer.chunks += 1
                if renderer.chunks == renderer.after:
                    os.kill(os.getpid(), signal.SIGINT)

        return Interrupter()


def interrupted_write(image: Path, driver: str, tmp_path: Path, total: int) -> Session:
    console = capture_console()
    session = open_session(image, driver, InterruptingRenderer(console, after=3), console)
    shell(session, f"write -P 0x55 0 {total}" + ENTER + "length" + ENTER + CTRL_D, tmp_path / "h")
    return session


def test_ctrl_c_cancels_a_long_write_at_a_chunk_boundary(tmp_path: Path) -> None:
    total = 16 * CHUNK
    image = raw_image(tmp_path / "big.img", total)
    session = interrupted_write(image, "raw", tmp_path, total)
    session.close_image()
    done = 3 * CHUNK
    out = out_text(session.r.console)
    assert out.startswith(f"wrote {done}/{total} bytes at offset 0\n12 MiB, 1 ops; ")
    assert out.endswith("\n64 MiB\n\n")  # back at the prompt: the next command ran
    assert err_text(session.r.console) == (
        f"qio: write interrupted after {done} of {total} bytes\n"
    )
    assert session.last_error == -errno.EINTR
    # the image holds exactly the completed chunks, and nothing else
    data = image.read_bytes()
    assert data[:done] == b"\x55" * done
    assert data[done:] == bytes(total - done)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(
    importlib.util.find_spec("qio.block.qcow2") is None, reason="qcow2 driver not present yet"
)
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_ctrl_c_leaves_a_consistent_qcow2(tmp_path: Path) -> None:
    total = 16 * CHUNK
    image = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(total)], check=True)
    session = interrupted_write(image, "qcow2", tmp_path, total)
    session.close_image()
    assert err_text(session.r.console).startswith("qio: write interrupted after ")
    check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    done = 3 * CHUNK
    compare = subprocess.run(
        [
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            f"read -q -P 0x55 0 {done}",
            "-c",
            f"read -q -P 0 {done} {total - done}",
            str(image),
        ],
        capture_output=True,
        text=True,
    )
    assert compare.returncode == 0 and compare.stdout == "", compare.stdout


def test_ctrl_c_cancels_a_long_read(tmp_path: Path) -> None:
    total = 16 * CHUNK
    image = raw_image(tmp_path / "big.img", total)
    console = capture_console()
    session = open_session(image, "raw", InterruptingRenderer(console, after=2), console)
    shell(session, f"read -P 0 0 {total}; length" + ENTER + CTRL_D, tmp_path / "h")
    out = out_text(console)
    # the rest of the line (length) is dropped after an interruption
    assert out.startswith(f"read {2 * CHUNK}/{total} bytes at offset 0\n")
    assert "\n64 MiB\n" not in out
    assert err_text(console) == f"qio: read interrupted after {2 * CHUNK} of {total} bytes\n"
    session.close_image()


def test_second_ctrl_c_interrupts_at_once(image: Path) -> None:
    session = open_session(image)
    with pytest.raises(KeyboardInterrupt), ctrl_c_cancels(session):
        os.kill(os.getpid(), signal.SIGINT)
        assert session.cancel.requested
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    session.close_image()
