"""The block graph as data: a tree for the ``graph`` command, the shell's toolbar and teaching.

``graph(root)`` returns a ``GraphNode`` tree (driver, node name, role, what a leaf opened, the
node's own options, children); ``one_line(tree)`` folds it into one line:

    blkverify(raw: file a.img, test: qcow2 → file b.qcow2)

A node with a single ``file`` child is written ``driver → child``; other children are listed
in parentheses with their roles.
"""

from __future__ import annotations

from typing import Any

from qio.block.node import BlockNode
from qio.results import GraphNode

# Options that say how children were found, not what the node is.
_HIDDEN_OPTIONS = ("driver", "filename", "x-raw", "x-image", "config", "node-name")


def graph(root: BlockNode, role: str | None = None) -> GraphNode:
    children = tuple(graph(child, name) for name, child in root.children.items())
    return GraphNode(
        role=role,
        node_name=root.node_name,
        driver=root.format_name,
        filename=root.filename,
        options=_own_options(root),
        read_only=root.read_only,
        probed=root.probed,
        leaf_label=_leaf_label(root),
        children=children,
    )


def _own_options(node: BlockNode) -> dict[str, Any]:
    """The node's options, without those that only say which children it has."""
    prefixes = tuple(f"{name}." for name in node.children) + ("inject-error.", "set-state.")
    return {
        key: value
        for key, value in node.options.items()
        if key not in _HIDDEN_OPTIONS
        and key not in node.children
        and not key.startswith(prefixes)
        and value is not None
    }


def _leaf_label(node: BlockNode) -> str:
    if node.children or not node.filename or "://" in node.filename:
        return ""
    return node.filename


def label(node: GraphNode) -> str:
    """``driver`` or ``driver filename`` (leaves name what they opened)."""
    return f"{node.driver} {node.leaf_label}" if node.leaf_label else node.driver


def one_line(node: GraphNode) -> str:
    if not node.children:
        return label(node)
    if len(node.children) == 1 and node.children[0].role == "file":
        return f"{node.driver} → {one_line(node.children[0])}"
    inner = ", ".join(f"{child.role}: {one_line(child)}" for child in node.children)
    return f"{node.driver}({inner})"


def find_node(root: BlockNode, cls: type[BlockNode]) -> BlockNode | None:
    """The first node of class ``cls`` in the graph (depth first from the root)."""
    for node in root.walk():
        if isinstance(node, cls):
            return node
    return None
