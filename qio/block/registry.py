"""Which driver class serves which driver name and filename prefix.

Driver modules are imported only when a graph needs them, so a one-shot ``qio -c`` on a raw
image never pays for importing qcow2 or NBD.
"""

from __future__ import annotations

import importlib
import os
import stat
from typing import TYPE_CHECKING

from qio.errors import OpenError

if TYPE_CHECKING:
    from qio.block.node import BlockNode

# driver name -> "module:Class"
_DRIVERS: dict[str, str] = {
    "file": "qio.block.drivers.file:FileNode",
    "host_device": "qio.block.drivers.host_device:HostDeviceNode",
    "raw": "qio.block.drivers.raw:RawNode",
    "null-co": "qio.block.drivers.null:NullCoNode",
    "null-aio": "qio.block.drivers.null:NullAioNode",
    "qcow2": "qio.block.qcow2.driver:Qcow2Node",
    "blkverify": "qio.block.drivers.blkverify:BlkverifyNode",
    "blkdebug": "qio.block.drivers.blkdebug:BlkdebugNode",
    "copy-on-read": "qio.block.drivers.copy_on_read:CopyOnReadNode",
    "nbd": "qio.block.drivers.nbd:NbdNode",
}

# filename prefix (before the first ':') -> driver name
PROTOCOLS: dict[str, str] = {
    "file": "file",
    "host_device": "host_device",
    "null-co": "null-co",
    "null-aio": "null-aio",
    "blkverify": "blkverify",
    "blkdebug": "blkdebug",
    "nbd": "nbd",
    "nbd+tcp": "nbd",
    "nbd+unix": "nbd",
}

# Formats QEMU has and qio does not implement: named in a clear refusal instead of
# "Unknown driver", because the name is not unknown, only unsupported here.
UNSUPPORTED_FORMATS = (
    "bochs",
    "cloop",
    "dmg",
    "luks",
    "parallels",
    "qcow",
    "qed",
    "vdi",
    "vhdx",
    "vmdk",
    "vpc",
    "vvfat",
    "throttle",
    "compress",
    "preallocate",
    "replication",
    "quorum",
    "host_cdrom",
)


def driver_names() -> list[str]:
    return sorted(_DRIVERS)


def lookup(name: str) -> type[BlockNode]:
    spec = _DRIVERS.get(name)
    if spec is None:
        if name in UNSUPPORTED_FORMATS:
            raise OpenError(f"Driver '{name}' is not supported by qio")
        raise OpenError(f"Unknown driver '{name}'")
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A driver package left out of this installation: a clear refusal, not a traceback.
        if exc.name is None or not module_name.startswith(exc.name):
            raise
        raise OpenError(f"Driver '{name}' is not available in this qio installation") from None
    cls: type[BlockNode] = getattr(module, class_name)
    return cls


def protocol_for(filename: str) -> str:
    """The protocol driver a filename names (QEMU's bdrv_find_protocol)."""
    if _is_device(filename):
        # QEMU looks for a host device before it looks at a protocol prefix
        return "host_device"
    stop = len(filename)
    for i, ch in enumerate(filename):
        if ch in ":/\\":
            stop = i
            break
    if stop == len(filename) or filename[stop] != ":":
        return "file"
    prefix = filename[:stop]
    driver = PROTOCOLS.get(prefix)
    if driver is None:
        raise OpenError(f"Unknown protocol '{prefix}'")
    return driver


def _is_device(filename: str) -> bool:
    try:
        mode = os.stat(filename).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
