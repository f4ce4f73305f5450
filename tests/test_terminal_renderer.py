"""The terminal renderer at a fixed width and colour system, and the plain one unchanged."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qio.commands import table
from qio.output import Console
from qio.render.colordump import ColorDump
from qio.render.hexdump import hexdump
from qio.render.plain import PlainRenderer
from qio.render.terminal import TerminalRenderer, map_bar_kinds
from qio.results import InfoResult, MapRun, Mismatch, PatternMismatch, TransferReport
from tests.capture import capture_console, err_text, out_text, qio_env, strip_ansi

DIM, GREEN, CYAN, RESET = "\x1b[2m", "\x1b[32m", "\x1b[36m", "\x1b[0m"
WRONG, EXPECTED, BOLD = "\x1b[1;37;41m", "\x1b[1;32m", "\x1b[1m"


def terminal(width: int = 80, **kw: object) -> tuple[TerminalRenderer, Console]:
    console = capture_console(err_tty=bool(kw.pop("err_tty", False)))
    return TerminalRenderer(console, width=width, color_system="standard", **kw), console  # type: ignore[arg-type]


# -- hexdump ---------------------------------------------------------------------------------
def test_hexdump_colours_golden() -> None:
    r, console = terminal()
    r.hexdump(0x10, b"Az\x00 \xff")
    assert out_text(console) == (
        f"{DIM}00000010:{RESET}  {GREEN}41{RESET} {GREEN}7a{RESET} {DIM}00{RESET} "
        f"{CYAN}20{RESET} ff  {GREEN}A{RESET}{GREEN}z{RESET}{DIM}.{RESET}{CYAN}.{RESET}.\n"
    )


def test_zero_rows_use_one_span() -> None:
    r, console = terminal()
    r.hexdump(0, bytes(16))
    assert out_text(console) == (
        f"{DIM}00000000:{RESET}  {DIM}{'00 ' * 16}{RESET} {DIM}{'.' * 16}{RESET}\n"
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 1 << 40))
def test_colour_dump_has_qemu_columns(data: bytes, offset: int) -> None:
    """Without its escape codes the coloured dump is qemu-io's dump, character for character."""
    r, console = terminal()
    r.hexdump(offset, data)
    assert strip_ansi(out_text(console)) == hexdump(data, offset)


def test_identical_lines_are_not_collapsed_by_default() -> None:
    r, console = terminal(collapse=False)
    r.hexdump(0, b"\x55" * 64)
    assert strip_ansi(out_text(console)) == hexdump(b"\x55" * 64, 0)


def test_collapse_mode_across_pieces() -> None:
    r, console = terminal(collapse=True)
    data = b"A" * 16 + b"\x55" * 160 + b"B" * 16 + b"\x55" * 32 + b"tail"
    # a dump arrives in pieces (256 KiB each in real use): a run continues across them
    r.hexdump(0, data[:64])
    r.hexdump(64, data[64:])
    r.transfer(TransferReport("read", 0, len(data), len(data), 0.5, False))
    lines = strip_ansi(out_text(console)).splitlines()
    assert lines[:8] == [
        "00000000:  " + "41 " * 16 + " " + "A" * 16,
        "00000010:  " + "55 " * 16 + " " + "U" * 16,
        "*  (8 identical lines)",
        "000000a0:  " + "55 " * 16 + " " + "U" * 16,
        "000000b0:  " + "42 " * 16 + " " + "B" * 16,
        "000000c0:  " + "55 " * 16 + " " + "U" * 16,
        "000000d0:  " + "55 " * 16 + " " + "U" * 16,
        "000000e0:  74 61 69 6c  tail",
    ]
    assert lines[8].startswith("read 228/228 bytes at offset 0")


def test_collapse_run_at_the_end_shows_its_last_row() -> None:
    dump = ColorDump(lambda style: ("", ""), collapse=True)
    text = dump.dump(bytes(64), 0x1000) + dump.finish()
    assert text.splitlines() == [
        "00001000:  " + "00 " * 16 + " " + "." * 16,
        "*  (2 identical lines)",
        "00001030:  " + "00 " * 16 + " " + "." * 16,
    ]


def test_collapse_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QIO_DUMP_COLLAPSE", "1")
    assert terminal()[0].dumper.collapse
    monkeypatch.setenv("QIO_DUMP_COLLAPSE", "0")
    assert not terminal()[0].dumper.collapse


# -- pattern mismatch ------------------------------------------------------------------------
def test_pattern_mismatch_window_golden() -> None:
    r, console = terminal()
    window = b"\xab" * 17 + b"\xcd\xcd" + b"\xab" * 13
    r.pattern_mismatch(PatternMismatch(512, 64, 0xAB, 529, window, 512))
    assert out_text(console) == (
        "Pattern verification failed at offset 512, 64 bytes\n"
        f"  first wrong byte at offset {BOLD}529 (0x211){RESET}: {WRONG}cd{RESET}, "
        f"expected {EXPECTED}ab{RESET}\n"
        f"  {DIM}00000200:{RESET}  " + "ab " * 16 + " " + "." * 16 + "\n"
        f"  {DIM}00000210:{RESET}  ab {WRONG}cd{RESET} {WRONG}cd{RESET} " + "ab " * 13 + " "
        f".{WRONG}.{RESET}{WRONG}.{RESET}" + "." * 13 + "\n"
        f"                {WRONG}^^{RESET} expected {EXPECTED}ab{RESET}\n"
    )


def test_pattern_mismatch_outside_the_checked_range_is_not_wrong() -> None:
    r, console = terminal()
    # read -P 0x11 -s 4 -l 8: bytes before offset 4 are not checked
    window = b"\x00" * 4 + b"\x11" * 3 + b"\x22" + b"\x11" * 4
    r.pattern_mismatch(PatternMismatch(4, 8, 0x11, 7, window, 0))
    row = out_text(console).splitlines()[2]
    assert row.count(WRONG) == 2  # the one wrong byte: its hex cell and its character
    assert f"{WRONG}22{RESET}" in row


def test_pattern_mismatch_without_window_is_plain() -> None:
    r, console = terminal()
    r.pattern_mismatch(PatternMismatch(0, 512, 0x42))
    assert out_text(console) == "Pattern verification failed at offset 0, 512 bytes\n"


# -- blkverify mismatch ----------------------------------------------------------------------
def test_blkverify_mismatch_side_by_side() -> None:
    r, console = terminal(width=120)
    raw = b"\x11" * 32
    test = b"\x11" * 8 + b"\x00\x01" + b"\x11" * 22
    r.mismatch(Mismatch("read", 6144, 4096, 8200, 0, 0, raw, test, 8192), fatal=True)
    assert out_text(console) == ""
    lines = strip_ansi(err_text(console)).splitlines()
    assert lines[0] == "blkverify: read offset=6144 bytes=4096 contents mismatch at offset 8200"
    assert lines[1] == (
        "blkverify read mismatch: first difference at offset 8200 (0x2008), sector 16"
        "  (request at 6144, 4096 bytes)"
    )
    assert lines[2].split() == ["offset", "raw", "(reference)", "test", "(image", "under", "test)"]
    assert lines[3].split() == ["00002000:"] + ["11"] * 24 + ["00", "01"] + ["11"] * 6
    assert lines[4].split() == ["00002010:"] + ["11"] * 32
    # the differing bytes are highlighted on both sides
    row = err_text(console).splitlines()[3]
    assert row.count("\x1b[1;30;42m11") == 2 and row.count(f"{WRONG}0") == 2


def test_blkverify_mismatch_narrow_terminal_uses_eight_byte_rows() -> None:
    r, console = terminal(width=80)
    r.mismatch(
        Mismatch("read", 0, 512, 3, 0, 0, b"\x00" * 16, b"\x00" * 3 + b"\x01" + b"\x00" * 12, 0),
        fatal=False,
    )
    lines = strip_ansi(out_text(console)).splitlines()
    assert lines[0] == "blkverify: read offset=0 bytes=512 contents mismatch at offset 3 (sector 0)"
    rows = [line.split() for line in lines if line.startswith("0000")]
    assert rows == [
        ["00000000:"] + ["00"] * 8 + ["00"] * 3 + ["01"] + ["00"] * 4,
        ["00000008:"] + ["00"] * 16,
    ]


def test_blkverify_return_value_mismatch() -> None:
    r, console = terminal(width=100)
    r.mismatch(Mismatch("write", 0, 512, None, 0, -5), fatal=True)
    text = strip_ansi(err_text(console))
    assert text.startswith("blkverify: write offset=0 bytes=512 return value mismatch 0 != -5\n")
    assert "test returned 0 (success), raw returned -5 (Input/output error)" in text


# -- map, info, help -------------------------------------------------------------------------
def test_map_table_and_bar_golden() -> None:
    r, console = terminal(width=60)
    r.map([MapRun(0, 1 << 20, True), MapRun(1 << 20, 3 << 20, False)])
    assert strip_ansi(out_text(console)) == (
        "            offset              length    status           \n"
        "     0 bytes (0x0)    1 MiB (0x100000)    █ allocated      \n"
        "  1 MiB (0x100000)    3 MiB (0x300000)    ░ not allocated  \n"
        "\n" + "█" * 15 + "░" * 43 + "\n"
        "█ allocated  ░ not allocated\n"
    )
    assert f"{GREEN}{'█' * 15}{RESET}{DIM}{'░' * 43}{RESET}" in out_text(console)


def test_map_bar_keeps_small_allocations_visible() -> None:
    runs = [
        MapRun(0, 100 << 20, False),
        MapRun(100 << 20, 4096, True),
        MapRun((100 << 20) + 4096, 4096, True, zero=True),
        MapRun((100 << 20) + 8192, (300 << 20) - 8192, False, depth=2),
    ]
    kinds = map_bar_kinds(runs, 40)
    assert kinds[:10] == ["unallocated"] * 10
    assert kinds[10] == "data"  # 4 KiB of data in a 10 MiB cell still shows
    assert kinds[11:] == ["backing"] * 29
    zero_then_hole = [MapRun(0, 4096, True, zero=True), MapRun(4096, 1 << 20, False)]
    assert map_bar_kinds(zero_then_hole, 4) == ["zero"] + ["unallocated"] * 3
    assert map_bar_kinds([], 10) == []


def test_info_panel_golden() -> None:
    r, console = terminal(width=60)
    r.info(InfoResult(["qcow2"], 65536, 1 << 30, [("compat", "1.1"), ("lazy-refcounts", False)]))
    assert strip_ansi(out_text(console)) == (
        "╭─ info ───────────────────────╮\n"
        "│ format name      qcow2       │\n"
        "│ cluster size     64 KiB      │\n"
        "│ vm state offset  1 GiB       │\n"
        "│ Format specific information: │\n"
        "│     compat: 1.1              │\n"
        "│     lazy refcounts: false    │\n"
        "╰──────────────────────────────╯\n"
    )


def words(text: str) -> list[str]:
    return re.findall(r"[^\s│╭╮╰╯─]+", text)


def test_help_says_what_qemu_io_says() -> None:
    """Laid out in columns and coloured, but the same words in the same order."""
    commands = table.all_commands()
    plain, plain_console = PlainRenderer(capture_console()), None
    plain_console = plain.console
    plain.help_list(commands)
    r, console = terminal(width=200)
    r.help_list(commands)
    # the terminal view adds each command's alias after its name (dim)
    expected = []
    for c in commands:
        expected += [c.name] + ([c.altname] if c.altname else []) + words(c.args or "")
        expected += ["--"] + c.oneline.split()
    expected += "Use 'help commandname' for extended help.".split()
    assert words(strip_ansi(out_text(console))) == expected
    assert out_text(plain_console).endswith("\n\nUse 'help commandname' for extended help.\n")


@pytest.mark.parametrize("name", ["read", "open", "f", "map"])
def test_help_command_same_words(name: str) -> None:
    cmd = table.find(name)
    assert cmd is not None
    plain = PlainRenderer(capture_console())
    plain.help_command(cmd, name)
    r, console = terminal(width=120)
    r.help_command(cmd, name)
    assert words(strip_ansi(out_text(console))) == words(out_text(plain.console))


# -- progress --------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_appears_after_half_a_second_and_is_erased() -> None:
    clock = Clock()
    r, console = terminal(width=80, err_tty=True, clock=clock)
    with r.progress("write", 100 << 20) as p:
        clock.now += 0.3
        p.update(10 << 20)
        assert err_text(console) == ""  # short requests never show a bar
        clock.now += 0.5
        p.update(40 << 20)
        line = err_text(console)
        assert line.startswith("\r") and line.endswith("\x1b[K")
        assert strip_ansi(line).startswith("\rwrite ")
        assert "40%  40 MiB of 100 MiB  50 MiB/s" in strip_ansi(line)
        clock.now += 0.01
        p.update(41 << 20)  # redraws are rate-limited
        assert err_text(console) == line
    assert err_text(console) == line + "\r\x1b[K"


def test_progress_is_erased_before_other_output() -> None:
    clock = Clock()
    r, console = terminal(width=80, err_tty=True, clock=clock)
    p = r.progress("read", 100)
    clock.now += 1
    p.update(50)
    r.error("qio: warning: something")
    assert err_text(console).endswith("\r\x1b[Kqio: warning: something\n")
    p.close()
    assert err_text(console).endswith("something\n")  # nothing left to erase


def test_no_progress_when_stderr_is_not_a_terminal() -> None:
    clock = Clock()
    r, console = terminal(width=80, err_tty=False, clock=clock)
    with r.progress("write", 100) as p:
        clock.now += 5
        p.update(50)
    assert err_text(console) == ""


# -- the command line picks the renderer -----------------------------------------------------
@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "t.img"
    path.write_bytes(b"Hello" + bytes(65536 - 5))
    return path


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "qio", *args], capture_output=True, env=qio_env(**env), timeout=60
    )


def test_piped_output_is_plain_unless_forced(image: Path) -> None:
    args = ["-f", "raw", "-c", "read -v 0 16", str(image)]
    plain = run(args).stdout
    assert b"\x1b" not in plain
    assert plain.startswith(b"00000000:  48 65 6c 6c 6f 00")
    forced = run(["--color=always", *args]).stdout
    assert b"\x1b[" in forced
    assert strip_ansi(forced.decode()).splitlines()[0] == plain.decode().splitlines()[0]
    # NO_COLOR does not matter for a pipe; --color=never is plain
    assert b"\x1b" not in run(["--color=never", *args]).stdout
    bad = run(["--color=sometimes", *args])
    assert bad.returncode == 1 and bad.stderr == b"qio: Invalid color option: sometimes\n"


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-io not installed")
@pytest.mark.parametrize(
    "commands",
    [
        ["help"],
        ["help read", "help r", "help open", "help nosuch"],
        ["map", "info", "length"],
        ["read -v 0 40", "read -P 0x48 0 512", "write -P 1 512 512", "read -v 500 30"],
    ],
)
def test_plain_output_is_qemu_io_byte_for_byte(
    commands: list[str], image: Path, tmp_path: Path
) -> None:
    """The plain renderer after the refactoring for the terminal views: still qemu-io's bytes."""
    copy = tmp_path / "copy.img"
    copy.write_bytes(image.read_bytes())
    args = [a for c in commands for a in ("-c", c)]
    ours = run(["-f", "raw", *args, str(image)])
    theirs = subprocess.run(
        ["qemu-io", "-f", "raw", *args, str(copy)], capture_output=True, timeout=60
    )
    mask = re.compile(rb"\d\d\.\d\d sec \([^)]*\)")
    assert mask.sub(b"T", ours.stdout) == mask.sub(b"T", theirs.stdout)
    assert ours.stderr.replace(b"qio:", b"P:") == theirs.stderr.replace(b"qemu-io:", b"P:")
    assert ours.returncode == theirs.returncode
    assert image.read_bytes() == copy.read_bytes()


def test_terminal_views_are_used_on_a_terminal(image: Path) -> None:
    """stdout on a pseudo-terminal: the rich renderer is chosen (and NO_COLOR turns it off)."""
    import pty

    def on_tty(**env: str) -> bytes:
        leader, follower = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "qio", "-f", "raw", "-c", "read -v 0 16", str(image)],
                stdout=follower,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=qio_env(**env),
            )
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            proc.wait(timeout=60)
            return b"".join(chunks)
        finally:
            os.close(leader)

    coloured = on_tty(TERM="xterm-256color")
    assert b"\x1b[2m00000000:" in coloured
    assert b"\x1b" not in on_tty(TERM="xterm-256color", NO_COLOR="1")
