"""``reopen``: change read-only state, cache mode and runtime options of an open graph.

Like QEMU's bdrv_reopen, options address the root node (``file.*`` its file child, and so
on); an option a driver cannot change in place is refused with "Cannot change the option".
The backing chain stays read-only whatever the root becomes.
"""

from __future__ import annotations

from qio.block.node import BlockNode
from qio.block.open import DISCARD_MODES
from qio.block.options import Options, to_bool
from qio.errors import OpenError


async def reopen(node: BlockNode, options: Options) -> None:
    read_only = (
        to_bool("read-only", options.pop("read-only")) if "read-only" in options else node.read_only
    )
    if read_only and node.copy_on_read:
        # bdrv_can_set_read_only: copy-on-read writes, so the node must stay writable.
        raise OpenError(f"Can't set node '{node.node_name}' to r/o with copy-on-read enabled")
    await _reopen_node(node, options, not read_only)


async def _reopen_node(node: BlockNode, options: Options, read_write: bool) -> None:
    driver = options.pop_str("driver")
    if driver is not None and driver != node.format_name:
        raise OpenError("Cannot change the option 'driver'")
    if "cache.direct" in options:
        node.flags.direct = to_bool("cache.direct", options.pop("cache.direct"))
    if "cache.no-flush" in options:
        node.flags.no_flush = to_bool("cache.no-flush", options.pop("cache.no-flush"))
    if "discard" in options:
        mode = options.pop_str("discard") or ""
        if mode not in DISCARD_MODES:
            raise OpenError(f"Invalid discard option: {mode}")
        node.flags.unmap = DISCARD_MODES[mode]
    options.pop("detect-zeroes")
    options.pop("read-only")
    child_options: dict[str, Options] = {}
    for role in list(node.children):
        child_options[role] = options.extract(role)
    if read_write != node.flags.read_write and not read_write:
        # Going read-only: whatever is cached must reach the image first.
        await node.flush()
    await node.drv_reopen(options, read_write)
    leftover = options.first_key()
    if leftover is not None:
        raise OpenError(f"Cannot change the option '{leftover}'")
    for role, child in node.children.items():
        if role == "backing":
            continue
        await _reopen_node(child, child_options[role], read_write)
    # Only once the whole subtree accepted the change (a driver below may refuse).
    node.flags.read_write = read_write
    node.refresh_total_sectors()
