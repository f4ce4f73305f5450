"""The ``host_device`` protocol driver: a character or block device (QEMU's file-posix hdev).

It is the ``file`` driver with the opposite file-type rule: the node must be a character or
block device.  QEMU chooses it by itself for a plain filename that names a device (its
``find_hdev_driver`` runs before the protocol prefix is looked at), so ``qemu-io -f raw
/dev/zero`` opens through it.
"""

from __future__ import annotations

from qio.block.drivers.file import FileNode
from qio.block.options import Options


class HostDeviceNode(FileNode):
    format_name = "host_device"
    protocol_name = "host_device"
    device = True

    @classmethod
    def parse_filename(cls, filename: str, options: Options) -> None:
        if filename.startswith("host_device:"):
            options.set("filename", filename[len("host_device:") :])
