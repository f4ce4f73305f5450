"""Shell completion: what TAB offers for partial commands, options, paths and values."""

from __future__ import annotations

from pathlib import Path

import pytest

from qio.block.registry import driver_names
from qio.shell.completion import BLKDEBUG_EVENTS, complete_words, locate
from qio.shell.lines import current_command, split_commands
from tests.shell_fixtures import open_session, raw_image


@pytest.fixture()
def session(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_session(raw_image(tmp_path / "a.img"))
    yield s
    s.close_image()


def test_command_names_and_aliases(session) -> None:  # type: ignore[no-untyped-def]
    assert complete_words(session, "re") == ["read", "readv", "remove_break", "reopen", "resume"]
    assert complete_words(session, "aio_") == ["aio_flush", "aio_read", "aio_write"]
    # aliases are offered too: "w" is write's alias
    assert complete_words(session, "w") == ["w", "wait_break", "write", "writev"]
    assert complete_words(session, "zz") == []


def test_completion_help_text(session) -> None:  # type: ignore[no-untyped-def]
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from qio.shell.completion import QioCompleter

    got = {
        c.text: c.display_meta_text
        for c in QioCompleter(session).get_completions(Document("read -"), CompleteEvent())
    }
    assert got["-P"] == "use a pattern to verify read data"
    assert got["-v"] == "dump buffer to standard output"
    got = {
        c.text: c.display_meta_text
        for c in QioCompleter(session).get_completions(Document("r"), CompleteEvent())
    }
    assert got["r"] == "read: reads a number of bytes at a specified offset"


def test_options_of_a_command(session) -> None:  # type: ignore[no-untyped-def]
    assert complete_words(session, "read -") == ["-b", "-C", "-l", "-p", "-P", "-q", "-s", "-v"]
    assert complete_words(session, "discard -") == ["-C", "-q"]
    # a cluster of flags grows by the letters not yet in it
    assert complete_words(session, "discard -C") == ["-Cq"]
    # after an option that takes an argument nothing can join the cluster
    assert complete_words(session, "read -P") == []
    assert complete_words(session, "length -") == []


def test_option_arguments(session) -> None:  # type: ignore[no-untyped-def]
    assert complete_words(session, "open -t w") == ["writeback", "writethrough"]
    assert complete_words(session, "reopen -c un") == ["unsafe"]
    assert complete_words(session, "open -d ") == ["ignore", "off", "unmap", "on"]
    assert complete_words(session, "open -i ") == ["threads", "native", "io_uring"]
    assert complete_words(session, "truncate -m f") == ["falloc", "full"]
    assert complete_words(session, "read -s 4") == ["4k", "4M", "4G", "4T"]


def test_block_option_keys_and_values(session) -> None:  # type: ignore[no-untyped-def]
    assert complete_words(session, "open -o dri") == ["driver="]
    assert complete_words(session, "open -o driver=q") == ["qcow2"]
    assert complete_words(session, "open -o driver=") == driver_names()
    # once the driver is named, its own keys are offered
    assert complete_words(session, "open -o driver=raw,of") == ["offset="]
    assert "read-zeroes=" in complete_words(session, "open -o driver=null-co,")
    assert complete_words(session, "open -o driver=raw,read-only=") == ["on", "off"]
    assert complete_words(session, "open -o file.driver=nu") == ["null-aio", "null-co"]
    # reopen: the open image's driver decides which keys apply
    assert complete_words(session, "reopen -o si") == ["size="]


def test_paths_for_open_and_write_source(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "disk-one.qcow2").touch()
    (tmp_path / "disk-two.raw").touch()
    (tmp_path / "other").mkdir()
    prefix = f"{tmp_path}/dis"
    assert sorted(complete_words(session, f"open {prefix}")) == ["k-one.qcow2", "k-two.raw"]
    assert complete_words(session, f"open -r {tmp_path}/oth") == ["er"]
    assert complete_words(session, f"write -s {prefix}k-t") == ["wo.raw"]
    # protocol prefixes, and file names inside blkverify:RAW:TEST
    assert "blkverify:" in complete_words(session, "open ")
    assert complete_words(session, f"open blkverify:a.img:{prefix}k-o") == ["ne.qcow2"]


def test_blkdebug_events_for_break(session) -> None:  # type: ignore[no-untyped-def]
    assert complete_words(session, "break l2_") == [
        e for e in BLKDEBUG_EVENTS if e.startswith("l2_")
    ]
    assert len(complete_words(session, "break ")) == 48
    assert complete_words(session, "break read_aio ") == []  # the tag is free text


def test_sizes_with_units(session) -> None:  # type: ignore[no-untyped-def]
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from qio.shell.completion import QioCompleter

    assert complete_words(session, "read 0 64") == ["64k", "64M", "64G", "64T"]
    assert complete_words(session, "write -P 1 1.5") == ["1.5k", "1.5M", "1.5G", "1.5T"]
    assert complete_words(session, "read 0x") == []
    assert complete_words(session, "sleep 10") == []  # milliseconds, not a size
    metas = {
        c.text: c.display_meta_text
        for c in QioCompleter(session).get_completions(Document("read 2"), CompleteEvent())
    }
    assert metas["2k"] == "2048 bytes"
    assert metas["2M"] == "2097152 bytes (past the end: the image is 1 MiB)"


def test_help_and_semicolons(session) -> None:  # type: ignore[no-untyped-def]
    assert complete_words(session, "help wr") == ["write", "writev"]
    assert complete_words(session, "length; rea") == ["read", "readv"]
    assert complete_words(session, "length;read -") == complete_words(session, "read -")


def test_locate_follows_getopt() -> None:
    pos = locate("read -P 0x42 -s 4")
    assert (pos.kind, pos.letter, pos.word) == ("optarg", "s", "4")
    pos = locate("read -vP")
    assert pos.kind == "option"
    pos = locate("read -P0x4")
    assert (pos.kind, pos.letter, pos.word) == ("optarg", "P", "0x4")
    pos = locate("read -v 0 1")
    assert (pos.kind, pos.index) == ("operand", 1)
    pos = locate("read -- -1")
    assert (pos.kind, pos.index) == ("operand", 0)
    assert locate("bogus x").kind == "unknown"


def test_split_commands() -> None:
    assert split_commands("length; info;;map") == ["length", " info", "map"]
    assert split_commands("open a\\;b.img") == ["open a;b.img"]
    assert split_commands("  ;  ") == []
    assert current_command("length; read -") == " read -"
    assert current_command("open a\\;b") == "open a\\;b"
