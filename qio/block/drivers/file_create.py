"""Creating a host file as QEMU 7.2's file-posix ``raw_co_create`` does.

The file is created (mode 0644) if missing, emptied, then grown to ``size`` with the requested
preallocation through the ``file`` driver's own truncate, so the result (including the zeroed
first block file-posix writes to speed up alignment probing later) is the driver's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from qio.block.node import OpenFlags
from qio.block.open import OpenContext, open_node
from qio.block.options import Options
from qio.errors import OpenError

UINT32_MAX = (1 << 32) - 1
DEFAULT_EXTENT_SIZE_HINT = 1 << 20
# linux/fs.h
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_NOCOW_FL = 0x00800000
FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820
FS_XFLAG_EXTSIZE = 0x00000800
_FSXATTR = struct.Struct("=IIIII8x")  # xflags, extsize, nextents, projid, cowextsize


def check_extent_size_hint(hint: int | None) -> None:
    if hint is not None and hint > UINT32_MAX:
        raise OpenError("Extent size hint is too large", errno.EINVAL)


async def create_file(
    filename: str,
    size: int,
    prealloc: str,
    *,
    nocow: bool = False,
    extent_size_hint: int | None = None,
    program: str = "qio",
) -> list[str]:
    """Create (or empty) ``filename`` and grow it to ``size`` bytes; OpenError on failure.

    ``size`` is rounded up to 512 bytes.  A ``file:`` prefix is taken off as in QEMU.
    Returns the warnings QEMU would print (the caller shows them).
    """
    check_extent_size_hint(extent_size_hint)
    path = filename[len("file:") :] if filename.startswith("file:") else filename
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        err = exc.errno or errno.EIO
        raise OpenError(f"Could not create '{path}': {os.strerror(err)}", err) from None
    os.close(fd)
    ctx = OpenContext(None, program)
    flags = OpenFlags()
    flags.read_write = True
    node = await open_node(ctx, None, Options({"driver": "file", "filename": path}), flags)
    try:
        # file-posix calls its truncate helper directly: no generic size checks, so a
        # negative size fails in ftruncate ("Could not resize file: Invalid argument").
        await node.drv_truncate(0, True, "off")
        warnings = _set_attributes(node.fd, nocow, extent_size_hint)  # type: ignore[attr-defined]
        await node.drv_truncate(-(-size // 512) * 512 if size >= 0 else size, True, prealloc)
    finally:
        await node.close()
    return warnings


def _set_attributes(fd: int, nocow: bool, extent_size_hint: int | None) -> list[str]:
    """nocow (btrfs) and the extent size hint (XFS), as raw_co_create sets them: failures
    are not errors, and only an explicitly requested hint is worth a warning."""
    if nocow:
        try:
            buf = bytearray(fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(4)))
            flags = struct.unpack("=I", buf)[0] | FS_NOCOW_FL
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("=I", flags))
        except OSError:
            pass
    hint = DEFAULT_EXTENT_SIZE_HINT if extent_size_hint is None else extent_size_hint
    try:
        attr = list(_FSXATTR.unpack(fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(_FSXATTR.size))))
        attr[0] |= FS_XFLAG_EXTSIZE
        attr[1] = hint
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR, _FSXATTR.pack(*attr))
    except OSError as exc:
        if extent_size_hint:
            return [f"Failed to set extent size hint: {os.strerror(exc.errno or errno.EIO)}"]
    return []


# Protocols whose images QEMU 7.2 "creates" with bdrv_co_create_opts_simple: the target must
# exist already; it is opened, grown if it can be, and its first sector is zeroed.
SIMPLE_CREATE_PROTOCOLS = ("nbd", "host_device")


async def create_protocol(
    filename: str,
    protocol: str,
    size: int,
    prealloc: str,
    *,
    nocow: bool = False,
    extent_size_hint: int | None = None,
    program: str = "qio",
) -> list[str]:
    """bdrv_co_create_file: the protocol layer's create for ``filename``."""
    if protocol == "file":
        return await create_file(
            filename,
            size,
            prealloc,
            nocow=nocow,
            extent_size_hint=extent_size_hint,
            program=program,
        )
    return await create_simple(filename, protocol, size, prealloc, program=program)


async def create_simple(
    filename: str, protocol: str, size: int, prealloc: str, *, program: str = "qio"
) -> list[str]:
    """bdrv_co_create_opts_simple: open the existing target, make it at least ``size`` bytes
    long if it can be resized, and zero its first sector."""
    from qio.block.node import ReqFlags
    from qio.errors import BlockError

    if prealloc not in ("off", "metadata", "falloc", "full"):
        raise OpenError(f"invalid parameter value: {prealloc}")
    if prealloc != "off":
        raise OpenError(f"Unsupported preallocation mode '{prealloc}'", errno.ENOTSUP)
    ctx = OpenContext(None, program)
    flags = OpenFlags()
    flags.read_write = True
    try:
        node = await open_node(ctx, filename, Options({"driver": protocol}), flags)
    except OpenError as exc:
        raise OpenError(
            f"Protocol driver '{protocol}' does not support image creation, and opening the "
            f"image failed: {exc.message}",
            errno.EINVAL,
        ) from None
    try:
        failure: OpenError | None = None
        try:
            await node.truncate(size, False, "off")
        except OpenError as exc:
            if exc.errno != errno.ENOTSUP:
                raise
            failure = exc
        current = node.getlength()
        if current < size:
            raise failure or OpenError("Image size cannot be grown", errno.ENOTSUP)
        clear = min(current, 512)
        if clear:
            try:
                await node.pwrite_zeroes(0, clear, ReqFlags.MAY_UNMAP)
            except BlockError as exc:
                raise OpenError(
                    f"Failed to clear the new image's first sector: {exc.strerror}", exc.errno
                ) from None
    finally:
        await node.close()
    return []
