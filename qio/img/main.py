"""qio-img's entry point: qemu-img's top-level command line and subcommand dispatch."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import NoReturn

from qio.img.common import PROGRAM, ImgError, report, usage_error

# name -> module implementing ``run(argv) -> int``; imported only when used, so one
# subcommand's start-up does not pay for the others.
SUBCOMMANDS: dict[str, str] = {}


def register(name: str, module: str) -> None:
    SUBCOMMANDS[name] = module


for _name in (
    "create",
    "info",
    "map",
    "check",
    "compare",
    "convert",
    "snapshot",
    "resize",
    "rebase",
):
    register(_name, f"qio.img.{_name}")


def _version() -> str:
    from qio import __version__

    return (
        f"{PROGRAM} version {__version__} (qio, mirroring qemu-img 7.2)\n"
        "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
    )


# qemu-img 7.2's "Command syntax" lines (qemu-img-cmds.hx), for the commands qio-img has.
USAGE: dict[str, str] = {
    "check": "check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] "
    "[-r [leaks | all]] [-T src_cache] [-U] filename",
    "compare": "compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] "
    "[-p] [-q] [-s] [-U] filename1 filename2",
    "convert": "convert [--object objectdef] [--image-opts] [--target-image-opts] "
    "[--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] "
    "[-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] "
    "[-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] "
    "[--salvage] filename [filename2 [...]] output_filename",
    "create": "create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] "
    "[-u] [-o options] filename [size]",
    "info": "info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] "
    "[--backing-chain] [-U] filename",
    "map": "map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] "
    "[--max-length=len] [--output=ofmt] [-U] filename",
    "snapshot": "snapshot [--object objectdef] [--image-opts] [-U] [-q] "
    "[-l | -a snapshot | -c snapshot | -d snapshot] filename",
    "rebase": "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] "
    "[-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename",
    "resize": "resize [--object objectdef] [--image-opts] [-f fmt] "
    "[--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size",
}

_PARAMETERS = """\
Command parameters:
  'filename' is a disk image filename
  'fmt' is the disk image format. It is guessed automatically in most cases
  'cache' is the cache mode used to write the output disk image, the valid
    options are: 'none', 'writeback' (default, except for convert), 'writethrough',
    'directsync' and 'unsafe' (default for convert)
  'src_cache' is the cache mode used to read input disk images, the valid
    options are the same as for the 'cache' option
  'size' is the disk image size in bytes. Optional suffixes
    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),
    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are
    supported. 'b' is ignored.
  'output_filename' is the destination disk image filename
  'output_fmt' is the destination format
  'options' is a comma separated list of format specific options in a
    name=value format. Use -o help for an overview of the options supported by
    the used format
  'snapshot_param' is param used for internal snapshot, format
    is 'snapshot.id=[ID],snapshot.name=[NAME]', or
    '[ID_OR_NAME]'
  '-c' indicates that target image must be compressed (qcow format only)
  '-u' allows unsafe backing chains. For rebasing, it is assumed that old and
       new backing file match exactly. The image doesn't need a working
       backing file before rebasing in this case (useful for renaming the
       backing file). For image creation, allow creating without attempting
       to open the backing file.
  '-h' with or without a command shows this help and lists the supported formats
  '-p' show progress of command (only certain commands)
  '-q' use Quiet mode - do not print any output (except errors)
  '-S' indicates the consecutive number of bytes (defaults to 4k) that must
       contain only zeros for qemu-img to create a sparse image during
       conversion. If the number of bytes is 0, the source will not be scanned for
       unallocated or zero sectors, and the destination image will always be
       fully allocated
  '--output' takes the format in which the output must be done (human or json)
  '-n' skips the target volume creation (useful if the volume is created
       prior to running qemu-img)
"""

# Per-command parameter sections, shown when the command is there.
_COMMAND_PARAMETERS: dict[str, str] = {
    "check": """\
Parameters to check subcommand:
  '-r' tries to repair any inconsistencies that are found during the check.
       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all
       kinds of errors, with a higher risk of choosing the wrong fix or
       hiding corruption that has already occurred.
""",
    "convert": """\
Parameters to convert subcommand:
  '--bitmaps' copies all top-level persistent bitmaps to destination
  '-m' specifies how many coroutines work in parallel during the convert
       process (defaults to 8)
  '-W' allow to write to the target out of order rather than sequential
""",
    "snapshot": """\
Parameters to snapshot subcommand:
  'snapshot' is the name of the snapshot to create, apply or delete
  '-a' applies a snapshot (revert disk to saved state)
  '-c' creates a snapshot
  '-d' deletes a snapshot
  '-l' lists all snapshots in the given image
""",
    "compare": """\
Parameters to compare subcommand:
  '-f' first image format
  '-F' second image format
  '-s' run in Strict mode - fail on different image size or sector allocation
""",
}


def help_text() -> str:
    """qemu-img's help(): its text, limited to the commands qio-img has, and qio's formats."""
    from qio.block import registry

    available = _available()
    # qio has no user-creatable objects (no --object), so the syntax lines leave it out
    syntax = "".join(
        f"  {USAGE[name].replace(' [--object objectdef]', '')}\n"
        for name in USAGE
        if name in available
    )
    syntax += "".join(
        f"  {name}\n" for name in available if name not in USAGE
    )  # a command without a registered syntax line still shows up
    sections = "".join(
        f"\n{text}" for name, text in _COMMAND_PARAMETERS.items() if name in available
    )
    formats = " ".join(sorted(registry.driver_names()))
    return (
        f"{_version()}"
        f"usage: {PROGRAM} [standard options] command [command options]\n"
        "QEMU disk image utility (qio: qemu-img 7.2's commands on qio's block layer)\n"
        "\n"
        "    '-h', '--help'       display this help and exit\n"
        "    '-V', '--version'    output version information and exit\n"
        "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
        "                         specify tracing options (checked; qio has no trace events)\n"
        "\n"
        "Command syntax:\n"
        f"{syntax}"
        "\n"
        f"{_PARAMETERS}"
        f"{sections}"
        "\n"
        f"Supported formats: {formats}\n"
        "\n"
        "See docs/qio-img.md for the qio-img user guide.\n"
    )


def _global_option(c: str) -> int:
    sys.stdout.write(help_text() if c == "h" else _version())
    return 0


class _TraceFailed(Exception):
    """A -T problem, already reported (its messages carry their own location prefix)."""


def _trace_failure(exc: Exception) -> NoReturn:
    for line in getattr(exc, "warnings", []):
        sys.stderr.write(f"{PROGRAM}{line}\n")
    sys.stderr.write(f"{PROGRAM}{getattr(exc, 'message', exc)}\n")
    raise _TraceFailed from None


def _trace(text: str, log: str | None) -> str | None:
    """-T/--trace: checked and warned about as QEMU does; qio has no trace events."""
    from qio.trace_option import TraceOptionError, parse_trace_option

    try:
        request = parse_trace_option(text)
    except TraceOptionError as exc:
        _trace_failure(exc)
    for line in request.warnings:
        sys.stderr.write(f"{PROGRAM}{line}\n")
    return request.log_file if request.log_file is not None else log


def _available() -> list[str]:
    return [name for name, module in SUBCOMMANDS.items() if importlib.util.find_spec(module)]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(args)
    except ImgError as exc:
        return report(exc)
    except _TraceFailed:
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    finally:
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass


_GLOBAL_LONGOPTS = ("help", "version", "trace")


def _main(args: list[str]) -> int:
    # qemu-img parses its global options with getopt_long "+:hVT:" (help, version, trace)
    # and stops at the command name.
    if not args:
        raise usage_error("Not enough arguments")
    trace_log: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            matches = [o for o in _GLOBAL_LONGOPTS if o.startswith(name)]
            if not matches:
                raise usage_error(f"unrecognized option '{arg}'")
            option = matches[0]
            if option != "trace":
                if eq:
                    raise usage_error(f"unrecognized option '{arg}'")
                return _global_option(option[0].replace("v", "V"))
            if not eq:
                if i >= len(args):
                    raise usage_error(f"missing argument for option '{arg}'")
                value = args[i]
                i += 1
            trace_log = _trace(value, trace_log)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c in "hV":
                return _global_option(c)
            if c != "T":
                # glibc names the whole word only once it has read its last character
                shown = arg if j == len(arg) else args[i - 2] if i >= 2 else PROGRAM
                raise usage_error(f"unrecognized option '{shown}'")
            if j < len(arg):
                value = arg[j:]
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise usage_error(f"missing argument for option '{arg}'")
            trace_log = _trace(value, trace_log)
            break
    args = args[i:]
    if not args:
        return 0  # only options: qemu-img ends quietly
    if trace_log is not None:
        from qio.trace_option import TraceOptionError, open_log_file

        try:
            open_log_file(trace_log)
        except TraceOptionError as exc:
            _trace_failure(exc)
    name = args[0]
    module_name = SUBCOMMANDS.get(name)
    if module_name is None or importlib.util.find_spec(module_name) is None:
        raise usage_error(f"Command not found: {name}")
    module = importlib.import_module(module_name)
    return int(module.run(args))
