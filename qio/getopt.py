"""GNU ``getopt_long`` semantics, as qemu-io gets them from glibc.

qemu-io parses both its own command line and the words of every command with glibc's getopt:
options may follow operands (argument permutation), ``--`` ends the options, ``-512`` is an
option cluster, and errors are reported with glibc's exact wording.  A command stops at the
first bad option, so the parser is an iterator: the caller acts on each option as it comes (a
bad ``-P`` value ends the command before later options are even looked at).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LongOption:
    name: str
    has_arg: bool
    key: str  # what the caller sees (a short option letter or a long name)
    # qio's own addition: matched only when spelled out or when no qemu-io option matches
    # the abbreviation, so abbreviations and ambiguity messages stay exactly qemu-io's.
    extension: bool = False


@dataclass
class GetoptError:
    message: str  # glibc's text without the program-name prefix
    # argv[optind - 1] when glibc returns the error (qemu-img names the option with it)
    arg: str = field(default="", compare=False)


@dataclass
class Getopt:
    """One pass of getopt over ``args`` (``args[0]`` is the program or command name)."""

    args: list[str]
    shortopts: str
    longopts: tuple[LongOption, ...] = ()
    operands: list[str] = field(default_factory=list)
    # The word being parsed when an error was yielded (argv[optind - 1] in C): qemu-img
    # reports that word instead of glibc's message.
    word: str = ""

    def __iter__(self) -> Iterator[tuple[str, str | None] | GetoptError]:
        """Yield (option, argument) pairs, or a GetoptError where glibc returns '?'.

        After the iteration ends normally ``operands`` holds the non-option words in order.
        """
        args = self.args
        i = 1
        n = len(args)
        while i < n:
            arg = args[i]
            if arg == "--":
                self.operands.extend(args[i + 1 :])
                return
            if not arg.startswith("-") or arg == "-":
                self.operands.append(arg)
                i += 1
                continue
            self.word = arg
            if arg.startswith("--") and self.longopts:
                i, item = self._long(arg, i)
                yield item
                if isinstance(item, GetoptError):
                    return
                continue
            # A cluster of short options: "-qv", "-P0x11", "-512".
            j = 1
            i += 1
            while j < len(arg):
                c = arg[j]
                j += 1
                pos = self.shortopts.find(c)
                if c == ":" or pos < 0:
                    # glibc moves optind past the cluster only after its last character
                    last = arg if j == len(arg) else args[i - 2]
                    yield GetoptError(f"invalid option -- '{c}'", last)
                    return
                if pos + 1 < len(self.shortopts) and self.shortopts[pos + 1] == ":":
                    if j < len(arg):
                        yield (c, arg[j:])
                    elif i < n:
                        yield (c, args[i])
                        i += 1
                    else:
                        yield GetoptError(f"option requires an argument -- '{c}'", arg)
                        return
                    break
                yield (c, None)

    def _long(self, arg: str, i: int) -> tuple[int, tuple[str, str | None] | GetoptError]:
        body = arg[2:]
        name, eq, value = body.partition("=")
        exact = [o for o in self.longopts if o.name == name]
        if exact:
            opt = exact[0]
        else:
            matches = [o for o in self.longopts if o.name.startswith(name) and not o.extension]
            if not matches:
                matches = [o for o in self.longopts if o.name.startswith(name)]
            distinct = {(o.key, o.has_arg) for o in matches}
            if not matches:
                return i + 1, GetoptError(f"unrecognized option '{arg}'", arg)
            if len(distinct) > 1:
                names = " ".join(f"'--{o.name}'" for o in matches)
                return i + 1, GetoptError(
                    f"option '--{name}' is ambiguous; possibilities: {names}", arg
                )
            opt = matches[0]
        if opt.has_arg:
            if eq:
                return i + 1, (opt.key, value)
            if i + 1 < len(self.args):
                return i + 2, (opt.key, self.args[i + 1])
            return i + 1, GetoptError(f"option '--{opt.name}' requires an argument", arg)
        if eq:
            return i + 1, GetoptError(f"option '--{opt.name}' doesn't allow an argument", arg)
        return i + 1, (opt.key, None)


def parse_all(
    args: list[str],
    shortopts: str,
    on_error: Callable[[str], None],
    longopts: tuple[LongOption, ...] = (),
) -> tuple[list[tuple[str, str | None]], list[str]] | None:
    """Collect every option, or report the first error and return None."""
    g = Getopt(args, shortopts, longopts)
    options: list[tuple[str, str | None]] = []
    for item in g:
        if isinstance(item, GetoptError):
            on_error(item.message)
            return None
        options.append(item)
    return options, g.operands
