"""The shell's bottom toolbar: the open image, its driver graph, size, mode, mismatches."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qio.numbers import cvtstr

if TYPE_CHECKING:
    from qio.block.node import BlockNode
    from qio.session import Session

SEPARATOR = " │ "


def graph_summary(node: BlockNode) -> str:
    """The driver graph below ``node`` on one line.

    A leaf shows its driver and file name (``file a.img``); a node whose only child is its
    ``file`` is an arrow (``qcow2 → file b.qcow2``); any other node lists its children by
    role: ``blkverify(raw: file a.img, test: qcow2 → file b.qcow2)``.
    """
    children = node.children
    if not children:
        return f"{node.format_name} {node.filename}" if node.filename else node.format_name
    if list(children) == ["file"]:
        return f"{node.format_name} → {graph_summary(children['file'])}"
    inner = ", ".join(f"{role}: {graph_summary(child)}" for role, child in children.items())
    return f"{node.format_name}({inner})"


def toolbar_text(session: Session) -> str:
    """One line: image │ graph │ virtual size │ read-only/read-write │ mismatches."""
    blk = session.blk
    if blk is None:
        return "no image open (open [-r] [-o options] FILE)"
    root = blk.root
    name = blk.name or root.filename or "(image options)"
    parts = [name, graph_summary(root)]
    if blk.available:
        parts.append(cvtstr(float(blk.getlength())))
    else:
        parts.append("no medium")
    parts.append("read-only" if blk.read_only else "read-write")
    count = len(session.mismatches.entries)
    parts.append(f"{count} mismatch{'es' if count != 1 else ''}")
    return SEPARATOR.join(parts)
