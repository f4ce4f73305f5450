"""``qio-img create``: qemu-img 7.2's img_create and bdrv_img_create.

The creation options are QEMU's QemuOpts lists: the format's options followed by the ``file``
protocol's (without duplicates).  They are checked when parsed (unknown names, values of the
wrong type), printed in list order on the ``Formatting ...`` line (set values, else defaults),
and only then handed to the format's creator, whose errors therefore follow that line.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass

from qio.block.options import to_bool
from qio.errors import OpenError, OptionError
from qio.getopt import LongOption
from qio.img.common import (
    PROGRAM,
    ImgError,
    cvtnum,
    error,
    parse_command_line,
    usage_error,
)
from qio.numbers import UINT64_MAX, NumberError, parse_size

DEFAULT_FORMAT = "raw"


@dataclass(frozen=True)
class OptDesc:
    """One QemuOptDesc: name, type (str, size, bool, num), help text, default value."""

    name: str
    kind: str
    help: str
    default: str | None = None


_SIZE = OptDesc("size", "size", "Virtual disk size")

QCOW2_OPTS: tuple[OptDesc, ...] = (
    OptDesc(
        "encryption",
        "bool",
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    ),
    OptDesc("encrypt.format", "str", "Encrypt the image, format choices: 'aes', 'luks'"),
    OptDesc("encrypt.key-secret", "str", "ID of secret providing qcow AES key or LUKS passphrase"),
    OptDesc("encrypt.cipher-alg", "str", "Name of encryption cipher algorithm"),
    OptDesc("encrypt.cipher-mode", "str", "Name of encryption cipher mode"),
    OptDesc("encrypt.ivgen-alg", "str", "Name of IV generator algorithm"),
    OptDesc("encrypt.ivgen-hash-alg", "str", "Name of IV generator hash algorithm"),
    OptDesc("encrypt.hash-alg", "str", "Name of encryption hash algorithm"),
    OptDesc("encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    OptDesc("cluster_size", "size", "qcow2 cluster size", "65536"),
    OptDesc("extended_l2", "bool", "Extended L2 tables", "off"),
    OptDesc(
        "preallocation",
        "str",
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
    ),
    OptDesc(
        "compression_type",
        "str",
        "Compression method used for image cluster compression",
        "zlib",
    ),
    _SIZE,
    OptDesc("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
    OptDesc("backing_file", "str", "File name of a base image"),
    OptDesc("backing_fmt", "str", "Image format of the base image"),
    OptDesc("data_file", "str", "File name of an external data file"),
    OptDesc("data_file_raw", "bool", "The external data file must stay valid as a raw image"),
    OptDesc("lazy_refcounts", "bool", "Postpone refcount updates", "off"),
    OptDesc("refcount_bits", "num", "Width of a reference count entry in bits", "16"),
)
RAW_OPTS: tuple[OptDesc, ...] = (_SIZE,)
FILE_OPTS: tuple[OptDesc, ...] = (
    _SIZE,
    OptDesc("nocow", "bool", "Turn off copy-on-write (valid only on btrfs)"),
    OptDesc("preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)"),
    OptDesc("extent_size_hint", "size", "Extent size hint for the image file, 0 to disable"),
)
# bdrv_create_opts_simple: protocols that can only "create" on an existing target
SIMPLE_OPTS: tuple[OptDesc, ...] = (
    _SIZE,
    OptDesc("preallocation", "str", "Preallocation mode (allowed values: off)"),
)
PROTOCOL_OPTS: dict[str, tuple[OptDesc, ...]] = {
    "file": FILE_OPTS,
    "nbd": SIMPLE_OPTS,
    "host_device": SIMPLE_OPTS,
}
FORMATS: dict[str, tuple[OptDesc, ...]] = {
    "qcow2": QCOW2_OPTS,
    "raw": RAW_OPTS,
    "file": FILE_OPTS,  # the protocol itself: what raw creates, without the format layer
}
FILE_PREALLOC_MODES = ("off", "metadata", "falloc", "full")  # QAPI PreallocMode
_TYPE_NAMES = {"str": "str", "size": "size", "bool": "bool (on/off)", "num": "num"}


def create_opts_list(fmt: str, protocol: str | None = "file") -> list[OptDesc]:
    """qemu_opts_append: the format's options, then the protocol's not already there."""
    descs = list(FORMATS[fmt])
    if protocol is not None:
        names = {d.name for d in descs}
        descs += [d for d in PROTOCOL_OPTS[protocol] if d.name not in names]
    return descs


def find_protocol(filename: str) -> str:
    """bdrv_find_protocol plus the create_opts check: the protocol driver that creates
    ``filename``; OptionError with QEMU's message when there is none."""
    from qio.block import registry

    try:
        protocol = registry.protocol_for(filename)
    except OpenError as exc:
        raise OptionError(exc.message) from None
    if protocol not in PROTOCOL_OPTS:
        raise OptionError(f"Protocol driver '{protocol}' does not support image creation")
    return protocol


# -- option values -------------------------------------------------------------------------
@dataclass
class OptValue:
    desc: OptDesc
    text: str
    value: int | bool | str


def _parse_number(text: str) -> int | None:
    """qemu_strtou64(text, NULL, 0): C base-0 unsigned, whole string, None if invalid."""
    body = text.lstrip(" \t\n\v\f\r")
    negative = body[:1] == "-"
    if body[:1] in "+-" and body:
        body = body[1:]
    base = 10
    digits = body
    if body[:2].lower() == "0x" and len(body) > 2:
        base, digits = 16, body[2:]
    elif body[:1] == "0" and len(body) > 1:
        base, digits = 8, body[1:]
    try:
        value = int(digits, base) if digits and digits.isalnum() else None
    except ValueError:
        return None
    if value is None:
        return None
    return (-value) % (1 << 64) if negative else value


class CreateOptions:
    """A QemuOpts instance: values in the order they were set; lookups see the last one."""

    def __init__(self, descs: list[OptDesc]) -> None:
        self.descs = descs
        self.values: list[OptValue] = []

    def find_desc(self, name: str) -> OptDesc | None:
        for desc in self.descs:
            if desc.name == name:
                return desc
        return None

    def set(self, name: str, text: str) -> None:
        """qemu_opt_set: unknown names and badly typed values are refused."""
        desc = self.find_desc(name)
        if desc is None:
            raise OptionError(f"Invalid parameter '{name}'")
        self.values.append(OptValue(desc, text, _parse_value(desc, text)))

    def set_number(self, name: str, value: int) -> None:
        desc = self.find_desc(name)
        assert desc is not None
        self.values.append(OptValue(desc, str(value), value))

    def get(self, name: str) -> OptValue | None:
        for opt in reversed(self.values):
            if opt.desc.name == name:
                return opt
        return None

    def text(self, name: str) -> str | None:
        opt = self.get(name)
        return opt.text if opt is not None else None

    def number(self, name: str, default: int) -> int:
        opt = self.get(name)
        if opt is not None:
            return int(opt.value)
        desc = self.find_desc(name)
        if desc is not None and desc.default is not None:
            return _parse_value(desc, desc.default)  # type: ignore[return-value]
        return default

    def flag(self, name: str) -> bool:
        opt = self.get(name)
        return bool(opt.value) if opt is not None else False

    def describe(self) -> str:
        """qemu_opts_print(opts, " ")."""
        parts: list[str] = []
        for desc in self.descs:
            opt = self.get(desc.name)
            value = opt.text if opt is not None else desc.default
            if value is None:
                continue
            if desc.kind == "str":
                parts.append(f"{desc.name}={value.replace(',', ',,')}")
            elif desc.kind in ("size", "num") and opt is not None:
                number = int(opt.value)
                parts.append(f"{desc.name}={number - (1 << 64) if number >> 63 else number}")
            else:
                parts.append(f"{desc.name}={value}")
        return " ".join(parts)


def _parse_value(desc: OptDesc, text: str) -> int | bool | str:
    if desc.kind == "bool":
        return to_bool(desc.name, text)
    if desc.kind == "num":
        number = _parse_number(text)
        if number is None:
            raise OptionError(f"Parameter '{desc.name}' expects a number")
        if number > UINT64_MAX:
            raise OptionError(f"Value '{text}' is too large for parameter '{desc.name}'")
        return number
    if desc.kind == "size":
        try:
            parsed = parse_size(text)
        except NumberError as exc:
            if exc.code == errno.ERANGE:
                raise OptionError(
                    f"Value '{text}' is out of range for parameter '{desc.name}'"
                ) from None
            raise OptionError(
                f"Parameter '{desc.name}' expects a non-negative number below 2^64\n"
                "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                "and exabytes, respectively."
            ) from None
        if parsed.hex_with_suffix:
            _hex_warning(text)
        return parsed.value
    return text


def _hex_warning(text: str) -> None:
    error(f"warning: Using a multiplier suffix on hex numbers is deprecated: {text}")


def option_pairs(text: str) -> list[tuple[str, str]]:
    """QemuOpts parsing of ``key=value,...`` into pairs, in order, duplicates kept.

    ``,,`` in a value is a literal comma; a bare ``key`` means ``key=on`` and ``nokey``
    ``key=off`` (QEMU's flag syntax).
    """
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in "=,":
            j += 1
        name = text[i:j]
        if j < n and text[j] == "=":
            chars: list[str] = []
            i = j + 1
            while i < n:
                if text[i] == ",":
                    if text[i + 1 : i + 2] != ",":
                        break
                    i += 1
                chars.append(text[i])
                i += 1
            value = "".join(chars)
        else:
            name, value = (name[2:], "off") if name.startswith("no") else (name, "on")
            i = j
        pairs.append((name, value))
        if i < n and text[i] == ",":
            i += 1
    return pairs


def is_valid_option_list(text: str) -> bool:
    """qemu-img's check on each ``-o`` argument: not empty, no leading or lone trailing comma."""
    if not text or text[0] == ",":
        return False
    stripped = len(text) - len(text.rstrip(","))
    return stripped % 2 == 0


def has_help_option(text: str) -> bool:
    return any(name in ("help", "?") for name, _ in option_pairs(text))


def check_format(fmt: str) -> None:
    """bdrv_find_format and the create_opts check; OptionError with QEMU's message, or qio's
    refusal for QEMU formats qio does not implement."""
    from qio.block import registry

    if fmt in FORMATS:
        return
    if fmt in registry.driver_names():
        raise OptionError(f"Format driver '{fmt}' does not support image creation")
    if fmt in registry.UNSUPPORTED_FORMATS:
        raise OptionError(f"Driver '{fmt}' is not supported by qio")
    raise OptionError(f"Unknown file format '{fmt}'")


def option_help(filename: str | None, fmt: str) -> str:
    """print_block_option_help: the sorted option list of the format (and protocol)."""
    try:
        check_format(fmt)
    except OptionError as exc:
        raise ImgError(exc.message) from None
    protocol = None
    if filename is not None:
        try:
            protocol = find_protocol(filename)
        except OptionError as exc:
            raise ImgError(exc.message) from None
    descs = create_opts_list(fmt, protocol)
    lines = sorted(f"  {d.name}=<{_TYPE_NAMES[d.kind]}>" for d in descs)
    helps = {f"  {d.name}=<{_TYPE_NAMES[d.kind]}>": d.help for d in descs}
    head = "Supported options:\n" if filename is not None else f"Supported {fmt} options:\n"
    body = "".join(f"{line:<24} - {helps[line]}\n" for line in lines)
    tail = ""
    if filename is None:
        tail = (
            "\nThe protocol level may support further options.\n"
            "Specify the target filename to include those options.\n"
        )
    return head + body + tail


# -- creation ------------------------------------------------------------------------------
def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def create_image(
    filename: str,
    fmt: str,
    size: int | None,
    options: dict[str, str],
    backing: str | None = None,
    backing_fmt: str | None = None,
    unsafe: bool = False,
    quiet: bool = False,
) -> None:
    """bdrv_img_create: create ``filename`` as qemu-img create does; ImgError on failure.

    ``options`` are ``-o`` options (name -> text); ``size`` None means "not given" (taken
    from the backing file, as qemu-img does).  Prints the ``Formatting ...`` line unless
    ``quiet``.
    """
    _img_create(filename, fmt, size, list(options.items()), backing, backing_fmt, unsafe, quiet)


def create_with_options(
    filename: str, fmt: str, protocol: str, opts: CreateOptions, size: int
) -> None:
    """bdrv_create: make the image with options already checked; silent, OpenError on
    failure (qemu-img create and convert word that error differently)."""
    if fmt in ("raw", "file"):
        _create_raw(filename, protocol, opts, size)
    else:
        _create_qcow2(filename, opts, size)


def _img_create(
    filename: str,
    fmt: str,
    size: int | None,
    pairs: list[tuple[str, str]],
    backing: str | None,
    backing_fmt: str | None,
    unsafe: bool,
    quiet: bool,
) -> None:
    try:
        _do_create(filename, fmt, size, pairs, backing, backing_fmt, unsafe, quiet)
    except (OptionError, OpenError) as exc:
        # "Detected format of FMT." is a hint QEMU prints without a newline
        end = "" if "\nDetected format of " in exc.message else "\n"
        raise ImgError(f"{filename}: {exc.message}", end=end) from None


def _do_create(
    filename: str,
    fmt: str,
    size: int | None,
    pairs: list[tuple[str, str]],
    backing: str | None,
    backing_fmt: str | None,
    unsafe: bool,
    quiet: bool,
) -> None:
    check_format(fmt)
    protocol = find_protocol(filename)
    opts = CreateOptions(create_opts_list(fmt, protocol))
    for name, text in pairs:
        opts.set(name, text)
    if opts.get("size") is None:
        opts.set_number("size", UINT64_MAX if size is None else size)
    elif size is not None:
        raise OptionError("The image size must be specified only once")
    if backing is not None:
        if opts.find_desc("backing_file") is None:
            raise OptionError(f"Backing file not supported for file format '{fmt}'")
        opts.set("backing_file", backing)
    if backing_fmt is not None:
        if opts.find_desc("backing_fmt") is None:
            raise OptionError(f"Backing file format not supported for file format '{fmt}'")
        opts.set("backing_fmt", backing_fmt)
    backing_file = opts.text("backing_file")
    if backing_file is not None:
        if backing_file == filename:
            raise OptionError(
                "Error: Trying to create an image with the same filename as the backing file"
            )
        if backing_file == "":
            raise OptionError("Expected backing file name, got empty string")
    backing_fmt = opts.text("backing_fmt")
    image_size = _signed(int(opts.get("size").value))  # type: ignore[union-attr]
    if backing_file is not None and not unsafe:
        backing_size = _open_backing(filename, backing_file, backing_fmt)
        if image_size == -1:
            image_size = backing_size
            opts.set_number("size", backing_size)
    elif backing_file is not None and backing_fmt is None:
        raise OptionError("Backing file specified without backing format")
    if image_size == -1:
        raise OptionError("Image creation needs a size parameter")
    if not quiet:
        sys.stdout.write(f"Formatting '{filename}', fmt={fmt} {opts.describe()}\n")
        sys.stdout.flush()
    _reparse_warnings(fmt, opts)
    try:
        create_with_options(filename, fmt, protocol, opts, image_size)
    except OpenError as exc:
        if exc.errno == errno.EFBIG:
            hint = " (try using a larger cluster size)" if fmt == "qcow2" else ""
            raise OptionError(
                f"The image size is too large for file format '{fmt}'{hint}"
            ) from None
        raise


def _open_backing(filename: str, backing_file: str, backing_fmt: str | None) -> int:
    """Open the backing file as bdrv_img_create does (read-only, shared); its size."""
    from qio.block.coroutine import scheduler
    from qio.block.node import OpenFlags
    from qio.block.open import Notice, OpenContext, open_node, resolve_backing_path
    from qio.block.options import Options

    def notify(notice: Notice) -> None:
        stream = sys.stderr if notice.stream == "err" else sys.stdout
        stream.write(notice.text)
        stream.flush()

    ctx = OpenContext(notify, PROGRAM)
    flags = OpenFlags()
    flags.read_write = False
    flags.force_share = True
    flags.no_io = True
    options = Options()
    if backing_fmt is not None:
        options.set("driver", backing_fmt)
    full = resolve_backing_path(filename, backing_file)
    try:
        root = scheduler.run_sync(open_node(ctx, full, options, flags))
    except OpenError as exc:
        raise OptionError(f"{exc.message}\nCould not open backing image.") from None
    try:
        if backing_fmt is None:
            raise OptionError(
                "Backing file specified without backing format\n"
                f"Detected format of {root.format_name}."
            )
        return root.getlength()
    finally:
        scheduler.run_sync(root.close())


def _file_prealloc(opts: CreateOptions) -> str:
    prealloc = _text_or(opts, "preallocation", "off")
    if prealloc not in FILE_PREALLOC_MODES:
        raise OpenError(f"invalid parameter value: {prealloc}")
    return prealloc


def _text_or(opts: CreateOptions, name: str, default: str) -> str:
    text = opts.text(name)
    return default if text is None else text


def _reparse_warnings(fmt: str, opts: CreateOptions) -> None:
    """QEMU parses size options a second time on the way to the driver (the format's QAPI
    visitor, the protocol's option list rebuilt from a QDict), repeating the warning about
    hexadecimal sizes with a suffix.  ``-f file`` is created directly: no second parse."""
    from qio.block.options import qdict_order

    if fmt == "file":
        return
    latest: dict[str, str] = {}
    for opt in opts.values:
        if opt.desc.kind == "size":
            latest[opt.desc.name] = opt.text
    hexed = {n: t for n, t in latest.items() if _is_hex_with_suffix(t)}
    if fmt == "raw":
        for name in qdict_order(list(latest)):
            if name in hexed:
                _hex_warning(hexed[name])
        return
    qcow2_names = {d.name for d in QCOW2_OPTS}
    protocol_files = 2 if opts.text("data_file") is not None else 1
    for _ in range(protocol_files):
        for name in qdict_order(list(latest)):
            if name in hexed and name not in qcow2_names:
                _hex_warning(hexed[name])
    for name in ("size", "cluster_size"):  # BlockdevCreateOptionsQcow2 field order
        if name in hexed:
            _hex_warning(hexed[name])


def _is_hex_with_suffix(text: str) -> bool:
    try:
        return parse_size(text).hex_with_suffix
    except NumberError:
        return False


def _extent_size_hint(opts: CreateOptions) -> int | None:
    opt = opts.get("extent_size_hint")
    return int(opt.value) if opt is not None else None


def _create_raw(filename: str, protocol: str, opts: CreateOptions, size: int) -> None:
    from qio.block.coroutine import scheduler
    from qio.block.drivers.file_create import create_protocol

    prealloc = _file_prealloc(opts)
    _warn(
        scheduler.run_sync(
            create_protocol(
                filename,
                protocol,
                size,
                prealloc,
                nocow=opts.flag("nocow"),
                extent_size_hint=_extent_size_hint(opts),
            )
        )
    )


def _warn(warnings: list[str]) -> None:
    for text in warnings:
        error(f"warning: {text}")


def _create_qcow2(filename: str, opts: CreateOptions, size: int) -> None:
    from qio.block.coroutine import scheduler
    from qio.block.drivers.file_create import check_extent_size_hint
    from qio.block.qcow2.create import CreateError, Qcow2CreateOptions, create_qcow2

    check_extent_size_hint(_extent_size_hint(opts))
    encrypt_format = opts.text("encrypt.format")
    if opts.flag("encryption") or encrypt_format is not None:
        # qio has no secrets (--object) and no qcow2 encryption: QEMU refuses the same way
        # when no usable secret is named.
        secret = opts.text("encrypt.key-secret")
        if secret is None:
            raise OpenError("Parameter 'encrypt.key-secret' is required for cipher")
        raise OpenError(f"No secret with id '{secret}' found")
    compat = opts.text("compat")
    version = {"0.10": "v2", "1.1": "v3"}.get(compat, compat) if compat is not None else "v3"
    create = Qcow2CreateOptions(
        size=size,
        version=version,
        cluster_size=opts.number("cluster_size", 65536),
        extended_l2=opts.flag("extended_l2"),
        preallocation=_text_or(opts, "preallocation", "off"),
        lazy_refcounts=opts.flag("lazy_refcounts"),
        refcount_bits=opts.number("refcount_bits", 16),
        compression_type=_text_or(opts, "compression_type", "zlib"),
        backing_file=opts.text("backing_file"),
        backing_fmt=opts.text("backing_fmt"),
        data_file=opts.text("data_file"),
        data_file_raw=opts.flag("data_file_raw"),
        nocow=opts.flag("nocow"),
        extent_size_hint=_extent_size_hint(opts),
    )
    try:
        _warn(scheduler.run_sync(create_qcow2(filename, create, PROGRAM)))
    except CreateError as exc:
        raise OpenError(exc.message, exc.errno) from None


# -- command line --------------------------------------------------------------------------
USAGE = (
    "create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] "
    "[-o options] filename [size]"
)


def run(argv: list[str]) -> int:
    options, operands = parse_command_line(argv, ":F:b:f:ho:qu", (LongOption("help", False, "h"),))
    fmt = DEFAULT_FORMAT
    backing: str | None = None
    backing_fmt: str | None = None
    option_text: str | None = None
    quiet = False
    unsafe = False
    for key, value in options:
        assert value is not None or key in "hqu"
        if key == "h":
            from qio.img.main import help_text

            sys.stdout.write(help_text())
            return 0
        if key == "F":
            backing_fmt = value
        elif key == "b":
            backing = value
        elif key == "f":
            fmt = str(value)
        elif key == "o":
            text = str(value)
            if not is_valid_option_list(text):
                error(f"Invalid option list: {text}")
                return 1
            option_text = text if option_text is None else f"{option_text},{text}"
        elif key == "q":
            quiet = True
        elif key == "u":
            unsafe = True
    filename = operands[0] if operands else None
    if option_text is not None and has_help_option(option_text):
        sys.stdout.write(option_help(filename, fmt))
        return 0
    if filename is None:
        raise usage_error("Expecting image file name")
    size: int | None = None
    if len(operands) > 1:
        size = cvtnum("image size", operands[1])
    if len(operands) > 2:
        raise usage_error(f"Unexpected argument: {operands[2]}")
    pairs = option_pairs(option_text) if option_text is not None else []
    _img_create(filename, fmt, size, pairs, backing, backing_fmt, unsafe, quiet)
    return 0
