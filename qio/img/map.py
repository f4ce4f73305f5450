"""``qio-img map``: qemu-img 7.2's img_map.

The image is opened read-only with its backing chain.  For each range, block status is asked
of the top image alone (filters skipped); where it is neither data nor zero the next image
down the chain is asked, and the depth counts the steps.  Neighbouring ranges with the same
answer (and contiguous host offsets in the same file) merge.  The human format shows only
data ranges with a host offset and treats zero and unallocated alike; the JSON format shows
every range.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from qio.block.node import BlockNode
from qio.errors import BlockError
from qio.getopt import LongOption
from qio.img.common import (
    ImgError,
    OpenSpec,
    cvtnum,
    error,
    open_image,
    parse_command_line,
    usage_error,
)
from qio.img.info import parse_output_format

LONGOPTS = (
    LongOption("help", False, "h"),
    LongOption("format", True, "f"),
    LongOption("output", True, "output"),
    LongOption("start-offset", True, "s"),
    LongOption("max-length", True, "l"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("force-share", False, "U"),
)


@dataclass
class MapEntry:
    start: int = 0
    length: int = 0
    data: bool = False
    zero: bool = False
    offset: int = 0
    has_offset: bool = False
    depth: int = 0
    present: bool = False
    filename: str | None = None


def skip_filters(node: BlockNode) -> BlockNode:
    while node.is_filter:
        child = node.filtered_child()
        if child is None:
            break
        node = child
    return node


async def get_block_status(root: BlockNode, offset: int, length: int) -> MapEntry:
    """qemu-img's get_block_status: the first image of the chain that knows the range."""
    node: BlockNode | None = root
    depth = 0
    while True:
        assert node is not None
        node = skip_filters(node)
        status = await node.block_status(offset, length, want_zero=True)
        length = status.length
        if status.data or status.zero:
            break
        cow = node.backing if node.supports_backing else None
        if cow is None:
            break
        node = cow
        depth += 1
    has_offset = status.offset is not None
    filename = None
    if status.node is not None and has_offset:
        filename = status.node.filename
    return MapEntry(
        start=offset,
        length=length,
        data=status.data,
        zero=status.zero,
        offset=status.offset or 0,
        has_offset=has_offset,
        depth=depth,
        present=status.allocated,
        filename=filename,
    )


def entry_mergeable(curr: MapEntry, nxt: MapEntry) -> bool:
    if curr.length == 0:
        return False
    if (
        curr.zero != nxt.zero
        or curr.data != nxt.data
        or curr.depth != nxt.depth
        or curr.present != nxt.present
        or (curr.filename is None) != (nxt.filename is None)
        or curr.has_offset != nxt.has_offset
    ):
        return False
    if curr.filename is not None and curr.filename != nxt.filename:
        return False
    return not (curr.has_offset and curr.offset + curr.length != nxt.offset)


def _hex(value: int) -> str:
    """C's ``%#-16x``."""
    return f"{'0' if value == 0 else hex(value):<16}"


def dump_map_entry(output: str, e: MapEntry, nxt: MapEntry | None) -> str:
    """The text for one range; raises ImgError (after nothing is printed for it) where the
    human format cannot show a data range without a host offset."""
    if output == "human":
        if e.data and not e.has_offset:
            raise ImgError("File contains external, encrypted or compressed clusters.")
        text = ""
        if e.data and not e.zero:
            offset = e.offset if e.has_offset else 0
            text = f"{_hex(e.start)}{_hex(e.length)}{_hex(offset)}{e.filename or ''}\n"
        # The human format does not tell 0, ZERO and ZERO|DATA apart: let them merge.
        if nxt is not None and (not nxt.data or nxt.zero):
            nxt.data = False
            nxt.zero = True
        return text
    text = (
        f'{{ "start": {e.start}, "length": {e.length}, "depth": {e.depth}, '
        f'"present": {_bool(e.present)}, "zero": {_bool(e.zero)}, "data": {_bool(e.data)}'
    )
    if e.has_offset:
        text += f', "offset": {e.offset}'
    text += "}"
    if nxt is not None:
        text += ",\n"
    return text


def _bool(value: bool) -> str:
    return "true" if value else "false"


def map_image(
    root: BlockNode,
    start_offset: int,
    max_length: int | None,
    output: str,
    out: Callable[[str], object],
) -> None:
    """img_map's loop, writing through ``write`` as it goes (a failure keeps what was
    already printed, as qemu-img's does)."""
    from qio.block.coroutine import scheduler

    length = root.getlength()
    if max_length is not None:
        length = min(start_offset + max_length, length)
    curr = MapEntry(start=start_offset)
    while curr.start + curr.length < length:
        offset = curr.start + curr.length
        try:
            nxt = scheduler.run_sync(get_block_status(root, offset, length - offset))
        except BlockError as exc:
            raise ImgError(f"Could not read file metadata: {os.strerror(exc.errno)}") from None
        if entry_mergeable(curr, nxt):
            curr.length += nxt.length
            continue
        if curr.length > 0:
            out(dump_map_entry(output, curr, nxt))
        curr = nxt
    out(dump_map_entry(output, curr, None))


def run(argv: list[str]) -> int:
    options, operands = parse_command_line(argv, ":f:s:l:hU", LONGOPTS)
    fmt: str | None = None
    output: str | None = None
    image_opts = force_share = False
    start_offset = 0
    max_length: int | None = None
    for key, value in options:
        if key == "h":
            from qio.img.main import help_text

            sys.stdout.write(help_text())
            return 0
        if key == "f":
            fmt = value
        elif key == "U":
            force_share = True
        elif key == "output":
            output = value
        elif key == "s":
            start_offset = cvtnum("start offset", str(value))
        elif key == "l":
            max_length = cvtnum("max length", str(value))
        elif key == "image-opts":
            image_opts = True
    if len(operands) != 1:
        raise usage_error("Expecting one image file name")
    filename = operands[0]
    try:
        output_format = parse_output_format(output)
    except ImgError as exc:
        error(exc.message)
        return 1
    image = open_image(OpenSpec(filename, fmt, image_opts, force_share=force_share))
    try:
        if output_format == "human":
            sys.stdout.write("%-16s%-16s%-16s%s\n" % ("Offset", "Length", "Mapped to", "File"))
        else:
            sys.stdout.write("[")
        try:
            map_image(image.root, start_offset, max_length, output_format, sys.stdout.write)
        except ImgError as exc:
            error(exc.message)
            return 1
        if output_format == "json":
            sys.stdout.write("]\n")
    finally:
        image.close()
    return 0
