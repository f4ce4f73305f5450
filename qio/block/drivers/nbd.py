"""The ``nbd`` protocol driver: an export of an NBD server as a block node (QEMU's block/nbd.c).

Filenames and options are parsed in ``qio/nbd/address.py``, the wire conversation lives in
``qio/nbd/client.py``; this module maps block requests onto NBD commands the way QEMU does:

* limits from the server's block sizes (alignment 1 when block status is available, at most
  32 MiB per read or write);
* FUA, write-zeroes (``NO_HOLE`` unless the caller may unmap, ``FAST_ZERO`` for no-fallback
  requests), trim, flush only when the server advertises them;
* block status from ``base:allocation`` (everything is data without it);
* reads past an export whose size is not a multiple of 512 are zero-filled locally.

The node's ``format_name`` is ``nbd`` and its ``protocol_name`` ``nbd+unix``: QEMU registers
three nbd drivers and ``driver=nbd`` finds the last one, so qemu-io's ``info`` prints
``format name: nbd`` then ``format name: nbd+unix``.  Sockets block inside the hooks; the
virtual clock is charged as for the file driver.
"""

from __future__ import annotations

import errno

from qio.block.coroutine import COST_FLUSH, COST_PER_MIB, COST_READ, COST_WRITE, scheduler
from qio.block.node import SECTOR, BlockNode, BlockStatus, DriverInfo, ReqFlags, zero_fill
from qio.block.options import Options
from qio.block.payload import WriteData
from qio.errors import BlockError, OpenError
from qio.nbd import address as nbd_address
from qio.nbd import protocol as p
from qio.nbd.client import ClientConnection, NbdError, RequestError

_MIB = float(1 << 20)
_INT_MAX = (1 << 31) - 1


class NbdNode(BlockNode):
    format_name = "nbd"
    protocol_name = "nbd+unix"

    conn: ClientConnection | None = None

    @classmethod
    def parse_filename(cls, filename: str, options: Options) -> None:
        options.pop("filename")
        nbd_address.parse_filename(filename, options)

    async def open(self, options: Options) -> None:
        for key in ("reconnect-delay", "open-timeout"):
            options.pop_int(key, 0)
        nbd_address.apply_legacy_options(options)
        address = nbd_address.socket_address(options)
        export = options.pop_str("export")
        if export is not None and len(export.encode()) > p.MAX_STRING_SIZE:
            raise OpenError("export name too long to send to server")
        tls_creds = options.pop_str("tls-creds")
        if tls_creds is not None:
            raise OpenError(f"No TLS credentials with id '{tls_creds}'")
        options.pop("tls-hostname")
        bitmap = options.pop_str("x-dirty-bitmap")
        if bitmap is not None and len(bitmap.encode()) > p.MAX_STRING_SIZE:
            raise OpenError("x-dirty-bitmap query too long to send to server")
        self.filename = nbd_address.pseudo_filename(address, export)
        self.options.pop("filename", None)
        try:
            conn = ClientConnection.open(address, export or "", bitmap or p.BASE_ALLOCATION)
        except NbdError as exc:
            raise OpenError(exc.message, exc.errno) from None
        info = conn.info
        if bitmap is not None and not info.base_allocation:
            conn.close()
            raise OpenError("Could not open image: Invalid argument")
        if info.flags & p.FLAG_READ_ONLY and self.flags.read_write:
            # QEMU checks this without an error object, hence the generic text.
            conn.close()
            raise OpenError("Could not open image: Permission denied", errno.EACCES)
        self.conn = conn
        self._set_limits()

    def _set_limits(self) -> None:
        assert self.conn is not None
        info = self.conn.info
        minimum = info.min_block
        if not minimum:
            minimum = 1 if info.size % SECTOR or info.base_allocation else SECTOR
        maximum = min(p.MAX_BUFFER_SIZE, info.max_block or p.MAX_BUFFER_SIZE)
        self.request_alignment = minimum
        self.max_transfer = maximum
        self.max_pwrite_zeroes = maximum
        self.max_pdiscard = _INT_MAX - _INT_MAX % minimum
        self.supports_fua = bool(info.flags & p.FLAG_SEND_FUA)

    # -- helpers ------------------------------------------------------------------------------
    def _connection(self) -> ClientConnection:
        if self.conn is None:
            raise BlockError(errno.EIO)
        return self.conn

    @property
    def _server_flags(self) -> int:
        return self._connection().info.flags

    # -- hooks --------------------------------------------------------------------------------
    def drv_getlength(self) -> int:
        return self._connection().info.size

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        conn = self._connection()
        size = conn.info.size
        length = len(buf)
        scheduler.charge(COST_READ + length / _MIB * COST_PER_MIB)
        if offset >= size:
            # The block layer rounds the length up to a sector; the tail is ours to invent.
            zero_fill(buf)
            return
        if offset + length > size:
            zero_fill(buf[size - offset :])
            buf = buf[: size - offset]
        try:
            conn.read(offset, buf)
        except RequestError as exc:
            raise BlockError(exc.errno) from None

    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        conn = self._connection()
        scheduler.charge(COST_WRITE + len(data) / _MIB * COST_PER_MIB)
        fua = bool(flags & ReqFlags.FUA) and bool(conn.info.flags & p.FLAG_SEND_FUA)
        try:
            conn.write(offset, data, fua)
        except RequestError as exc:
            raise BlockError(exc.errno) from None

    async def drv_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        conn = self._connection()
        server = conn.info.flags
        if not server & p.FLAG_SEND_WRITE_ZEROES:
            raise BlockError(errno.ENOTSUP)
        if flags & ReqFlags.NO_FALLBACK and not server & p.FLAG_SEND_FAST_ZERO:
            raise BlockError(errno.ENOTSUP)
        scheduler.charge(COST_WRITE)
        wire = 0
        if flags & ReqFlags.FUA and server & p.FLAG_SEND_FUA:
            wire |= p.CMD_FLAG_FUA
        if not flags & ReqFlags.MAY_UNMAP:
            wire |= p.CMD_FLAG_NO_HOLE
        if flags & ReqFlags.NO_FALLBACK:
            wire |= p.CMD_FLAG_FAST_ZERO
        try:
            conn.write_zeroes(offset, length, wire)
        except RequestError as exc:
            raise BlockError(exc.errno) from None

    async def drv_pdiscard(self, offset: int, length: int) -> None:
        conn = self._connection()
        if not conn.info.flags & p.FLAG_SEND_TRIM or not length:
            return
        scheduler.charge(COST_WRITE)
        try:
            conn.trim(offset, length)
        except RequestError as exc:
            raise BlockError(exc.errno) from None

    async def drv_flush_to_os(self) -> None:
        conn = self._connection()
        if not conn.info.flags & p.FLAG_SEND_FLUSH:
            return
        scheduler.charge(COST_FLUSH)
        try:
            conn.flush()
        except RequestError as exc:
            raise BlockError(exc.errno) from None

    async def drv_block_status(
        self, offset: int, length: int, want_zero: bool
    ) -> BlockStatus | None:
        conn = self._connection()
        info = conn.info
        if not info.base_allocation:
            return BlockStatus(length, data=True, offset=offset, node=self)
        if offset >= info.size:
            # Only the sector-rounding tail lies here: zeroes, with no offset to report.
            return BlockStatus(length, zero=True)
        ask = min(length, info.size - offset, _INT_MAX - _INT_MAX % self.request_alignment)
        scheduler.charge(COST_READ)
        try:
            run, state = conn.block_status(offset, ask)
        except RequestError as exc:
            raise BlockError(exc.errno) from None
        return BlockStatus(
            run,
            data=not state & p.STATE_HOLE,
            zero=bool(state & p.STATE_ZERO),
            offset=offset,
            node=self,
        )

    async def drv_truncate(self, length: int, exact: bool, prealloc: str) -> None:
        size = self._connection().info.size
        if length != size and exact:
            raise OpenError("Cannot resize NBD nodes", errno.ENOTSUP)
        if length > size:
            raise OpenError("Cannot grow NBD nodes", errno.EINVAL)

    async def drv_reopen(self, options: Options, read_write: bool) -> None:
        if read_write and self._server_flags & p.FLAG_READ_ONLY:
            raise OpenError("Can't reopen read-only NBD mount as read/write", errno.EACCES)

    def drv_get_info(self) -> DriverInfo | None:
        return None

    async def drv_close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def describe(self) -> str:
        return f"nbd {self.filename}"
