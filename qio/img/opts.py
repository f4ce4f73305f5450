"""qemu-img's per-subcommand option parsing (getopt_long with a leading ':').

qemu-img 7.2 asks glibc for silent errors and reports them itself: ``missing argument for
option '-f'`` and ``unrecognized option '-Z'``, both followed by the --help hint (exit 1).
``-h``/``--help`` print the help text and exit 0.
"""

from __future__ import annotations

from qio.getopt import Getopt, GetoptError, LongOption
from qio.img.common import usage_error

HELP = LongOption("help", False, "h")


def _offending_word(args: list[str], message: str) -> str:
    """The argv word qemu-img names (argv[optind - 1]) for a getopt error."""
    if message.startswith("unrecognized option '"):
        return message[len("unrecognized option '") : -1]
    for prefix in ("option '--",):
        if message.startswith(prefix):
            name = message[len(prefix) :].split("'", 1)[0]
            for word in args:
                if word.startswith(f"--{name}"):
                    return word
            return f"--{name}"
    char = message.rsplit("'", 2)[-2] if "'" in message else ""
    for word in reversed(args[1:]):
        if word.startswith("-") and not word.startswith("--") and char in word[1:]:
            return word
    return f"-{char}"


def parse(
    args: list[str], shortopts: str, longopts: tuple[LongOption, ...] = ()
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """All (option, argument) pairs in order, and the operands.

    Raises the ImgError qemu-img exits with on a bad option.
    """
    g = Getopt(args, shortopts, (*longopts, HELP))
    options: list[tuple[str, str | None]] = []
    for item in g:
        if isinstance(item, GetoptError):
            word = _offending_word(args, item.message)
            if "requires an argument" in item.message:
                raise usage_error(f"missing argument for option '{word}'")
            if "ambiguous" in item.message or "doesn't allow" in item.message:
                raise usage_error(f"unrecognized option '{word}'")
            raise usage_error(f"unrecognized option '{word}'")
        if item[0] == "h":
            # qemu-img's help(): the help text, exit 0
            import sys

            from qio.img.main import _help

            sys.stdout.write(_help())
            raise SystemExit(0)
        options.append(item)
    return options, g.operands
