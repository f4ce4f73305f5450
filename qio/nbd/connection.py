"""The server side of one NBD connection, as a byte-in/byte-out state machine.

``Connection`` owns no socket: the server loop feeds it what arrived (``feed``) and sends
what it produced (``take_output``).  That keeps every protocol decision testable without a
network, and lets the fuzz tests throw arbitrary bytes at it in-process.

Defences against hostile clients, all of which end in a protocol error reply or a closed
connection, never in an exception escaping or unbounded memory:

* unknown client flags, a bad option or request magic, a non-fixed-newstyle client sending
  anything but ``NBD_OPT_EXPORT_NAME``: the connection is closed;
* option payloads longer than ``MAX_OPTION_SIZE`` are skipped without being buffered and
  answered with ``NBD_REP_ERR_TOO_BIG``;
* reads and writes longer than 32 MiB get ``EINVAL`` (a write's payload cannot be skipped
  safely, so the connection is then closed);
* requests past the end of the export get ``ENOSPC`` (writes) or ``EINVAL``, before the stack
  is touched; writes to a read-only export get ``EPERM``.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

from qio.nbd import protocol as p
from qio.nbd.export import CommandError, Export, read_chunks

HANDSHAKE_FLAGS = p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES


class State(Enum):
    CLIENT_FLAGS = auto()
    OPTIONS = auto()
    TRANSMISSION = auto()
    CLOSED = auto()


@dataclass
class ServerContext:
    """What all connections share: the exports and a hook run around each command."""

    exports: dict[str, Export]
    log: Callable[[str], None] = lambda text: None
    # (export, client, command name, offset, length), before each command runs
    on_command: Callable[[Export, str, str, int, int], None] = lambda *args: None


@dataclass
class Connection:
    server: ServerContext
    peer: str = ""
    state: State = State.CLIENT_FLAGS
    fixed_newstyle: bool = False
    no_zeroes: bool = False
    structured: bool = False
    meta_export: str | None = None  # export the base:allocation context was set for
    export: Export | None = None
    closing: bool = False  # close once the output is sent
    _in: bytearray = field(default_factory=bytearray)
    _out: list[bytes] = field(default_factory=list)
    _out_size: int = 0
    _skip: int = 0  # option payload bytes still to drop
    _skip_reply: tuple[int, int, str] | None = None  # (option, error, message) after skipping

    # -- the server loop's side ------------------------------------------------------------
    def greeting(self) -> None:
        self._send(p.HANDSHAKE_HEADER.pack(p.INIT_MAGIC, p.OPTS_MAGIC, HANDSHAKE_FLAGS))

    def feed(self, data: bytes) -> None:
        """Take bytes from the client and act on every complete message."""
        if self.state is State.CLOSED or self.closing:
            return
        self._in += data
        self.process()

    def process(self, output_limit: int = 64 << 20) -> None:
        """Handle buffered messages until one is incomplete or the output backlog is full."""
        while self.state is not State.CLOSED and not self.closing:
            if self._out_size > output_limit:
                return
            if not self._step():
                return

    def take_output(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return data

    @property
    def output_size(self) -> int:
        return self._out_size

    @property
    def input_size(self) -> int:
        return len(self._in)

    def close(self) -> None:
        self.state = State.CLOSED

    # -- helpers ---------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def _drop(self, reason: str) -> bool:
        self.server.log(f"client {self.peer}: {reason}; closing the connection")
        self.closing = True
        return False

    def _take(self, size: int) -> bytes | None:
        if len(self._in) < size:
            return None
        data = bytes(self._in[:size])
        del self._in[:size]
        return data

    def _step(self) -> bool:
        """Handle one message; False when more input is needed (or the connection ends)."""
        if self._skip:
            n = min(self._skip, len(self._in))
            del self._in[:n]
            self._skip -= n
            if self._skip:
                return False
            assert self._skip_reply is not None
            option, error, message = self._skip_reply
            self._skip_reply = None
            self._rep_error(option, error, message)
            return True
        if self.state is State.CLIENT_FLAGS:
            return self._client_flags()
        if self.state is State.OPTIONS:
            return self._option()
        return self._request()

    # =====================================================================================
    # Handshake
    # =====================================================================================
    def _client_flags(self) -> bool:
        raw = self._take(4)
        if raw is None:
            return False
        (flags,) = struct.unpack(">I", raw)
        if flags & ~(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES):
            return self._drop(f"unknown client flags 0x{flags:x}")
        self.fixed_newstyle = bool(flags & p.FLAG_C_FIXED_NEWSTYLE)
        self.no_zeroes = bool(flags & p.FLAG_C_NO_ZEROES)
        self.state = State.OPTIONS
        return True

    def _rep(self, option: int, kind: int, data: bytes = b"") -> None:
        self._send(p.option_reply(option, kind, data))

    def _rep_error(self, option: int, kind: int, message: str) -> None:
        self._rep(option, kind, message.encode()[: p.MAX_STRING_SIZE])

    def _option(self) -> bool:
        if len(self._in) < p.OPTION_HEADER.size:
            return False
        magic, option, length = p.OPTION_HEADER.unpack_from(self._in)
        if magic != p.OPTS_MAGIC:
            return self._drop("bad option magic")
        if not self.fixed_newstyle and option != p.OPT_EXPORT_NAME:
            return self._drop(f"option {option} from a client without fixed newstyle")
        if option == p.OPT_EXPORT_NAME and length > p.MAX_STRING_SIZE:
            return self._drop("export name too long")
        if length > p.MAX_OPTION_SIZE:
            del self._in[: p.OPTION_HEADER.size]
            self._skip = length
            self._skip_reply = (option, p.REP_ERR_TOO_BIG, f"option {option} is too long")
            return True
        if len(self._in) < p.OPTION_HEADER.size + length:
            return False
        del self._in[: p.OPTION_HEADER.size]
        payload = self._take(length)
        assert payload is not None
        handler = {
            p.OPT_EXPORT_NAME: self._opt_export_name,
            p.OPT_ABORT: self._opt_abort,
            p.OPT_LIST: self._opt_list,
            p.OPT_INFO: self._opt_info_go,
            p.OPT_GO: self._opt_info_go,
            p.OPT_STRUCTURED_REPLY: self._opt_structured,
            p.OPT_LIST_META_CONTEXT: self._opt_meta,
            p.OPT_SET_META_CONTEXT: self._opt_meta,
            p.OPT_STARTTLS: self._opt_starttls,
        }.get(option)
        if handler is None:
            self._rep_error(option, p.REP_ERR_UNSUP, f"Unsupported option {option}")
            return True
        handler(option, payload)
        return True

    def _find_export(self, name: str) -> Export | None:
        return self.server.exports.get(name)

    def _opt_export_name(self, option: int, payload: bytes) -> None:
        name = payload.decode(errors="replace")
        export = self._find_export(name)
        if export is None:
            self._drop(f"export '{name}' not present")
            return
        data = struct.pack(">QH", export.size, export.transmission_flags(self.structured))
        self._send(data if self.no_zeroes else data + bytes(124))
        self._enter_transmission(export)

    def _opt_abort(self, option: int, payload: bytes) -> None:
        self._rep(option, p.REP_ACK)
        self.closing = True

    def _opt_list(self, option: int, payload: bytes) -> None:
        if payload:
            self._rep_error(option, p.REP_ERR_INVALID, "option 'list' has unexpected length")
            return
        for name, export in self.server.exports.items():
            self._rep(option, p.REP_SERVER, p.name_payload(name) + export.description.encode())
        self._rep(option, p.REP_ACK)

    def _opt_structured(self, option: int, payload: bytes) -> None:
        if payload:
            self._rep_error(
                option, p.REP_ERR_INVALID, "option 'structured reply' has unexpected length"
            )
        elif self.structured:
            self._rep_error(option, p.REP_ERR_INVALID, "structured reply already negotiated")
        else:
            self.structured = True
            self._rep(option, p.REP_ACK)

    def _opt_starttls(self, option: int, payload: bytes) -> None:
        self._rep_error(option, p.REP_ERR_POLICY, "TLS not configured")

    def _read_name(self, payload: bytes, pos: int) -> tuple[str, int] | None:
        if pos + 4 > len(payload):
            return None
        (size,) = struct.unpack_from(">I", payload, pos)
        if size > p.MAX_STRING_SIZE or pos + 4 + size > len(payload):
            return None
        return payload[pos + 4 : pos + 4 + size].decode(errors="replace"), pos + 4 + size

    def _opt_info_go(self, option: int, payload: bytes) -> None:
        parsed = self._read_name(payload, 0)
        if parsed is None or len(payload) < parsed[1] + 2:
            self._rep_error(option, p.REP_ERR_INVALID, "Inconsistent lengths in option")
            return
        name, pos = parsed
        (count,) = struct.unpack_from(">H", payload, pos)
        pos += 2
        if len(payload) != pos + 2 * count:
            self._rep_error(option, p.REP_ERR_INVALID, "Inconsistent lengths in option")
            return
        requests = struct.unpack_from(f">{count}H", payload, pos)
        export = self._find_export(name)
        if export is None:
            self._rep_error(option, p.REP_ERR_UNKNOWN, f"export '{_sanitize(name)}' not present")
            return
        if p.INFO_NAME in requests:
            self._rep(option, p.REP_INFO, struct.pack(">H", p.INFO_NAME) + name.encode())
        if export.description:
            self._rep(
                option,
                p.REP_INFO,
                struct.pack(">H", p.INFO_DESCRIPTION) + export.description.encode(),
            )
        wants_sizes = p.INFO_BLOCK_SIZE in requests
        sizes = export.block_sizes(option == p.OPT_INFO or wants_sizes)
        self._rep(option, p.REP_INFO, struct.pack(">HIII", p.INFO_BLOCK_SIZE, *sizes))
        flags = export.transmission_flags(self.structured)
        self._rep(option, p.REP_INFO, struct.pack(">HQH", p.INFO_EXPORT, export.size, flags))
        if option == p.OPT_INFO and not wants_sizes and export.request_alignment > 1:
            self._rep_error(
                option, p.REP_ERR_BLOCK_SIZE_REQD, "request NBD_INFO_BLOCK_SIZE to use this export"
            )
            return
        self._rep(option, p.REP_ACK)
        if option == p.OPT_GO:
            self._enter_transmission(export)

    def _opt_meta(self, option: int, payload: bytes) -> None:
        name_of = "set meta context" if option == p.OPT_SET_META_CONTEXT else "list meta context"
        if not self.structured:
            self._rep_error(
                option,
                p.REP_ERR_INVALID,
                f"request option '{name_of}' when structured reply is not negotiated",
            )
            return
        parsed = self._read_name(payload, 0)
        if parsed is None or len(payload) < parsed[1] + 4:
            self._rep_error(option, p.REP_ERR_INVALID, f"Inconsistent lengths in option {name_of}")
            return
        name, pos = parsed
        (count,) = struct.unpack_from(">I", payload, pos)
        pos += 4
        queries: list[str] = []
        for _ in range(count):
            q = self._read_name(payload, pos)
            if q is None:
                self._rep_error(
                    option, p.REP_ERR_INVALID, f"Inconsistent lengths in option {name_of}"
                )
                return
            queries.append(q[0])
            pos = q[1]
        if pos != len(payload):
            self._rep_error(option, p.REP_ERR_INVALID, f"Inconsistent lengths in option {name_of}")
            return
        if self._find_export(name) is None:
            self._rep_error(option, p.REP_ERR_UNKNOWN, f"export '{_sanitize(name)}' not present")
            return
        if option == p.OPT_SET_META_CONTEXT:
            self.meta_export = None
        wanted = False
        if option == p.OPT_LIST_META_CONTEXT and not queries:
            wanted = True
        for q in queries:
            if q == p.BASE_ALLOCATION or (option == p.OPT_LIST_META_CONTEXT and q == "base:"):
                wanted = True
        if wanted:
            context_id = 1 if option == p.OPT_SET_META_CONTEXT else 0
            self._rep(
                option,
                p.REP_META_CONTEXT,
                struct.pack(">I", context_id) + p.BASE_ALLOCATION.encode(),
            )
            if option == p.OPT_SET_META_CONTEXT:
                self.meta_export = name
        self._rep(option, p.REP_ACK)

    def _enter_transmission(self, export: Export) -> None:
        self.export = export
        if self.meta_export is not None and self.meta_export != export.name:
            self.meta_export = None
        self.state = State.TRANSMISSION

    # =====================================================================================
    # Transmission
    # =====================================================================================
    def _request(self) -> bool:
        header_size = p.REQUEST_HEADER.size
        if len(self._in) < header_size:
            return False
        magic, flags, kind, handle, offset, length = p.REQUEST_HEADER.unpack_from(self._in)
        if magic != p.REQUEST_MAGIC:
            return self._drop(f"invalid request magic 0x{magic:x}")
        if kind == p.CMD_WRITE:
            if length > p.MAX_BUFFER_SIZE:
                del self._in[:header_size]
                self._error_reply(
                    handle,
                    errno.EINVAL,
                    f"len ({length}) is larger than max len ({p.MAX_BUFFER_SIZE})",
                )
                # The payload follows and cannot be skipped safely: hang up.
                return self._drop("oversized write")
            if len(self._in) < header_size + length:
                return False
        del self._in[:header_size]
        payload = self._take(length) if kind == p.CMD_WRITE else b""
        assert payload is not None
        request = p.Request(flags, kind, handle, offset, length)
        if kind == p.CMD_DISC:
            self.closing = True
            return False
        try:
            self._execute(request, payload)
        except CommandError as exc:
            self._error_reply(handle, exc.errno, exc.message)
        return True

    def _validate(self, request: p.Request) -> None:
        export = self.export
        assert export is not None
        kind = request.type
        if kind not in (
            p.CMD_READ,
            p.CMD_WRITE,
            p.CMD_FLUSH,
            p.CMD_TRIM,
            p.CMD_WRITE_ZEROES,
            p.CMD_BLOCK_STATUS,
            p.CMD_CACHE,
        ):
            raise CommandError(errno.EINVAL, f"unsupported command {kind}")
        if kind in (p.CMD_READ, p.CMD_CACHE) and request.length > p.MAX_BUFFER_SIZE:
            raise CommandError(
                errno.EINVAL,
                f"len ({request.length}) is larger than max len ({p.MAX_BUFFER_SIZE})",
            )
        if export.read_only and kind in (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES):
            raise CommandError(errno.EROFS, "Export is read-only")
        size = export.size
        if request.offset > size or request.length > size - request.offset:
            raise CommandError(
                errno.ENOSPC if kind in (p.CMD_WRITE, p.CMD_WRITE_ZEROES) else errno.EINVAL,
                f"operation past EOF; From: {request.offset}, Len: {request.length}, Size: {size}",
            )
        valid = p.CMD_FLAG_FUA
        if kind == p.CMD_READ and self.structured:
            valid |= p.CMD_FLAG_DF
        elif kind == p.CMD_WRITE_ZEROES:
            valid |= p.CMD_FLAG_NO_HOLE | p.CMD_FLAG_FAST_ZERO
        elif kind == p.CMD_BLOCK_STATUS:
            valid |= p.CMD_FLAG_REQ_ONE
        if request.flags & ~valid:
            raise CommandError(
                errno.EINVAL,
                f"unsupported flags for command {p.CMD_NAMES[kind]} (got 0x{request.flags:x})",
            )

    def _execute(self, request: p.Request, payload: bytes) -> None:
        self._validate(request)
        export = self.export
        assert export is not None
        kind, offset, length = request.type, request.offset, request.length
        fua = bool(request.flags & p.CMD_FLAG_FUA)
        self.server.on_command(export, self.peer, p.CMD_NAMES[kind], offset, length)
        if kind == p.CMD_READ:
            data = export.read(offset, length) if length else b""
            if fua:
                export.flush()
            self._read_reply(request, data)
            return
        if kind == p.CMD_BLOCK_STATUS:
            if self.meta_export != export.name:
                raise CommandError(errno.EINVAL, "CMD_BLOCK_STATUS not negotiated")
            if not length:
                raise CommandError(errno.EINVAL, "need non-zero length")
            extents = export.block_status(offset, length, bool(request.flags & p.CMD_FLAG_REQ_ONE))
            body = struct.pack(">I", 1) + b"".join(struct.pack(">II", n, f) for n, f in extents)
            self._send(
                p.structured_chunk(request.handle, p.REPLY_TYPE_BLOCK_STATUS, body, done=True)
            )
            return
        if kind == p.CMD_WRITE:
            if length:
                export.write(offset, memoryview(payload), fua)
        elif kind == p.CMD_WRITE_ZEROES:
            if length:
                export.write_zeroes(offset, length, request.flags)
        elif kind == p.CMD_TRIM:
            if length:
                export.trim(offset, length, fua)
        elif kind == p.CMD_FLUSH:
            export.flush()
        elif kind == p.CMD_CACHE:
            # A prefetch hint: reading the range is all a cache-less stack can do.
            if length:
                export.read(offset, length)
        self._ok_reply(request.handle)

    def _ok_reply(self, handle: int) -> None:
        self._send(p.simple_reply(handle))

    def _error_reply(self, handle: int, err: int, message: str) -> None:
        nbd_err = p.errno_to_nbd(err)
        if self.structured:
            self._send(p.error_chunk(handle, nbd_err, message))
        else:
            self._send(p.simple_reply(handle, nbd_err))

    def _read_reply(self, request: p.Request, data: bytes) -> None:
        handle = request.handle
        if not self.structured:
            self._send(p.simple_reply(handle))
            self._send(data)
            return
        if not data:
            self._send(p.structured_chunk(handle, p.REPLY_TYPE_NONE, b"", done=True))
            return
        if request.flags & p.CMD_FLAG_DF:
            pieces: list[tuple[int, int, bytes | None]] = [(request.offset, len(data), data)]
        else:
            pieces = read_chunks(request.offset, data)
        last = len(pieces) - 1
        for i, (where, size, piece) in enumerate(pieces):
            if piece is None:
                body = struct.pack(">QI", where, size)
                chunk = p.structured_chunk(handle, p.REPLY_TYPE_OFFSET_HOLE, body, i == last)
                self._send(chunk)
            else:
                header = p.STRUCTURED_REPLY_HEADER.pack(
                    p.STRUCTURED_REPLY_MAGIC,
                    p.REPLY_FLAG_DONE if i == last else 0,
                    p.REPLY_TYPE_OFFSET_DATA,
                    handle,
                    8 + size,
                )
                self._send(header + struct.pack(">Q", where))
                self._send(piece)


def _sanitize(name: str) -> str:
    """Export names in error messages: at most 80 characters, as QEMU shortens them."""
    if len(name) > 80:
        return name[:80] + "..."
    return name
