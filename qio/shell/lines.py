"""Splitting a shell line into commands.

qemu-io gives ``;`` no meaning: it is an ordinary character of a word, so ``length;`` is an
unknown command there and ``read 0 512;read 0 512`` a parse error.  The shell can therefore
use it to separate commands on one line without changing what any valid qemu-io command
means.  ``\\;`` stands for a literal semicolon (a file name containing one).
"""

from __future__ import annotations


def split_commands(line: str) -> list[str]:
    """The commands of one shell line, in order; blank ones dropped (they do nothing)."""
    commands: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and line.startswith(";", i + 1):
            current.append(";")
            i += 2
            continue
        if ch == ";":
            commands.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    commands.append("".join(current))
    return [c for c in commands if c.strip(" ")]


def current_command(text_before_cursor: str) -> str:
    """The part of the line the cursor is in (after the last unescaped ``;``)."""
    i = len(text_before_cursor)
    while i > 0:
        i -= 1
        if text_before_cursor[i] == ";" and (i == 0 or text_before_cursor[i - 1] != "\\"):
            return text_before_cursor[i + 1 :]
    return text_before_cursor
