"""Host file-system helpers the file driver needs beyond the ``os`` module.

* ``fallocate`` with PUNCH_HOLE / ZERO_RANGE (through ctypes, loaded only when first needed);
* SEEK_DATA / SEEK_HOLE for block status;
* QEMU-compatible image locking: open file description locks on the same bytes QEMU uses
  (100 + permission bit while holding a permission, 200 + bit while refusing to share it), so
  qio and QEMU processes see each other's claims on an image.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Any

from qio.errors import OpenError

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc: Any = None
_unsupported: set[int] = set()


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return _libc


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """True on success, False where the file system does not support the mode."""
    if mode in _unsupported:
        return False
    _load_libc()
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        _unsupported.add(mode)
        return False
    raise OSError(err, os.strerror(err))


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_RETAIN_BYTES = 32 << 20  # glibc's largest mmap threshold on 64-bit hosts
_retaining = False


def retain_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MiB for reuse (once per process).

    A streamed request allocates and frees buffers of a few MiB per step (hexdump text,
    bytes copies); by default glibc gives each back to the kernel (munmap, heap trim) and
    the next one is faulted in again, which costs more system time than the copying itself.
    Peak memory is unchanged: only memory the process already used is kept.  Called for
    large requests only, so short runs do not load ctypes.
    """
    global _retaining
    if _retaining:
        return
    _retaining = True
    try:
        libc = _load_libc()
        libc.mallopt(_M_MMAP_THRESHOLD, _RETAIN_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _RETAIN_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator's defaults stay


def punch_hole(fd: int, offset: int, length: int) -> bool:
    return _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def zero_range(fd: int, offset: int, length: int) -> bool:
    return _fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length)


def data_or_hole(fd: int, offset: int, length: int) -> tuple[bool, int]:
    """(is data, run length) at ``offset``, from SEEK_DATA/SEEK_HOLE."""
    try:
        data_start = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole up to EOF
            return False, length
        return True, length
    if data_start > offset:
        return False, min(length, data_start - offset)
    try:
        hole = os.lseek(fd, offset, os.SEEK_HOLE)
    except OSError:
        return True, length
    return True, max(1, min(length, hole - offset))


# -- image locking (file-posix raw_apply_lock_bytes / raw_check_lock_bytes) ---------------
LOCK_BASE_PERM = 100
LOCK_BASE_SHARED = 200
PERM_NAMES = ("consistent read", "write", "write unchanged", "resize", "change children")
PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE, PERM_GRAPH_MOD = range(5)
_F_RDLCK, _F_WRLCK, _F_UNLCK = 0, 1, 2


def _flock(kind: int, start: int) -> bytes:
    return struct.pack("hhxxxxqqixxxx", kind, os.SEEK_SET, start, 1, 0)


def _held_by_other(fd: int, byte: int) -> bool:
    result = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(_F_WRLCK, byte))
    return struct.unpack("hhxxxxqqixxxx", result)[0] != _F_UNLCK


def lock_image(fd: int, filename: str, writable: bool, force_share: bool) -> None:
    """Claim the image as QEMU does, or fail with QEMU's message when another user objects."""
    if force_share:
        return
    perms = {PERM_CONSISTENT_READ}
    if writable:
        perms |= {PERM_WRITE, PERM_RESIZE}
    unshared = {PERM_WRITE, PERM_RESIZE}
    try:
        for bit in sorted(perms):
            if _held_by_other(fd, LOCK_BASE_SHARED + bit):
                raise OpenError(
                    f'Failed to get "{PERM_NAMES[bit]}" lock\nIs another process using the image [{filename}]?',
                    errno.EAGAIN,
                )
        for bit in sorted(unshared):
            if _held_by_other(fd, LOCK_BASE_PERM + bit):
                raise OpenError(
                    f'Failed to get shared "{PERM_NAMES[bit]}" lock\nIs another process using the image [{filename}]?',
                    errno.EAGAIN,
                )
        for bit in perms:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(_F_RDLCK, LOCK_BASE_PERM + bit))
        for bit in unshared:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(_F_RDLCK, LOCK_BASE_SHARED + bit))
    except OSError:
        # File systems without OFD locks: QEMU carries on without locking too.
        return
