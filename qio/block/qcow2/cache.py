"""A bounded write-back cache of qcow2 metadata tables (QEMU's Qcow2Cache).

Two instances serve a qcow2 node: one for L2 tables, one for refcount blocks.  Tables are
whole clusters, kept as host-order 64-bit words (L2) or as raw bytes (refcount blocks, whose
entry width varies).  Dirty tables are written back on flush, on eviction and at close.

Write ordering is what keeps an image consistent after a crash: a cache can *depend* on the
other one, and is then only written after the other was written and the file flushed.  New
clusters get their refcount before an L2 entry points at them (L2 depends on refcounts);
freed clusters lose their L2 reference before their refcount drops (refcounts depend on L2).
"""

from __future__ import annotations

import errno
import sys
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING

from qio.errors import BlockError

if TYPE_CHECKING:
    from qio.block.qcow2.driver import Qcow2Node

_BIG_ENDIAN_HOST = sys.byteorder == "big"


class Table:
    """One cached table: ``words`` for L2 tables, ``raw`` for refcount blocks."""

    __slots__ = ("offset", "words", "raw", "dirty")

    def __init__(self, offset: int, words: array | None, raw: bytearray | None) -> None:
        self.offset = offset
        self.words = words
        self.raw = raw
        self.dirty = False

    def to_bytes(self) -> bytes:
        if self.words is not None:
            if _BIG_ENDIAN_HOST:
                return self.words.tobytes()
            swapped = array("Q", self.words)
            swapped.byteswap()
            return swapped.tobytes()
        assert self.raw is not None
        return bytes(self.raw)


class TableCache:
    def __init__(self, node: Qcow2Node, kind: str, capacity: int) -> None:
        self.node = node
        self.kind = kind  # "l2" or "refblock"
        self.capacity = max(2, capacity)
        self.tables: OrderedDict[int, Table] = OrderedDict()
        self.depends_on: TableCache | None = None

    # -- lookup ------------------------------------------------------------------------------
    def peek(self, offset: int) -> Table | None:
        """The cached table, without counting as a use (membership tests)."""
        return self.tables.get(offset)

    def hit(self, offset: int) -> Table | None:
        """The cached table, counted as a use (LRU order) as ``get`` would; None on a miss."""
        table = self.tables.get(offset)
        if table is not None:
            self.tables.move_to_end(offset)
        return table

    async def get(self, offset: int) -> Table:
        table = self.tables.get(offset)
        if table is not None:
            self.tables.move_to_end(offset)
            return table
        await self._make_room()
        size = self.node.cluster_size
        buf = bytearray(size)
        if self.kind == "l2":
            await self.node.fire("l2_load")
        await self.node.image_file.preadv(offset, memoryview(buf))
        table = self._wrap(offset, buf)
        self.tables[offset] = table
        return table

    async def get_empty(self, offset: int) -> Table:
        """A zeroed table at ``offset`` without reading it (a newly allocated cluster)."""
        table = self.tables.pop(offset, None)
        if table is None:
            await self._make_room()
        table = self._wrap(offset, bytearray(self.node.cluster_size))
        self.tables[offset] = table
        return table

    def _wrap(self, offset: int, buf: bytearray) -> Table:
        if self.kind == "l2":
            words = array("Q")
            words.frombytes(buf)
            if not _BIG_ENDIAN_HOST:
                words.byteswap()
            return Table(offset, words, None)
        return Table(offset, None, buf)

    async def _make_room(self) -> None:
        while len(self.tables) >= self.capacity:
            # Evict the least recently used table, writing it back first if needed.
            victim_offset, victim = next(iter(self.tables.items()))
            if victim.dirty:
                await self.write_table(victim)
            self.tables.pop(victim_offset, None)

    # -- dirtiness and ordering ----------------------------------------------------------------
    def mark_dirty(self, table: Table) -> None:
        table.dirty = True

    def set_dependency(self, other: TableCache) -> None:
        """Write ``other`` (and flush the file) before writing any table of this cache."""
        if other.depends_on is not None:
            # Break a cycle the way QEMU does: the other cache's dependency goes first.
            return
        self.depends_on = other

    async def _write_dependency(self) -> None:
        dep = self.depends_on
        if dep is None:
            return
        await dep.flush()
        self.depends_on = None  # only once the other cache is safely on disk, as QEMU

    async def write_table(self, table: Table) -> None:
        if not table.dirty:
            return
        await self._write_dependency()
        node = self.node
        await node.check_metadata_write(table.offset, node.cluster_size, self.kind)
        await node.fire("l2_update" if self.kind == "l2" else "refblock_update_part")
        await node.image_file.pwritev(table.offset, memoryview(table.to_bytes()))
        table.dirty = False

    async def write(self) -> None:
        """Write every dirty table (qcow2_cache_write): a failure does not stop the others;
        the error reported is the last one, unless one was ENOSPC."""
        error: BlockError | None = None
        for table in list(self.tables.values()):
            if table.dirty:
                try:
                    await self.write_table(table)
                except BlockError as exc:
                    if error is None or error.errno != errno.ENOSPC:
                        error = exc
        if error is not None:
            raise error

    async def flush(self) -> None:
        """Write every dirty table and flush the file (qcow2_cache_flush)."""
        await self.write()
        await self.node.image_file.flush()

    def discard(self, offset: int) -> None:
        """Forget a table whose cluster was freed (its contents no longer matter)."""
        self.tables.pop(offset, None)

    def drop_all(self) -> None:
        self.tables.clear()

    def has_dirty(self) -> bool:
        return any(t.dirty for t in self.tables.values())
