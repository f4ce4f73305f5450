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


def apply_generic_options(options: Options, flags: OpenFlags) -> OpenFlags:
    """Pop the options every node understands and fold them into a copy of ``flags``."""
    flags = flags.copy()
    if "read-only" in options:
        # An explicit read-only option wins over the inherited flag, either way.
        flags.read_write = not to_bool("read-only", options.pop("read-only"))
    options.pop("auto-read-only")
    if "cache.direct" in options:
        flags.direct = to_bool("cache.direct", options.pop("cache.direct"))
    if "cache.no-flush" in options:
        flags.no_flush = to_bool("cache.no-flush", options.pop("cache.no-flush"))
    if "discard" in options:
        mode = options.pop_str("discard") or ""
        if mode not in DISCARD_MODES:
            raise OptionError(f"Invalid discard option: {mode}")
        flags.unmap = DISCARD_MODES[mode]
    if "force-share" in options:
        flags.force_share = to_bool("force-share", options.pop("force-share"))
    detect = options.pop_str("detect-zeroes")
    if detect is not None and detect not in ("off", "on", "unmap"):
        raise OptionError(f"Parameter 'detect-zeroes' does not accept value '{detect}'")
    return flags


async def open_node(
    ctx: OpenContext,
    filename: str | None,
    options: Options,
    flags: OpenFlags,
    *,
    protocol: bool = False,
) -> BlockNode:
    """bdrv_open_inherit: open one node (and, through its driver, its children)."""
    if filename is not None and filename.startswith("json:"):
        options.merge_missing(_json_options(filename))
        filename = None

    backing_ref = options.get("backing", "<absent>")
    if "backing" in options and (backing_ref is None or backing_ref == ""):
        if backing_ref == "":
            ctx.warn('Use of "backing": "" is deprecated; use "backing": null instead')
        flags = flags.copy()
        flags.no_backing = True
        options.pop("backing")

    drvname = options.pop_str("driver")
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

    node_name = options.pop_str("node-name")
    flags = apply_generic_options(options, flags)

    file_node: BlockNode | None = None
    if not protocol:
        file_node = await open_child(ctx, filename, options, "file", flags, allow_none=True)

    probed = False
    if cls is None:
        if file_node is None:
            raise OpenError("Must specify either driver or file")
        cls = await _probe(file_node, filename or file_node.filename)
        probed = True

    if cls.protocol_name is None and protocol:
        # A format driver named where a protocol was expected is fine (file.driver=qcow2).
        pass

    node = cls(ctx, flags)
    node.node_name = node_name or ctx.new_node_name()
    node.probed = probed
    node.options = {"driver": cls.format_name, **options.as_dict()}
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
    flags = parent_flags.copy()
    flags.snapshot = False
    flags.no_backing = False
    if backing:
        flags.read_write = False
        flags.copy_on_read = False
    return await open_node(ctx, filename, child_options, flags, protocol=protocol)


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
        child = await open_node(ctx, backing_name, child_options, bflags)
    except OpenError as exc:
        raise OpenError(f"Could not open backing file: {exc.message}", exc.errno) from None
    node.attach("backing", child)


def finish_graph(root: BlockNode) -> None:
    """Per-node facts that depend on the whole graph (where blkdebug events go)."""
    for node in root.walk():
        node.debug_target = node.find_debug_target()


def open_image_sync(
    ctx: OpenContext,
    filename: str | None,
    options: Options,
    flags: OpenFlags,
) -> BlockNode:
    """Open a whole graph from outside any request (qemu-io's ``openfile``)."""
    node = scheduler.run_sync(open_node(ctx, filename, options, flags))
    finish_graph(node)
    return node
