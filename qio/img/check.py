"""``qio-img check``: qemu-img 7.2's consistency check and repair of an image.

    check [--object OBJ] [--image-opts] [-q] [-f FMT] [--output=human|json] [-r leaks|all]
          [-T CACHE] [-U] FILE

Per-cluster findings go to stderr as the check runs; the summary (human text or QEMU's JSON)
goes to stdout.  Exit status: 0 clean, 1 check failed (or bad usage, or open failure),
2 corruptions, 3 leaks only, 63 the format has no check (raw).
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass

from qio.block.qcow2.check import FIX_ERRORS, FIX_LEAKS, CheckResult
from qio.getopt import Getopt, GetoptError, LongOption
from qio.img.common import ImgError, OpenSpec, error, open_image, usage_error

LONG_OPTIONS = (
    LongOption("help", False, "h"),
    LongOption("format", True, "f"),
    LongOption("repair", True, "r"),
    LongOption("output", True, "output"),
    LongOption("object", True, "object"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("force-share", False, "U"),
)
# qio has no QOM objects; a secret (which only encrypted images would use) is accepted
OBJECT_TYPES = ("secret",)


@dataclass
class ImageCheck:
    """QAPI's ImageCheck: what the summary shows."""

    filename: str
    format: str
    result: CheckResult

    def as_json(self) -> dict[str, object]:
        """The QAPI visitor's output: optional members only when not zero."""
        r = self.result
        out: dict[str, object] = {
            "filename": self.filename,
            "format": self.format,
            "check-errors": r.check_errors,
        }
        for key, value in (
            ("image-end-offset", r.image_end_offset),
            ("corruptions", r.corruptions),
            ("leaks", r.leaks),
            ("corruptions-fixed", r.corruptions_fixed),
            ("leaks-fixed", r.leaks_fixed),
            ("total-clusters", r.total_clusters),
            ("allocated-clusters", r.allocated_clusters),
            ("fragmented-clusters", r.fragmented_clusters),
            ("compressed-clusters", r.compressed_clusters),
        ):
            if value:
                out[key] = value
        return out


def human_summary(r: CheckResult) -> str:
    """dump_human_image_check."""
    lines: list[str] = []
    if not (r.corruptions or r.leaks or r.check_errors):
        lines.append("No errors were found on the image.\n")
    else:
        if r.corruptions:
            lines.append(
                f"\n{r.corruptions} errors were found on the image.\n"
                "Data may be corrupted, or further writes to the image may corrupt it.\n"
            )
        if r.leaks:
            lines.append(
                f"\n{r.leaks} leaked clusters were found on the image.\n"
                "This means waste of disk space, but no harm to data.\n"
            )
        if r.check_errors:
            lines.append(f"\n{r.check_errors} internal errors have occurred during the check.\n")
    if r.total_clusters and r.allocated_clusters:
        allocated = r.allocated_clusters
        lines.append(
            f"{allocated}/{r.total_clusters} = {allocated * 100.0 / r.total_clusters:0.2f}% "
            f"allocated, {r.fragmented_clusters * 100.0 / allocated:0.2f}% fragmented, "
            f"{r.compressed_clusters * 100.0 / allocated:0.2f}% compressed clusters\n"
        )
    if r.image_end_offset:
        lines.append(f"Image end offset: {r.image_end_offset}\n")
    return "".join(lines)


def _object(value: str) -> None:
    """--object: QOM objects do not exist in qio; report what QEMU reports for a bad one."""
    from qio.block.options import parse_option_string
    from qio.errors import OptionError

    first, _, rest = value.partition(",")
    implied = first if "=" not in first else None  # "secret,id=..." names the type first
    try:
        options = parse_option_string(rest if implied is not None else value)
    except OptionError as exc:
        raise ImgError(exc.message) from None
    kind = implied if implied is not None else options.get("qom-type")
    if kind is None:
        raise ImgError("Parameter 'qom-type' is missing")
    if str(kind) not in OBJECT_TYPES:
        raise ImgError(f"Parameter 'qom-type' does not accept value '{kind}'")
    if options.get("id") is None:
        raise ImgError("Parameter 'id' is missing")


def run(argv: list[str]) -> int:
    fmt: str | None = None
    output: str | None = None
    cache = "writeback"
    fix = 0
    quiet = False
    image_opts = False
    force_share = False
    parser = Getopt(argv, "hf:r:T:qU", LONG_OPTIONS)
    for item in parser:
        if isinstance(item, GetoptError):
            if "requires an argument" in item.message:
                raise usage_error(f"missing argument for option '{parser.word}'")
            raise usage_error(f"unrecognized option '{parser.word}'")
        opt, arg = item
        if opt == "h":
            from qio.img.main import _help

            sys.stdout.write(_help())
            return 0
        if opt == "f":
            fmt = arg
        elif opt == "r":
            if arg == "leaks":
                fix = FIX_LEAKS
            elif arg == "all":
                fix = FIX_LEAKS | FIX_ERRORS
            else:
                raise usage_error(
                    f"Unknown option value for -r (expecting 'leaks' or 'all'): {arg}"
                )
        elif opt == "output":
            output = arg
        elif opt == "T":
            cache = arg or ""
        elif opt == "q":
            quiet = True
        elif opt == "U":
            force_share = True
        elif opt == "object":
            _object(arg or "")
        elif opt == "image-opts":
            image_opts = True
    if len(parser.operands) != 1:
        raise usage_error("Expecting one image file name")
    filename = parser.operands[0]
    if output not in (None, "json", "human"):
        raise ImgError("--output must be used with human or json as argument.")
    json_output = output == "json"

    from qio.block.open import CACHE_MODES

    if cache not in CACHE_MODES:
        raise ImgError(f"Invalid source cache option: {cache}")
    if image_opts and fmt is not None:
        raise ImgError("--image-opts and --format are mutually exclusive")
    read_write = bool(fix)
    image = open_image(
        OpenSpec(
            filename,
            fmt=fmt,
            image_opts=image_opts,
            read_write=read_write,
            force_share=force_share,
            cache=cache,
            check=True,
            quiet=quiet,
        )
    )
    try:
        return _check(image.root, filename, fix, json_output, quiet)
    finally:
        image.close()


def _collect(root: object, fix: int) -> tuple[CheckResult, int]:
    """collect_image_check: (result, 0) or (empty result, -errno)."""
    from qio.block.coroutine import scheduler
    from qio.block.qcow2.check import check_image
    from qio.block.qcow2.driver import Qcow2Node

    if not isinstance(root, Qcow2Node):
        return CheckResult(), -errno.ENOTSUP
    result, status = scheduler.run_sync(check_image(root, fix))
    if status < 0:
        return CheckResult(), status
    # BdrvCheckResult's counters are C ints
    for name in ("corruptions", "leaks", "check_errors", "corruptions_fixed", "leaks_fixed"):
        value = getattr(result, name) & 0xFFFFFFFF
        setattr(result, name, value - (1 << 32) if value >= 1 << 31 else value)
    return result, 0


def _check(root: object, filename: str, fix: int, json_output: bool, quiet: bool) -> int:
    result, status = _collect(root, fix)
    if status == -errno.ENOTSUP:
        error("This image format does not support checks")
        return 63
    out = sys.stdout
    if result.corruptions_fixed or result.leaks_fixed:
        leaks_fixed, corruptions_fixed = result.leaks_fixed, result.corruptions_fixed
        if not json_output and not quiet:
            out.write(
                "The following inconsistencies were found and repaired:\n\n"
                f"    {leaks_fixed} leaked clusters\n"
                f"    {corruptions_fixed} corruptions\n\n"
                "Double checking the fixed image now...\n"
            )
            out.flush()
        result, status = _collect(root, 0)
        result.leaks_fixed, result.corruptions_fixed = leaks_fixed, corruptions_fixed
    if not status and not quiet:
        if json_output:
            from qio.block.qjson import to_json_pretty

            format_name = getattr(root, "format_name", "")
            out.write(to_json_pretty(ImageCheck(filename, format_name, result).as_json()) + "\n")
        else:
            out.write(human_summary(result))
        out.flush()
    if status or result.check_errors:
        error(f"Check failed: {os.strerror(-status)}" if status else "Check failed")
        return 1
    if result.corruptions:
        return 2
    if result.leaks:
        return 3
    return 0
