"""A blocking NBD client connection: connect, negotiate, one request at a time.

The ``nbd`` block driver (``qio/block/drivers/nbd.py``) owns one ``ClientConnection``.  The
handshake follows what QEMU 7.2's client does, so a server sees the same conversation from
qio as from qemu-io: fixed newstyle, ``NBD_OPT_STRUCTURED_REPLY``, ``NBD_OPT_SET_META_CONTEXT``
for ``base:allocation``, then ``NBD_OPT_GO`` asking for block sizes (falling back to
``NBD_OPT_LIST`` + ``NBD_OPT_EXPORT_NAME`` for servers without ``NBD_OPT_GO``).  Error texts are
QEMU's, because qemu-io prints them after ``can't open device NAME: ``.

Two kinds of failure are kept apart: ``NbdError`` (the conversation is broken; the connection is
unusable afterwards) and ``RequestError`` (the server answered one request with an error).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from qio.nbd import protocol as p

# How long one socket operation may block.  QEMU has no limit; qio gives up eventually so a
# stuck server cannot hang a script forever.
SOCKET_TIMEOUT = 60.0


class NbdError(Exception):
    """The connection cannot be used (QEMU's Error text, possibly with a hint line)."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.message = message
        self.errno = err


class RequestError(Exception):
    """The server failed one request; ``errno`` is the host errno it maps to."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message or os.strerror(err))
        self.errno = err
        self.message = message


@dataclass(frozen=True)
class SocketAddress:
    """QEMU's SocketAddress for the two transports qio speaks: ``inet`` and ``unix``."""

    type: str  # "inet" or "unix"
    host: str = ""
    port: str = ""
    path: str = ""

    def describe(self) -> str:
        """How QEMU names the address in "Failed to connect to '...'"."""
        if self.type == "unix":
            return self.path
        return f"{self.host}:{self.port}"


@dataclass
class ExportInfo:
    """What the handshake learned about the export."""

    name: str
    size: int = 0
    flags: int = 0
    min_block: int = 0
    opt_block: int = 0
    max_block: int = 0
    structured: bool = False
    base_allocation: bool = False
    context_id: int = 0


def connect(address: SocketAddress, timeout: float = SOCKET_TIMEOUT) -> socket.socket:
    """Open the stream socket, with QEMU's messages for resolution and connection errors."""
    if address.type == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            if not address.path:
                # Linux refuses an empty sun_path the way QEMU passes it: ECONNREFUSED.
                raise ConnectionRefusedError(errno.ECONNREFUSED, "")
            sock.connect(address.path)
        except OSError as exc:
            sock.close()
            raise NbdError(
                f"Failed to connect to '{address.path}': {_strerror(exc)}", _errno(exc)
            ) from None
        return sock
    try:
        candidates = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NbdError(
            f"address resolution failed for {address.host}:{address.port}: {exc.strerror}"
        ) from None
    except UnicodeError:
        raise NbdError(
            f"address resolution failed for {address.host}:{address.port}: "
            "Name or service not known"
        ) from None
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in candidates:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert last is not None
    raise NbdError(f"Failed to connect to '{address.describe()}': {_strerror(last)}", _errno(last))


def _errno(exc: OSError) -> int:
    if isinstance(exc, TimeoutError) or exc.errno is None:
        return errno.ETIMEDOUT
    return exc.errno


def _strerror(exc: OSError) -> str:
    return os.strerror(_errno(exc))


class ClientConnection:
    """One negotiated NBD connection; requests are sent and answered one at a time."""

    def __init__(self, sock: socket.socket, info: ExportInfo) -> None:
        self.sock = sock
        self.info = info
        self.broken: str | None = None  # why the connection is unusable, once it is
        self._next_handle = 1

    # -- set-up ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls, address: SocketAddress, export: str, meta_context: str = p.BASE_ALLOCATION
    ) -> ClientConnection:
        sock = connect(address)
        try:
            info = Negotiation(sock, export, meta_context).run()
        except BaseException:
            sock.close()
            raise
        return cls(sock, info)

    def close(self) -> None:
        """Say goodbye (NBD_CMD_DISC) and drop the socket."""
        if self.sock.fileno() < 0:
            return
        if self.broken is None:
            try:
                self.sock.sendall(p.Request(0, p.CMD_DISC, self._handle(), 0, 0).pack())
            except OSError:
                pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # -- requests -------------------------------------------------------------------------
    def read(self, offset: int, buf: memoryview) -> None:
        """NBD_CMD_READ of ``len(buf)`` bytes into ``buf`` (holes are zero-filled)."""
        handle = self._send(p.Request(0, p.CMD_READ, self._handle(), offset, len(buf)))
        if not self.info.structured:
            self._simple_reply(handle, payload=buf)
            return
        error: RequestError | None = None
        while True:
            flags, kind, length = self._chunk_header(handle)
            payload_done = False
            if kind == p.REPLY_TYPE_OFFSET_DATA:
                if length < 8:
                    self._fail("Protocol error: invalid payload for NBD_REPLY_TYPE_OFFSET_DATA")
                (where,) = struct.unpack(">Q", self._recv(8, "structured reply chunk"))
                size = length - 8
                start = where - offset
                if where < offset or start + size > len(buf) or size == 0:
                    self._fail("Protocol error: server sent data outside requested range")
                self._recv_into(buf[start : start + size], "structured reply chunk")
                payload_done = True
            elif kind == p.REPLY_TYPE_OFFSET_HOLE:
                if length != 12:
                    self._fail("Protocol error: invalid payload for NBD_REPLY_TYPE_OFFSET_HOLE")
                where, size = struct.unpack(">QI", self._recv(12, "structured reply chunk"))
                start = where - offset
                if where < offset or start + size > len(buf) or size == 0:
                    self._fail("Protocol error: server sent hole outside requested range")
                buf[start : start + size] = bytes(size)
                payload_done = True
            elif kind in (p.REPLY_TYPE_ERROR, p.REPLY_TYPE_ERROR_OFFSET):
                error = self._error_payload(length)
                payload_done = True
            elif kind == p.REPLY_TYPE_NONE:
                if not flags & p.REPLY_FLAG_DONE or length:
                    self._fail("Protocol error: NBD_REPLY_TYPE_NONE chunk without the done flag")
                payload_done = True
            if not payload_done:
                self._fail(f"Unexpected reply type: {kind} for CMD_READ")
            if flags & p.REPLY_FLAG_DONE:
                break
        if error is not None:
            raise error

    def write(self, offset: int, data: memoryview, fua: bool) -> None:
        flags = p.CMD_FLAG_FUA if fua else 0
        handle = self._send(
            p.Request(flags, p.CMD_WRITE, self._handle(), offset, len(data)), bytes(data)
        )
        self._status_reply(handle)

    def write_zeroes(self, offset: int, length: int, flags: int) -> None:
        handle = self._send(p.Request(flags, p.CMD_WRITE_ZEROES, self._handle(), offset, length))
        self._status_reply(handle)

    def trim(self, offset: int, length: int) -> None:
        handle = self._send(p.Request(0, p.CMD_TRIM, self._handle(), offset, length))
        self._status_reply(handle)

    def flush(self) -> None:
        handle = self._send(p.Request(0, p.CMD_FLUSH, self._handle(), 0, 0))
        self._status_reply(handle)

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """One extent from ``offset``: (length, base:allocation flags)."""
        handle = self._send(
            p.Request(p.CMD_FLAG_REQ_ONE, p.CMD_BLOCK_STATUS, self._handle(), offset, length)
        )
        extent: tuple[int, int] | None = None
        error: RequestError | None = None
        while True:
            flags, kind, size = self._chunk_header(handle, allow_simple=True)
            if kind == -1:  # a simple reply: only an error is allowed there
                err = flags
                if not err:
                    self._fail("Protocol error: simple reply to NBD_CMD_BLOCK_STATUS")
                raise RequestError(p.nbd_to_errno(err))
            if kind == p.REPLY_TYPE_BLOCK_STATUS:
                if size < 12 or (size - 4) % 8:
                    self._fail("Protocol error: invalid payload for NBD_REPLY_TYPE_BLOCK_STATUS")
                payload = self._recv(size, "structured reply chunk")
                if extent is not None:
                    self._fail("Several BLOCK_STATUS chunks in reply")
                (context,) = struct.unpack_from(">I", payload)
                if context != self.info.context_id:
                    self._fail(
                        f"Protocol error: unexpected context id {context} for "
                        "NBD_REPLY_TYPE_BLOCK_STATUS"
                    )
                ext_len, ext_flags = struct.unpack_from(">II", payload, 4)
                if ext_len == 0:
                    self._fail("Protocol error: server sent status chunk with zero length")
                extent = (min(ext_len, length), ext_flags)
            elif kind in (p.REPLY_TYPE_ERROR, p.REPLY_TYPE_ERROR_OFFSET):
                error = self._error_payload(size)
            elif kind != p.REPLY_TYPE_NONE:
                self._fail(f"Unexpected reply type: {kind} for CMD_BLOCK_STATUS")
            if flags & p.REPLY_FLAG_DONE:
                break
        if error is not None:
            raise error
        if extent is None:
            self._fail("Server did not reply with any status extents")
        assert extent is not None
        return extent

    # -- plumbing -------------------------------------------------------------------------
    def _handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def _send(self, request: p.Request, payload: bytes = b"") -> int:
        if self.broken is not None:
            raise RequestError(errno.EIO, self.broken)
        try:
            self.sock.sendall(request.pack() + payload if len(payload) < 65536 else request.pack())
            if len(payload) >= 65536:
                self.sock.sendall(payload)
        except OSError as exc:
            self._fail(f"Unable to write to socket: {_strerror(exc)}")
        return request.handle

    def _fail(self, message: str) -> None:
        """The conversation is broken: every later request fails with EIO."""
        self.broken = message
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise RequestError(errno.EIO, message)

    def _recv(self, size: int, what: str) -> bytes:
        buf = bytearray(size)
        self._recv_into(memoryview(buf), what)
        return bytes(buf)

    def _recv_into(self, buf: memoryview, what: str) -> None:
        try:
            read_exact(self.sock, buf)
        except NbdError as exc:
            self._fail(f"Failed to read {what}: {exc.message}")

    def _simple_reply(self, handle: int, payload: memoryview | None = None) -> None:
        header = self._recv(p.SIMPLE_REPLY_HEADER.size, "reply")
        magic, err, got = p.SIMPLE_REPLY_HEADER.unpack(header)
        if magic != p.SIMPLE_REPLY_MAGIC:
            self._fail(f"invalid magic (got 0x{magic:x})")
        if got != handle:
            self._fail("unexpected cookie value")
        if err:
            raise RequestError(p.nbd_to_errno(err))
        if payload is not None:
            self._recv_into(payload, "reply payload")

    def _status_reply(self, handle: int) -> None:
        """The reply of a command without data: simple, or structured NONE/ERROR chunks."""
        if not self.info.structured:
            self._simple_reply(handle)
            return
        error: RequestError | None = None
        while True:
            flags, kind, size = self._chunk_header(handle, allow_simple=True)
            if kind == -1:
                if flags:
                    raise RequestError(p.nbd_to_errno(flags))
                return
            if kind in (p.REPLY_TYPE_ERROR, p.REPLY_TYPE_ERROR_OFFSET):
                error = self._error_payload(size)
            elif kind != p.REPLY_TYPE_NONE or size:
                self._fail(f"Unexpected reply type: {kind}")
            if flags & p.REPLY_FLAG_DONE:
                break
        if error is not None:
            raise error

    def _chunk_header(self, handle: int, allow_simple: bool = False) -> tuple[int, int, int]:
        """(flags, type, length) of the next structured chunk of ``handle``.

        A simple reply where one is allowed comes back as (error, -1, 0).
        """
        head = self._recv(4, "reply")
        (magic,) = struct.unpack(">I", head)
        if magic == p.SIMPLE_REPLY_MAGIC:
            rest = self._recv(p.SIMPLE_REPLY_HEADER.size - 4, "reply")
            err, got = struct.unpack(">IQ", rest)
            if got != handle:
                self._fail("unexpected cookie value")
            if not allow_simple and not err:
                self._fail("Protocol error: simple reply without error to a structured read")
            if not allow_simple:
                raise RequestError(p.nbd_to_errno(err))
            return err, -1, 0
        if magic != p.STRUCTURED_REPLY_MAGIC:
            self._fail(f"invalid magic (got 0x{magic:x})")
        rest = self._recv(p.STRUCTURED_REPLY_HEADER.size - 4, "reply")
        flags, kind, got, length = struct.unpack(">HHQI", rest)
        if got != handle:
            self._fail("unexpected cookie value")
        if length > p.MAX_BUFFER_SIZE + 64:
            self._fail("server sent a chunk that is too long")
        return flags, kind, length

    def _error_payload(self, length: int) -> RequestError:
        if length < 6:
            self._fail("Protocol error: invalid payload for NBD_REPLY_TYPE_ERROR")
        payload = self._recv(length, "structured reply chunk")
        err, msg_len = struct.unpack_from(">IH", payload)
        message = payload[6 : 6 + msg_len].decode(errors="replace")
        if not err:
            self._fail("Protocol error: server sent an error chunk with error = 0")
        return RequestError(p.nbd_to_errno(err), message)


def read_exact(sock: socket.socket, buf: memoryview) -> None:
    """Fill ``buf`` from ``sock``; QEMU's texts for end of file and socket errors."""
    done = 0
    while done < len(buf):
        try:
            n = sock.recv_into(buf[done:])
        except OSError as exc:
            raise NbdError(f"Unable to read from socket: {_strerror(exc)}", _errno(exc)) from None
        if n == 0:
            raise NbdError("Unexpected end-of-file before all data were read")
        done += n


class Negotiation:
    """The client side of the handshake (QEMU's nbd_receive_negotiate)."""

    def __init__(self, sock: socket.socket, export: str, meta_context: str) -> None:
        self.sock = sock
        self.export = export
        self.meta_context = meta_context

    # -- low level ------------------------------------------------------------------------
    def _read(self, size: int, what: str) -> bytes:
        buf = bytearray(size)
        try:
            read_exact(self.sock, memoryview(buf))
        except NbdError as exc:
            raise NbdError(f"Failed to read {what}: {exc.message}") from None
        return bytes(buf)

    def _write(self, data: bytes, what: str) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise NbdError(f"{what}: Unable to write to socket: {_strerror(exc)}") from None

    def _send_option(self, option: int, data: bytes = b"") -> None:
        self._write(p.option_request(option, data), "Failed to send option request header")

    def _abort(self) -> None:
        try:
            self.sock.sendall(p.option_request(p.OPT_ABORT))
        except OSError:
            pass

    def _fail(self, message: str) -> NbdError:
        self._abort()
        return NbdError(message)

    def _option_reply(self, option: int) -> tuple[int, int]:
        """(reply type, payload length) of the next reply, which must be for ``option``."""
        try:
            header = self._read(p.OPTION_REPLY_HEADER.size, "option reply")
        except NbdError:
            self._abort()
            raise
        magic, got, kind, length = p.OPTION_REPLY_HEADER.unpack(header)
        if magic != p.REP_MAGIC:
            raise self._fail("Unexpected option reply magic")
        if got != option:
            raise self._fail(f"Unexpected option type {got:x} expected {option:x}")
        return kind, length

    def _reply_error(self, option: int, kind: int, length: int) -> bool:
        """False for success; True for "unsupported" (caller falls back); raise otherwise."""
        if not kind & p.REP_FLAG_ERROR:
            return False
        message = ""
        if length:
            if length > p.MAX_BUFFER_SIZE:
                raise self._fail(f"server error 0x{kind:x} ({_rep_name(kind)}) message is too long")
            message = self._read(length, "option error message").decode(errors="replace")
        if kind == p.REP_ERR_UNSUP:
            return True
        name = _opt_name(option)
        texts = {
            p.REP_ERR_POLICY: f"Denied by server for option {option:x} ({name})",
            p.REP_ERR_INVALID: f"Invalid parameters for option {option:x} ({name})",
            p.REP_ERR_PLATFORM: f"Server lacks support for option {option:x} ({name})",
            p.REP_ERR_TLS_REQD: f"TLS negotiation required before option {option:x} ({name})",
            p.REP_ERR_UNKNOWN: "Requested export not available",
            p.REP_ERR_SHUTDOWN: f"Server shutting down before option {option:x} ({name})",
            p.REP_ERR_BLOCK_SIZE_REQD: (
                f"Server requires INFO_BLOCK_SIZE for option {option:x} ({name})"
            ),
        }
        text = texts.get(kind, f"Unknown error code when asking for option {option:x} ({name})")
        if message:
            text += f"\nserver reported: {message}"
        raise self._fail(text)

    # -- the conversation -----------------------------------------------------------------
    def run(self) -> ExportInfo:
        info = ExportInfo(self.export)
        (magic,) = struct.unpack(">Q", self._read(8, "initial magic"))
        if magic != p.INIT_MAGIC:
            raise NbdError(f"Bad initial magic received: 0x{magic:x}")
        (magic,) = struct.unpack(">Q", self._read(8, "server magic"))
        if magic == p.OLDSTYLE_MAGIC:
            if self.export:
                raise NbdError("Server does not support non-empty export names")
            info.size, old_flags = struct.unpack(">QI", self._read(12, "export length"))
            if old_flags & ~0xFFFF:
                raise NbdError(f"Unexpected export flags {old_flags:x}")
            info.flags = old_flags
            self._read(124, "reserved block")
            return info
        if magic != p.OPTS_MAGIC:
            raise NbdError(f"Bad server magic received: 0x{magic:x}")
        (server_flags,) = struct.unpack(">H", self._read(2, "server flags"))
        fixed = bool(server_flags & p.FLAG_FIXED_NEWSTYLE)
        zeroes = not server_flags & p.FLAG_NO_ZEROES
        client_flags = (p.FLAG_C_FIXED_NEWSTYLE if fixed else 0) | (
            0 if zeroes else p.FLAG_C_NO_ZEROES
        )
        self._write(struct.pack(">I", client_flags), "Failed to send clientflags field")
        if fixed:
            info.structured = self._simple_option(p.OPT_STRUCTURED_REPLY)
            if info.structured:
                self._set_meta_context(info)
            if self._go(info):
                return info
            self._query_exports()
        self._send_option(p.OPT_EXPORT_NAME, self.export.encode())
        info.size, info.flags = struct.unpack(">QH", self._read(10, "export length"))
        if zeroes:
            self._read(124, "reserved block")
        return info

    def _simple_option(self, option: int) -> bool:
        self._send_option(option)
        kind, length = self._option_reply(option)
        if self._reply_error(option, kind, length):
            return False
        if kind != p.REP_ACK:
            raise self._fail(
                f"Server answered option {option} ({_opt_name(option)}) with unexpected "
                f"reply {kind} ({_rep_name(kind)})"
            )
        if length:
            raise self._fail(
                f"Option {option} ('{_opt_name(option)}') response length is {length} "
                "(it should be zero)"
            )
        return True

    def _set_meta_context(self, info: ExportInfo) -> None:
        export = self.export.encode()
        query = self.meta_context.encode()
        data = struct.pack(">I", len(export)) + export + struct.pack(">II", 1, len(query)) + query
        self._send_option(p.OPT_SET_META_CONTEXT, data)
        received = False
        while True:
            kind, length = self._option_reply(p.OPT_SET_META_CONTEXT)
            if kind & p.REP_FLAG_ERROR:
                # Any refusal only means "no block status": QEMU is not strict here either.
                if length:
                    self._read(length, "option error message")
                return
            if kind == p.REP_ACK:
                if length:
                    raise self._fail("Unexpected length to ACK response")
                info.base_allocation = received
                return
            if kind != p.REP_META_CONTEXT:
                raise self._fail(
                    f"Unexpected reply type {kind} ({_rep_name(kind)}), expected "
                    f"{p.REP_META_CONTEXT} (NBD_REP_META_CONTEXT)"
                )
            if length <= 4 or length > p.MAX_BUFFER_SIZE:
                raise self._fail(
                    "Failed to negotiate meta context, server answered with unexpected "
                    f"length {length}"
                )
            payload = self._read(length, "context id")
            (context_id,) = struct.unpack_from(">I", payload)
            name = payload[4:].decode(errors="replace")
            if received:
                raise self._fail("Server answered with more than one context")
            if name != self.meta_context:
                raise self._fail(
                    f"Failed to negotiate meta context '{self.meta_context}', server "
                    f"answered with different context '{name}'"
                )
            info.context_id = context_id
            received = True

    def _go(self, info: ExportInfo) -> bool:
        """NBD_OPT_GO; False when the server does not know the option."""
        export = self.export.encode()
        data = struct.pack(">I", len(export)) + export + struct.pack(">HH", 1, p.INFO_BLOCK_SIZE)
        self._send_option(p.OPT_GO, data)
        info.flags = 0
        while True:
            kind, length = self._option_reply(p.OPT_GO)
            if self._reply_error(p.OPT_GO, kind, length):
                return False
            if kind == p.REP_ACK:
                if length:
                    raise NbdError("server sent invalid NBD_REP_ACK")
                if not info.flags:
                    raise NbdError("broken server omitted NBD_INFO_EXPORT")
                return True
            if kind != p.REP_INFO:
                raise self._fail(
                    f"unexpected reply type {kind} ({_rep_name(kind)}), expected "
                    f"{p.REP_INFO} (NBD_REP_INFO)"
                )
            if length < 2:
                raise self._fail(f"NBD_REP_INFO length {length} is too short")
            if length > p.MAX_BUFFER_SIZE:
                raise self._fail(f"NBD_REP_INFO length {length} is too long")
            payload = self._read(length, "info type")
            (info_type,) = struct.unpack_from(">H", payload)
            body = payload[2:]
            if info_type == p.INFO_EXPORT:
                if len(body) != 10:
                    raise self._fail(f"remaining export info len {len(body)} is unexpected size")
                info.size, info.flags = struct.unpack(">QH", body)
                if info.min_block and info.size % info.min_block:
                    raise self._fail(
                        f"export size {info.size} is not multiple of minimum block size "
                        f"{info.min_block}"
                    )
            elif info_type == p.INFO_BLOCK_SIZE:
                if len(body) != 12:
                    raise self._fail(f"remaining export info len {len(body)} is unexpected size")
                info.min_block, info.opt_block, info.max_block = struct.unpack(">III", body)
                if not _power_of_two(info.min_block):
                    raise self._fail(
                        f"server minimum block size {info.min_block} is not a power of two"
                    )
                if not _power_of_two(info.opt_block) or info.opt_block < info.min_block:
                    raise self._fail(f"server preferred block size {info.opt_block} is not valid")
                if info.max_block < info.min_block:
                    raise self._fail(f"server maximum block size {info.max_block} is not valid")

    def _query_exports(self) -> None:
        """NBD_OPT_LIST, for a good message before NBD_OPT_EXPORT_NAME (which cannot fail)."""
        self._send_option(p.OPT_LIST)
        names: list[str] = []
        while True:
            kind, length = self._option_reply(p.OPT_LIST)
            if self._reply_error(p.OPT_LIST, kind, length):
                return
            if kind == p.REP_ACK:
                if length:
                    raise self._fail("length too long for option end")
                break
            if kind != p.REP_SERVER:
                raise self._fail(
                    f"Unexpected reply type {kind} ({_rep_name(kind)}), expected "
                    f"{p.REP_SERVER} (NBD_REP_SERVER)"
                )
            if length < 4 or length > p.MAX_BUFFER_SIZE:
                raise self._fail(f"incorrect option length {length}")
            payload = self._read(length, "option name length")
            (name_len,) = struct.unpack_from(">I", payload)
            if name_len > length - 4:
                raise self._fail("incorrect name length in server's list response")
            names.append(payload[4 : 4 + name_len].decode(errors="replace"))
        if names and self.export not in names:
            raise self._fail(f"No export with name '{self.export}' available")


def _power_of_two(n: int) -> bool:
    return n > 0 and not n & (n - 1)


_OPT_NAMES = {
    p.OPT_EXPORT_NAME: "export name",
    p.OPT_ABORT: "abort",
    p.OPT_LIST: "list",
    p.OPT_PEEK_EXPORT: "peek export",
    p.OPT_STARTTLS: "start TLS",
    p.OPT_INFO: "info",
    p.OPT_GO: "go",
    p.OPT_STRUCTURED_REPLY: "structured reply",
    p.OPT_LIST_META_CONTEXT: "list meta context",
    p.OPT_SET_META_CONTEXT: "set meta context",
    p.OPT_EXTENDED_HEADERS: "extended headers",
}

_REP_NAMES = {
    p.REP_ACK: "ack",
    p.REP_SERVER: "server",
    p.REP_INFO: "info",
    p.REP_META_CONTEXT: "meta context",
    p.REP_ERR_UNSUP: "unsupported",
    p.REP_ERR_POLICY: "denied by policy",
    p.REP_ERR_INVALID: "invalid",
    p.REP_ERR_PLATFORM: "platform lacks support",
    p.REP_ERR_TLS_REQD: "TLS required",
    p.REP_ERR_UNKNOWN: "export unknown",
    p.REP_ERR_SHUTDOWN: "server shutting down",
    p.REP_ERR_BLOCK_SIZE_REQD: "block size required",
}


def _opt_name(option: int) -> str:
    return _OPT_NAMES.get(option, "<unknown>")


def _rep_name(kind: int) -> str:
    return _REP_NAMES.get(kind, "<unknown>")
