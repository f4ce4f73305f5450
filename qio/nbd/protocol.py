"""NBD wire format: magic numbers, option/command/reply codes and (un)packing helpers.

Everything here follows the NBD protocol specification (``doc/proto.md`` of the NBD project):
fixed-newstyle handshake, simple and structured replies, the ``base:allocation`` meta context.
All integers are big-endian on the wire.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

# -- handshake ------------------------------------------------------------------------------
INIT_MAGIC = 0x4E42444D41474943  # "NBDMAGIC"
OPTS_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
OLDSTYLE_MAGIC = 0x00420281861253
REP_MAGIC = 0x3E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0  # client flags
FLAG_C_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_PEEK_EXPORT = 4
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_FLAG_ERROR = 1 << 31
REP_ERR_UNSUP = REP_FLAG_ERROR | 1
REP_ERR_POLICY = REP_FLAG_ERROR | 2
REP_ERR_INVALID = REP_FLAG_ERROR | 3
REP_ERR_PLATFORM = REP_FLAG_ERROR | 4
REP_ERR_TLS_REQD = REP_FLAG_ERROR | 5
REP_ERR_UNKNOWN = REP_FLAG_ERROR | 6
REP_ERR_SHUTDOWN = REP_FLAG_ERROR | 7
REP_ERR_BLOCK_SIZE_REQD = REP_FLAG_ERROR | 8
REP_ERR_TOO_BIG = REP_FLAG_ERROR | 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# -- transmission flags (16 bits, sent with the export size) ---------------------------------
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_RESIZE = 1 << 9
FLAG_SEND_CACHE = 1 << 10
FLAG_SEND_FAST_ZERO = 1 << 11

# -- requests --------------------------------------------------------------------------------
REQUEST_MAGIC = 0x25609513
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_RESIZE = 8

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

CMD_NAMES = {
    CMD_READ: "NBD_CMD_READ",
    CMD_WRITE: "NBD_CMD_WRITE",
    CMD_DISC: "NBD_CMD_DISC",
    CMD_FLUSH: "NBD_CMD_FLUSH",
    CMD_TRIM: "NBD_CMD_TRIM",
    CMD_CACHE: "NBD_CMD_CACHE",
    CMD_WRITE_ZEROES: "NBD_CMD_WRITE_ZEROES",
    CMD_BLOCK_STATUS: "NBD_CMD_BLOCK_STATUS",
    CMD_RESIZE: "NBD_CMD_RESIZE",
}

# -- replies ---------------------------------------------------------------------------------
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) | 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2

STATE_HOLE = 1 << 0  # base:allocation extent flags
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"

DEFAULT_PORT = 10809
MAX_BUFFER_SIZE = 32 * 1024 * 1024  # the largest read/write either side accepts
MAX_STRING_SIZE = 4096  # export names, descriptions, error messages
MAX_OPTION_SIZE = 64 * 1024  # larger option payloads are refused without being buffered

# -- NBD error numbers (the protocol's own, which happen to be Linux's) -----------------------
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

_TO_NBD = {
    errno.EPERM: NBD_EPERM,
    errno.EROFS: NBD_EPERM,
    errno.EIO: NBD_EIO,
    errno.ENOMEM: NBD_ENOMEM,
    errno.ENOSPC: NBD_ENOSPC,
    errno.EDQUOT: NBD_ENOSPC,
    errno.EFBIG: NBD_ENOSPC,
    errno.EOVERFLOW: NBD_EOVERFLOW,
    errno.ENOTSUP: NBD_ENOTSUP,
    errno.ESHUTDOWN: NBD_ESHUTDOWN,
}

_FROM_NBD = {
    0: 0,
    NBD_EPERM: errno.EPERM,
    NBD_EIO: errno.EIO,
    NBD_ENOMEM: errno.ENOMEM,
    NBD_ENOSPC: errno.ENOSPC,
    NBD_EOVERFLOW: errno.EOVERFLOW,
    NBD_ENOTSUP: errno.ENOTSUP,
    NBD_ESHUTDOWN: errno.ESHUTDOWN,
}


def errno_to_nbd(err: int) -> int:
    """A host errno as the protocol's error number (unknown ones become EINVAL, as QEMU's)."""
    return _TO_NBD.get(err, NBD_EINVAL)


def nbd_to_errno(err: int) -> int:
    return _FROM_NBD.get(err, errno.EINVAL)


# -- fixed-size headers ----------------------------------------------------------------------
OPTION_HEADER = struct.Struct(">QII")  # magic, option, length
OPTION_REPLY_HEADER = struct.Struct(">QIII")  # magic, option, type, length
REQUEST_HEADER = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
SIMPLE_REPLY_HEADER = struct.Struct(">IIQ")  # magic, error, handle
STRUCTURED_REPLY_HEADER = struct.Struct(">IHHQI")  # magic, flags, type, handle, length
HANDSHAKE_HEADER = struct.Struct(">QQH")  # INIT_MAGIC, OPTS_MAGIC, handshake flags


@dataclass(frozen=True)
class Request:
    flags: int
    type: int
    handle: int
    offset: int
    length: int

    def pack(self) -> bytes:
        return REQUEST_HEADER.pack(
            REQUEST_MAGIC, self.flags, self.type, self.handle, self.offset, self.length
        )


def option_request(option: int, data: bytes = b"") -> bytes:
    return OPTION_HEADER.pack(OPTS_MAGIC, option, len(data)) + data


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY_HEADER.pack(REP_MAGIC, option, reply_type, len(data)) + data


def simple_reply(handle: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY_HEADER.pack(SIMPLE_REPLY_MAGIC, error, handle)


def structured_chunk(handle: int, chunk_type: int, payload: bytes, done: bool) -> bytes:
    flags = REPLY_FLAG_DONE if done else 0
    return (
        STRUCTURED_REPLY_HEADER.pack(
            STRUCTURED_REPLY_MAGIC, flags, chunk_type, handle, len(payload)
        )
        + payload
    )


def error_chunk(handle: int, error: int, message: str, done: bool = True) -> bytes:
    """NBD_REPLY_TYPE_ERROR: error number, message length, message."""
    text = message.encode()[:MAX_STRING_SIZE]
    return structured_chunk(
        handle, REPLY_TYPE_ERROR, struct.pack(">IH", error, len(text)) + text, done
    )


def name_payload(name: str) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw
