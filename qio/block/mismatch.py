"""How a blkverify mismatch travels from the driver to the user.

blkverify compares its two children inside a request; what it finds must reach the command
that issued the request.  qemu-io 7.2 ends the process (``exit(1)`` inside the driver): that is
``BlkverifyExit``, a ``FatalError``.  In qio's report mode (blkverify option
``mismatch=report``) the request fails instead: ``BlkverifyMismatch``, a ``BlockError``
(EIO) the command reports and the session records.

Both carry a ``Mismatch`` naming the request *as blkverify saw it*.  When a command moves one
large request in several pieces (qio's read and write stream requests above 4 MiB), the piece
blkverify saw is not the request qemu-io would name, so the command's backend re-bases the
mismatch on the whole request (``rebase``): it replays what every node between the root and
blkverify does to a request (alignment padding, splitting at ``max_transfer``, offset windows)
to find the span qemu-io would have printed.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import TYPE_CHECKING

from qio.block.coroutine import FatalError
from qio.errors import BlockError
from qio.results import Mismatch

if TYPE_CHECKING:
    from qio.block.node import BlockNode


class MismatchCarrier(Exception):
    """What both mismatch exceptions share: the mismatch and the blkverify node."""

    mismatch: Mismatch
    node: BlockNode

    def rebase(self, root: BlockNode, offset: int, length: int) -> None:
        """Name the whole request (``offset``, ``length`` at ``root``) instead of a piece."""
        focus = self.mismatch.offset
        if focus is None:
            focus = self.mismatch.request_offset
        span = request_span_at(root, self.node, offset, length, focus)
        if span is not None:
            self._replace(
                dataclasses.replace(self.mismatch, request_offset=span[0], request_bytes=span[1])
            )

    def _replace(self, mismatch: Mismatch) -> None:
        self.mismatch = mismatch


class BlkverifyMismatch(MismatchCarrier, BlockError):
    """Report mode: the request fails with EIO and the mismatch is shown and recorded."""

    def __init__(self, mismatch: Mismatch, node: BlockNode) -> None:
        BlockError.__init__(self, errno.EIO)
        self.mismatch = mismatch
        self.node = node


class BlkverifyExit(MismatchCarrier, FatalError):
    """qemu-io's behaviour: print the mismatch line on stderr and end with status 1."""

    def __init__(self, mismatch: Mismatch, node: BlockNode) -> None:
        FatalError.__init__(self, mismatch.qemu_line(), 1)
        self.mismatch = mismatch
        self.node = node

    def _replace(self, mismatch: Mismatch) -> None:
        self.mismatch = mismatch
        self.message = mismatch.qemu_line()
        self.args = (self.message,)


def request_span_at(
    root: BlockNode, target: BlockNode, offset: int, length: int, focus: int
) -> tuple[int, int] | None:
    """The request ``target``'s driver receives for a request (offset, length) at ``root``.

    Every node on the way pads to its request alignment and splits at its ``max_transfer``
    (``focus``, an offset at ``target``, picks the piece); a node passes a request on to the
    next one with a fixed offset shift.  None when some node on the way does not pass requests
    on linearly (a format that maps clusters), where no single span exists.
    """
    path = _linear_path(root, target)
    if path is None:
        return None
    focus -= sum(shift for _, shift in path)  # the focus as an offset at ``root``
    for node, shift in path:
        align = node.request_alignment
        if align > 1:
            end = -(-(offset + length) // align) * align
            offset -= offset % align
            length = end - offset
        limit = node.max_transfer
        if limit and length > limit:
            piece = min(max(0, (focus - offset) // limit), (length - 1) // limit)
            offset += piece * limit
            length = min(limit, length - piece * limit)
        offset += shift
        focus += shift
    return offset, length


def _linear_path(root: BlockNode, target: BlockNode) -> list[tuple[BlockNode, int]] | None:
    """(node, shift to the next node) from ``root`` down to ``target`` (shift 0 there)."""
    if root is target:
        return [(target, 0)]
    for child in root.children.values():
        shift = root.child_offset(child)
        if shift is None:
            continue
        rest = _linear_path(child, target)
        if rest is not None:
            return [(root, shift), *rest]
    return None
