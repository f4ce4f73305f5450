"""Option parsing for the subcommands that may be asked for help mid-line.

Same as :func:`qio.img.common.parse_command_line` (qemu-img's ``:`` error handling, naming
``argv[optind - 1]``), except that ``-h``/``--help`` prints the help text and exits 0 as soon
as getopt reaches it, as qemu-img's ``case 'h': help();`` does.
"""

from __future__ import annotations

import sys

from qio.getopt import Getopt, GetoptError, LongOption
from qio.img.common import usage_error

HELP = LongOption("help", False, "h")


def parse(
    args: list[str], shortopts: str, longopts: tuple[LongOption, ...] = ()
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """All (option, argument) pairs in order, and the operands."""
    g = Getopt(args, shortopts, (*longopts, HELP))
    options: list[tuple[str, str | None]] = []
    for item in g:
        if isinstance(item, GetoptError):
            if "requires an argument" in item.message:
                raise usage_error(f"missing argument for option '{item.arg}'")
            raise usage_error(f"unrecognized option '{item.arg}'")
        if item[0] == "h":
            from qio.img.main import help_text

            sys.stdout.write(help_text())
            raise SystemExit(0)
        options.append(item)
    return options, g.operands
