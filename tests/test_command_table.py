"""The command table against qemu-io 7.2: every command and alias, and every help text."""

from __future__ import annotations

import subprocess

import pytest

from qio.commands import table
from tests.capture import run_commands
from tests.differential import ORACLE_ARGV, tool_env

# qemu-io 7.2's commands and their aliases.
QEMU_IO_COMMANDS = {
    "abort": None,
    "aio_flush": None,
    "aio_read": None,
    "aio_write": None,
    "alloc": "a",
    "break": None,
    "close": "c",
    "discard": "d",
    "flush": "f",
    "help": "?",
    "info": "i",
    "length": "l",
    "map": None,
    "open": "o",
    "quit": "q",
    "read": "r",
    "readv": None,
    "remove_break": None,
    "reopen": None,
    "resume": None,
    "sigraise": None,
    "sleep": None,
    "truncate": "t",
    "wait_break": None,
    "write": "w",
    "writev": None,
}
NAMES = sorted(QEMU_IO_COMMANDS) + sorted(a for a in QEMU_IO_COMMANDS.values() if a)


def test_every_qemu_io_command_is_in_the_table() -> None:
    for name, alias in QEMU_IO_COMMANDS.items():
        cmd = table.find(name)
        assert cmd is not None and cmd.name == name, name
        assert cmd.altname == alias, name
        assert not cmd.qio_only, name


def test_qio_only_commands_are_marked_and_do_not_shadow_aliases() -> None:
    for cmd in table.all_commands():
        if cmd.name not in QEMU_IO_COMMANDS:
            assert cmd.qio_only, f"{cmd.name} is not a qemu-io command: mark it qio_only"
        if cmd.altname is not None:
            assert table.find(cmd.altname) is cmd


def test_help_list_is_sorted_and_ends_with_the_hint() -> None:
    out, err, status = run_commands("help")
    lines = out.split("\n")
    names = [line.split(" ", 1)[0] for line in lines if " -- " in line]
    assert names == sorted(names)
    assert out.endswith("\n\nUse 'help commandname' for extended help.\n")
    assert (err, status) == ("", 0)


def qemu_io_help(name: str) -> str:
    result = subprocess.run(
        [*ORACLE_ARGV, "-c", f"help {name}"], capture_output=True, env=tool_env(), check=False
    )
    assert result.returncode == 0 and not result.stderr
    return result.stdout.decode()


@pytest.mark.oracle
def test_help_list_matches_qemu_io() -> None:
    ours = run_commands("help")[0].split("\n")
    theirs = qemu_io_help("").split("\n")  # "help " is the list
    assert [
        line for line in ours if line.split(" ", 1)[0] in QEMU_IO_COMMANDS or " -- " not in line
    ] == theirs


@pytest.mark.oracle
@pytest.mark.parametrize("name", NAMES)
def test_help_text_matches_qemu_io(name: str) -> None:
    out, err, status = run_commands(f"help {name}")
    assert out == qemu_io_help(name)
    assert (err, status) == ("", 0)
