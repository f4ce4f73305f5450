"""qio: a Python re-implementation of QEMU's qemu-io disk exerciser."""

__version__ = "0.1.0"
