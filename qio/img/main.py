"""qio-img's entry point: qemu-img's top-level command line and subcommand dispatch."""

from __future__ import annotations

import importlib
import importlib.util
import sys

from qio.img.common import PROGRAM, ImgError, report, usage_error

# name -> module implementing ``run(argv) -> int``; imported only when used, so one
# subcommand's start-up does not pay for the others.
SUBCOMMANDS: dict[str, str] = {}


def register(name: str, module: str) -> None:
    SUBCOMMANDS[name] = module


for _name in ("create", "info", "map", "check", "compare", "convert", "snapshot", "resize",
              "rebase"):
    register(_name, f"qio.img.{_name}")


def _version() -> str:
    from qio import __version__

    return (
        f"{PROGRAM} version {__version__} (qio, mirroring qemu-img 7.2)\n"
        "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
    )


def help_text() -> str:
    names = ", ".join(sorted(_available()))
    return (
        f"{_version()}"
        f"usage: {PROGRAM} [standard options] command [command options]\n"
        "QEMU disk image utility, on qio's block layer\n"
        "\n"
        "    '-h', '--help'       display this help and exit\n"
        "    '-V', '--version'    output version information and exit\n"
        "\n"
        f"Command syntax is qemu-img's. Commands: {names}\n"
        "See docs/qio-img.md for each command's options.\n"
    )


def _available() -> list[str]:
    return [name for name, module in SUBCOMMANDS.items() if importlib.util.find_spec(module)]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(args)
    except ImgError as exc:
        return report(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    finally:
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass


def _main(args: list[str]) -> int:
    # qemu-img parses its global options with getopt "+:hVT:" before the command name.
    while args and args[0].startswith("-") and args[0] != "-":
        opt = args.pop(0)
        if opt in ("-h", "--help"):
            sys.stdout.write(help_text())
            return 0
        if opt in ("-V", "--version"):
            sys.stdout.write(_version())
            return 0
        if opt == "--":
            break
        if opt.startswith("-T"):
            # --trace / -T: accepted (QEMU's trace events) and ignored, as qio has no tracer
            if opt == "-T" and args:
                args.pop(0)
            continue
        raise usage_error(f"unrecognized option '{opt}'")
    if not args:
        raise usage_error("Not enough arguments")
    name = args[0]
    module_name = SUBCOMMANDS.get(name)
    if module_name is None or importlib.util.find_spec(module_name) is None:
        raise usage_error(f"Command not found: {name}")
    module = importlib.import_module(module_name)
    return int(module.run(args))
