"""The shell's bottom toolbar: the open image, its driver graph, size, mode, mismatches."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qio.numbers import cvtstr

if TYPE_CHECKING:
    from qio.block.node import BlockNode
    from qio.session import Session

SEPARATOR = " │ "


def graph_summary(node: BlockNode, short: bool = False) -> str:
    """The driver graph below ``node`` on one line.

    A leaf shows its driver and file name (``file a.img``); a node whose only child is its
    ``file`` is an arrow (``qcow2 → file b.qcow2``); any other node lists its children by
    role: ``blkverify(raw: file a.img, test: qcow2 → file b.qcow2)``.  ``short`` keeps only
    the last component of file names.
    """
    children = node.children
    if not children:
        name = os.path.basename(node.filename) if short else node.filename
        return f"{node.format_name} {name}" if name else node.format_name
    if list(children) == ["file"]:
        return f"{node.format_name} → {graph_summary(children['file'], short)}"
    inner = ", ".join(f"{role}: {graph_summary(child, short)}" for role, child in children.items())
    return f"{node.format_name}({inner})"


def toolbar_text(session: Session, width: int | None = None) -> str:
    """One line: image │ graph │ virtual size │ read-only/read-write │ mismatches.

    When that is wider than ``width``, file names lose their directories.
    """
    blk = session.blk
    if blk is None:
        return "no image open (open [-r] [-o options] FILE)"
    root = blk.root
    name = blk.name or root.filename or "(image options)"
    text = _toolbar(session, name, graph_summary(root))
    if width is not None and len(text) > width:
        text = _toolbar(session, os.path.basename(name) or name, graph_summary(root, short=True))
    return text


def _toolbar(session: Session, name: str, graph: str) -> str:
    blk = session.blk
    assert blk is not None
    parts = [name, graph]
    if blk.available:
        parts.append(cvtstr(float(blk.getlength())))
    else:
        parts.append("no medium")
    parts.append("read-only" if blk.read_only else "read-write")
    count = len(session.mismatches.entries)
    parts.append(f"{count} mismatch{'es' if count != 1 else ''}")
    return SEPARATOR.join(parts)
