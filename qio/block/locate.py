"""Where does a guest offset really live?  The ``locate`` command's answer, layer by layer.

Each layer of the graph turns an offset into work for its children: raw shifts it by its
``offset`` option, qcow2 looks it up in its L1 and L2 tables and either names a host offset in
its file (or data file), answers zeros itself, or passes the read to its backing image at the
same offset; blkverify asks both its children; a file node names the byte of the host file and
whether the host file system has it allocated.  ``locate`` walks that path for one byte and
returns it as data (a ``LocateStep`` tree); the renderers draw it.

Nothing here changes the image: it reads metadata (through the same caches requests use) and
asks block status, as a read of that byte would.
"""

from __future__ import annotations

from qio.block.node import BlockNode
from qio.results import LocateStep


async def locate(node: BlockNode, offset: int, role: str | None = None) -> LocateStep:
    """The path of the byte at ``offset`` of ``node`` down to the host files."""
    from qio.block.drivers.blkverify import BlkverifyNode
    from qio.block.drivers.file import FileNode
    from qio.block.drivers.raw import RawNode
    from qio.block.qcow2.driver import Qcow2Node

    if offset >= node.getlength():
        return _step(node, role, offset, [f"offset is past the end of the node ({node.getlength()})"])
    if isinstance(node, Qcow2Node):
        return await _qcow2(node, offset, role)
    if isinstance(node, RawNode):
        facts = []
        if node.offset:
            facts.append(f"raw 'offset' option {node.offset}: the byte is at {_n(offset + node.offset)}")
        return await _pass_down(node, role, offset, facts, "file", offset + node.offset)
    if isinstance(node, FileNode):
        return await _file(node, offset, role)
    if isinstance(node, BlkverifyNode):
        children = (
            await locate(node.raw, offset, "raw"),
            await locate(node.test, offset, "test"),
        )
        return _step(node, role, offset, ["reads go to both children and are compared"], children)
    child_role, child = _first_child(node)
    if child is None:
        status = await node.block_status(offset, 1, want_zero=True)
        what = "zeros" if status.zero else "data"
        return _step(node, role, offset, [f"the driver answers reads itself ({what})"])
    return await _pass_down(node, role, offset, ["passes requests through unchanged"], child_role, offset)


def _first_child(node: BlockNode) -> tuple[str, BlockNode | None]:
    for name, child in node.children.items():
        return name, child
    return "", None


def _step(
    node: BlockNode,
    role: str | None,
    offset: int,
    facts: list[str],
    children: tuple[LocateStep, ...] = (),
) -> LocateStep:
    return LocateStep(
        role=role,
        driver=node.format_name,
        node_name=node.node_name,
        filename=node.filename or "",
        offset=offset,
        facts=tuple(facts),
        children=children,
    )


async def _pass_down(
    node: BlockNode, role: str | None, offset: int, facts: list[str], child_role: str, child_offset: int
) -> LocateStep:
    child = node.children.get(child_role)
    if child is None:
        return _step(node, role, offset, facts)
    return _step(node, role, offset, facts, (await locate(child, child_offset, child_role),))


def _n(value: int) -> str:
    return f"{value} (0x{value:x})"


async def _file(node: BlockNode, offset: int, role: str | None) -> LocateStep:
    status = await node.block_status(offset, 1, want_zero=True)
    where = "allocated on the host" if status.data else "a hole in the host file (reads as zeros)"
    return _step(node, role, offset, [f"host file byte {_n(offset)}: {where}"])


async def _qcow2(node: BlockNode, offset: int, role: str | None) -> LocateStep:
    from qio.block.qcow2.cluster import (
        SC_COMPRESSED,
        SC_NAMES,
        SC_NORMAL,
        SC_UNALLOCATED_ALLOC,
        SC_UNALLOCATED_PLAIN,
        SC_ZERO_ALLOC,
        SC_ZERO_PLAIN,
    )
    from qio.block.qcow2.driver import Qcow2Node
    from qio.block.qcow2.layout import L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED

    assert isinstance(node, Qcow2Node)
    cmap = node.map
    cs = cmap.cluster_size
    l1_index, l2_index = cmap.l1_index(offset), cmap.l2_index(offset)
    within = cmap.offset_in_cluster(offset)
    facts = [
        f"guest cluster {offset >> cmap.cluster_bits} ({cs} bytes per cluster), "
        f"byte {within} of it"
    ]
    l1_entry = cmap.l1_table[l1_index] if l1_index < cmap.l1_size else 0
    l2_offset = l1_entry & L1E_OFFSET_MASK
    copied = " COPIED" if l1_entry & OFLAG_COPIED else ""
    facts.append(
        f"L1[{l1_index}] = 0x{l1_entry:016x}"
        + (f": L2 table at {_n(l2_offset)}{copied}" if l2_offset else ": no L2 table")
    )
    entry = bitmap = 0
    if l2_offset:
        table = await cmap.load_l2(l2_offset)
        entry, bitmap = cmap.entry(table, l2_index), cmap.bitmap(table, l2_index)
        text = f"L2[{l2_index}] = 0x{entry:016x}"
        if cmap.extended:
            text += f", bitmap 0x{bitmap:016x} (subcluster {cmap.sc_index(offset)})"
        facts.append(text)
    stype = cmap.subcluster_type(entry, bitmap, cmap.sc_index(offset))
    facts.append(f"type: {SC_NAMES[stype]}" + (" (COPIED)" if entry & OFLAG_COPIED else ""))
    children: list[LocateStep] = []
    if stype == SC_NORMAL:
        host_cluster = entry & L2E_OFFSET_MASK
        host = host_cluster + within
        target = node.data_file
        if node.has_data_file:
            facts.append(f"data at {_n(host)} of the external data file")
        else:
            refcount = await node.refcounts.get(host_cluster >> cmap.cluster_bits)
            facts.append(f"data at host offset {_n(host)}; host cluster refcount {refcount}")
        role_name = next((r for r, c in node.children.items() if c is target), "file")
        children.append(await locate(target, host, role_name))
    elif stype == SC_COMPRESSED:
        coffset, nbytes = node.compressed.parse(entry)
        facts.append(
            f"compressed: {nbytes} bytes at host offset {_n(coffset)} inflate to the whole "
            f"cluster; the byte is {within} bytes into the inflated data"
        )
        children.append(await locate(node.image_file, coffset, "file"))
    elif stype in (SC_ZERO_PLAIN, SC_ZERO_ALLOC):
        facts.append("reads as zeros without touching any file (zero flag)")
    elif stype in (SC_UNALLOCATED_PLAIN, SC_UNALLOCATED_ALLOC):
        backing = node.children.get("backing")
        if backing is not None:
            facts.append("not allocated here: the read goes to the backing image, same offset")
            if offset < backing.getlength():
                children.append(await locate(backing, offset, "backing"))
            else:
                facts.append("the backing image is shorter: reads as zeros")
        else:
            facts.append("not allocated and no backing image: reads as zeros")
    else:
        facts.append("the entry is invalid: reads fail with EIO")
    return _step(node, role, offset, facts, tuple(children))
