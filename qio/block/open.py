"""Building a block graph from a filename and an options tree (QEMU's bdrv_open).

The rules follow block.c: a ``json:`` filename merges into the options (explicit options
win); a protocol prefix (``blkverify:``, ``nbd://``, ``null-co://``) chooses a protocol
driver that parses the rest of the filename into options; a format node opens its ``file``
child first and, without a ``driver``, probes the format from its first bytes; options a driver
did not take are an error naming the first unknown key.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from qio.block import probe as probe_mod
from qio.block import registry
from qio.block.coroutine import scheduler
from qio.block.node import BlockNode, OpenFlags
from qio.block.options import Options, to_bool
from qio.errors import BlockError, OpenError, OptionError
from qio.results import Mismatch


@dataclass(frozen=True)
class Notice:
    """Text a driver needs shown to the user (drivers never print themselves)."""

    stream: Literal["out", "err"]
    text: str


CACHE_MODES = {
    # mode: (direct, no_flush, writethrough)
    "none": (True, False, False),
    "off": (True, False, False),
    "writeback": (False, False, False),
    "writethrough": (False, False, True),
    "directsync": (True, False, True),
    "unsafe": (False, True, False),
}

DISCARD_MODES = {"ignore": False, "off": False, "unmap": True, "on": True}

AIO_MODES = ("threads", "native", "io_uring")


class OpenContext:
    """What all nodes of one graph share: where notices go and node-name bookkeeping."""

    def __init__(
        self, notify: Callable[[Notice], None] | None = None, program: str = "qio"
    ) -> None:
        self._notify = notify
        self.program = program
        self.nodes: list[BlockNode] = []
        self._next_id = 0
        self.pending: list[Notice] = []
        # Set when a driver takes the graph offline (qcow2 found fatal corruption): every
        # later request fails with ENOMEDIUM, as in QEMU.
        self.offline = False
        # Who decides what a blkverify read mismatch does.  None: qemu-io's behaviour (the
        # program ends).  A server (qio-nbd) installs a handler that records the mismatch and
        # returns "raw" (answer with the trusted raw child's bytes) or "error" (fail the read
        # with EIO); see qio/nbd/mismatch.py.
        self.mismatch_handler: Callable[[Mismatch], str] | None = None

    def notify(self, notice: Notice) -> None:
        if self._notify is None:
            self.pending.append(notice)
        else:
            self._notify(notice)

    def out(self, text: str) -> None:
        self.notify(Notice("out", text))

    def err(self, text: str) -> None:
        self.notify(Notice("err", text))

    def warn(self, text: str) -> None:
        self.err(f"{self.program}: warning: {text}\n")

    def error(self, text: str) -> None:
        self.err(f"{self.program}: {text}\n")

    def new_node_name(self) -> str:
        self._next_id += 1
        return f"#block{self._next_id:03d}"

    def find_node(self, name: str) -> BlockNode | None:
        for node in self.nodes:
            if node.node_name == name:
                return node
        return None


RUNTIME_BOOL_OPTIONS = (
    "read-only",
    "auto-read-only",
    "cache.direct",
    "cache.no-flush",
    "force-share",
)
RUNTIME_OPTIONS = (*RUNTIME_BOOL_OPTIONS, "discard", "detect-zeroes", "node-name")
DETECT_ZEROES = ("off", "on", "unmap")
# Options a child takes from its parent unless it sets them itself (bdrv_inherited_options).
INHERITED_OPTIONS = ("cache.direct", "cache.no-flush", "force-share")
INHERITED_BY_DATA_CHILDREN = ("read-only", "auto-read-only")


def read_write_from_options(options: Options, flags: OpenFlags) -> OpenFlags:
    """bdrv_open_inherit's first look at ``read-only``: "on" or true means read-only, any
    other value read-write (a bad value is only reported later, with the other options)."""
    flags = flags.copy()
    if "read-only" in options:
        value = options.get("read-only")
        flags.read_write = not (value is True or value == "on")
    return flags


def absorb_runtime_options(
    options: Options, flags: OpenFlags, top: bool, cls: type[BlockNode]
) -> tuple[OpenFlags, str | None]:
    """bdrv_open_common's checks of the options every node understands, in QEMU's order.

    Returns the node's flags and its node name (None: generate one).
    """
    flags = flags.copy()
    values = {key: options.pop(key) for key in options.in_qdict_order() if key in RUNTIME_OPTIONS}
    for key in values:  # type errors, in the order QEMU's QDict yields the keys
        if key in RUNTIME_BOOL_OPTIONS:
            to_bool(key, values[key])
    if "read-only" in values:
        flags.read_write = not to_bool("read-only", values["read-only"])
    if "cache.direct" in values:
        flags.direct = to_bool("cache.direct", values["cache.direct"])
    if "cache.no-flush" in values:
        flags.no_flush = to_bool("cache.no-flush", values["cache.no-flush"])
    if "force-share" in values:
        flags.force_share = to_bool("force-share", values["force-share"])
    if flags.force_share and flags.read_write:
        raise OptionError("force-share=on can only be used with read-only images")
    if cls.needs_filename and not options.get("filename"):
        raise OptionError(f"The '{cls.format_name}' block driver requires a file name")
    if top and flags.copy_on_read and not flags.read_write:
        raise OptionError("Can't use copy-on-read on read-only device")
    if "discard" in values:
        mode = str(values["discard"])
        if mode not in DISCARD_MODES:
            raise OptionError("Invalid discard option")
        flags.unmap = DISCARD_MODES[mode]
    detect = values.get("detect-zeroes")
    if detect is not None:
        if str(detect) not in DETECT_ZEROES:
            raise OptionError(f"invalid parameter value: {detect}")
        if detect == "unmap" and not flags.unmap:
            raise OptionError(
                "setting detect-zeroes to unmap is not allowed without setting discard "
                "operation to unmap"
            )
    node_name = values.get("node-name")
    return flags, None if node_name is None else str(node_name)


def check_node_name(ctx: OpenContext, name: str) -> None:
    """bdrv_assign_node_name's rules for a user-given node name."""
    if not (name[:1].isascii() and name[:1].isalpha()) or any(
        not (c.isascii() and (c.isalnum() or c in "-._")) for c in name[1:]
    ):
        raise OptionError(f"Invalid node-name: '{name}'")
    if len(name) >= 32:
        raise OptionError("Node name too long")
    if ctx.find_node(name) is not None:
        raise OptionError(f"Duplicate nodes with node-name='{name}'")


def inherit_child_options(parent: Options, child: Options, backing: bool) -> None:
    """bdrv_inherited_options: what a child copies from its parent's options."""
    for key in INHERITED_OPTIONS if backing else INHERITED_OPTIONS + INHERITED_BY_DATA_CHILDREN:
        if key in parent and key not in child:
            child.set(key, parent.get(key))


async def open_node(
    ctx: OpenContext,
    filename: str | None,
    options: Options,
    flags: OpenFlags,
    *,
    protocol: bool = False,
    top: bool = True,
) -> BlockNode:
    """bdrv_open_inherit: open one node (and, through its driver, its children).

    The order of the steps is QEMU's, because it decides which of several errors is shown:
    the driver and filename (bdrv_fill_options), the file child, probing, the options every
    node understands and the node name (bdrv_open_common), the driver's own options, the
    backing file, and finally any option nobody took.
    """
    if filename is not None and filename.startswith("json:"):
        options.merge_missing(_json_options(filename))
        filename = None

    # qdict_get_try_str: a driver that is not a string (JSON number, boolean) counts as
    # none given; the probed or protocol driver then replaces it.
    drvname = options.pop("driver")
    if not isinstance(drvname, str):
        drvname = None
    cls: type[BlockNode] | None = None
    if drvname is not None:
        cls = registry.lookup(drvname)
        protocol = cls.protocol_name is not None
    parse_filename = False
    if protocol and filename is not None:
        if "filename" in options:
            raise OpenError("Can't specify 'file' and 'filename' options at the same time")
        options.set("filename", filename)
        parse_filename = True
    if cls is None and protocol:
        fname = options.get("filename")
        if fname is None:
            raise OpenError("Must specify either driver or file")
        cls = registry.lookup(registry.protocol_for(str(fname)))
    if cls is not None and parse_filename:
        cls.parse_filename(str(options.get("filename")), options)
        if not cls.needs_filename:
            options.pop("filename")

    flags = read_write_from_options(options, flags)

    backing_ref = options.get("backing", "<absent>")
    if "backing" in options and (backing_ref is None or backing_ref == ""):
        if backing_ref == "":
            ctx.warn('Use of "backing": "" is deprecated; use "backing": null instead')
        flags = flags.copy()
        flags.no_backing = True
        options.pop("backing")

    file_node: BlockNode | None = None
    if not protocol:
        file_node = await open_child(ctx, filename, options, "file", flags, allow_none=True)
    try:
        probed = False
        if cls is None:
            if file_node is None:
                raise OpenError("Must specify either driver or file")
            cls = await _probe(file_node, filename or file_node.filename)
            probed = True
        flags, node_name = absorb_runtime_options(options, flags, top, cls)
        if node_name is not None:
            check_node_name(ctx, node_name)
    except BaseException:
        if file_node is not None:
            await _close_quietly(file_node)
        raise

    node = cls(ctx, flags)
    node.node_name = node_name or ctx.new_node_name()
    node.probed = probed
    node.options = {"driver": cls.format_name, **options.as_dict()}
    if node_name:
        node.options["node-name"] = node_name  # an explicit name may be repeated by reopen
    if file_node is not None:
        node.attach("file", file_node)
        node.filename = file_node.filename
    ctx.nodes.append(node)
    try:
        await node.open(options)
        node.refresh_total_sectors()
        if cls.supports_backing and not flags.no_backing:
            await open_backing(ctx, node, options, flags)
        else:
            options.extract("backing")
        leftover = options.first_key()
        if leftover is not None:
            if protocol or cls.protocol_name is not None:
                raise OpenError(
                    f"Block protocol '{cls.format_name}' doesn't support the option '{leftover}'"
                )
            raise OpenError(
                f"Block format '{cls.format_name}' does not support the option '{leftover}'"
            )
    except BaseException:
        await _close_quietly(node)
        raise
    return node


async def _close_quietly(node: BlockNode) -> None:
    try:
        await node.close()
    except (BlockError, OpenError, OSError):
        pass


def _json_options(filename: str) -> Options:
    from qio.block.options import parse_json_filename

    return parse_json_filename(filename)


async def _probe(file_node: BlockNode, filename: str) -> type[BlockNode]:
    if file_node.getlength() == 0:
        return registry.lookup("raw")
    buf = bytearray(probe_mod.PROBE_BYTES)
    try:
        await file_node.preadv(0, memoryview(buf))
    except BlockError as exc:
        raise OpenError(
            f"Could not read image for determining its format: {exc.strerror}", exc.errno
        ) from None
    name = probe_mod.probe(bytes(buf), filename)
    if name in registry.UNSUPPORTED_FORMATS:
        raise OpenError(f"Image format '{name}' is not supported by qio", errno.ENOTSUP)
    return registry.lookup(name)


async def open_child(
    ctx: OpenContext,
    filename: str | None,
    parent_options: Options,
    role: str,
    parent_flags: OpenFlags,
    *,
    allow_none: bool = False,
    protocol: bool = True,
    backing: bool = False,
) -> BlockNode | None:
    """bdrv_open_child: the ``role.*`` options (or a node reference) become a child node."""
    child_options = parent_options.extract(role)
    reference = parent_options.pop(role) if role in parent_options else None
    if reference is not None and not isinstance(reference, str):
        raise OpenError(f"Invalid reference for '{role}'")
    if filename is None and not len(child_options) and reference is None:
        if allow_none:
            return None
        raise OpenError(f'A block device must be specified for "{role}"')
    if reference is not None:
        if filename is not None or len(child_options):
            raise OpenError(
                "Cannot reference an existing block device with additional options or a new filename"
            )
        node = ctx.find_node(reference)
        if node is None:
            raise OpenError(f"Cannot find device='{reference}' nor node-name='{reference}'")
        return node
    inherit_child_options(parent_options, child_options, backing)
    flags = parent_flags.copy()
    flags.snapshot = False
    flags.no_backing = False
    flags.copy_on_read = False  # a top-layer flag
    if backing:
        flags.read_write = False
    return await open_node(ctx, filename, child_options, flags, protocol=protocol, top=False)


def resolve_backing_path(overlay_filename: str, backing: str) -> str:
    """A relative backing file name is relative to the overlay's directory."""
    if (
        os.path.isabs(backing)
        or registry.PROTOCOLS.get(backing.split(":", 1)[0])
        or backing.startswith("json:")
    ):
        return backing
    base = os.path.dirname(overlay_filename)
    return os.path.join(base, backing) if base else backing


async def open_backing(
    ctx: OpenContext, node: BlockNode, options: Options, flags: OpenFlags
) -> None:
    """bdrv_open_backing_file: the image's recorded backing file unless options say otherwise."""
    child_options = options.extract("backing")
    reference = options.pop("backing") if "backing" in options else None
    if reference is not None:
        found = ctx.find_node(str(reference))
        if found is None:
            raise OpenError(
                "Could not open backing file: "
                f"Cannot find device='{reference}' nor node-name='{reference}'"
            )
        node.attach("backing", found)
        return
    backing_name: str | None = None
    if "file.filename" not in child_options:
        if not node.backing_file and not len(child_options):
            return
        if node.backing_file:
            if node.filename.startswith("json:") and not os.path.isabs(node.backing_file):
                raise OpenError(
                    "Could not open backing file: Cannot use relative backing file names for "
                    f"'{node.filename}'"
                )
            backing_name = resolve_backing_path(node.filename, node.backing_file)
    if node.backing_format and "driver" not in child_options:
        child_options.set("driver", node.backing_format)
    bflags = flags.copy()
    bflags.read_write = False
    bflags.copy_on_read = False
    bflags.snapshot = False
    bflags.no_backing = False
    try:
        child = await open_node(ctx, backing_name, child_options, bflags, top=False)
    except OpenError as exc:
        raise OpenError(f"Could not open backing file: {exc.message}", exc.errno) from None
    node.attach("backing", child)


def open_image_sync(
    ctx: OpenContext,
    filename: str | None,
    options: Options,
    flags: OpenFlags,
) -> BlockNode:
    """Open a whole graph from outside any request (qemu-io's ``openfile``)."""
    return scheduler.run_sync(open_node(ctx, filename, options, flags))
