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
    if "auto-read-only" in options:  # a runtime option: checked, then taken as it is
        to_bool("auto-read-only", options.pop("auto-read-only"))
    options.pop("detect-zeroes")
    options.pop("read-only")
    child_options: dict[str, Options] = {}
    for role in list(node.children):
        child_options[role] = options.extract(role)
    if read_write != node.flags.read_write and not read_write:
        # Going read-only: whatever is cached must reach the image first.
        await node.flush()
    await node.drv_reopen(options, read_write)
    _check_unchanged(node, options)
    for role, child in node.children.items():
        if role == "backing":
            # the backing chain keeps its read-only state, but its options are checked too
            _check_unchanged(child, child_options[role])
            continue
        await _reopen_node(child, child_options[role], read_write)
    # Only once the whole subtree accepted the change (a driver below may refuse).
    node.flags.read_write = read_write
    node.refresh_total_sectors()


def _check_unchanged(node: BlockNode, options: Options) -> None:
    """bdrv_reopen_prepare: options nobody handled are fine only when they keep their value
    (compared with the node's open options, as strings: reopen options always are)."""
    for key in options.in_qdict_order():  # QEMU names the first in its QDict's order
        value = options.pop(key)
        if key == "driver" and value == node.format_name:
            continue
        old = node.options.get(key)
        if not (isinstance(old, str) and isinstance(value, str) and old == value):
            raise OpenError(f"Cannot change the option '{key}'")
