"""What commands produce: plain data that a renderer turns into text or a terminal view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TransferReport:
    """The two "read N/N bytes at offset X" lines (or the one ``-C`` line)."""

    verb: str  # "read", "wrote", "discard"
    offset: int
    count: int
    total: int
    seconds: float
    machine: bool
    ops: int = 1


@dataclass(frozen=True)
class PatternMismatch:
    """``read -P`` found other bytes than the pattern in the checked window."""

    offset: int  # absolute start of the checked window
    length: int
    pattern: int
    first_bad: int | None = None  # absolute offset of the first wrong byte, when known
    window: bytes = b""  # bytes around first_bad (for terminal views)
    window_offset: int = 0


@dataclass(frozen=True)
class MapRun:
    offset: int
    length: int
    allocated: bool
    depth: int = 0
    zero: bool = False


@dataclass(frozen=True)
class AllocResult:
    offset: int
    allocated: int
    count: int


@dataclass
class InfoResult:
    format_names: list[str]
    cluster_size: int | None = None
    vm_state_offset: int | None = None
    specific: list[tuple[str, Any]] | None = None


@dataclass(frozen=True)
class Mismatch:
    """A blkverify mismatch: where the trusted and the tested child first differ."""

    op: str  # "read" or "write"
    request_offset: int
    request_bytes: int
    offset: int | None = None  # absolute offset of the first differing byte
    test_ret: int = 0  # for return-value mismatches (0 or -errno)
    raw_ret: int = 0
    raw_bytes: bytes = b""  # a window of both children around ``offset``
    test_bytes: bytes = b""
    window_offset: int = 0

    @property
    def sector(self) -> int | None:
        return None if self.offset is None else self.offset // 512

    def qemu_line(self) -> str:
        if self.offset is not None:
            detail = f"contents mismatch at offset {self.offset}"
        else:
            detail = f"return value mismatch {self.test_ret} != {self.raw_ret}"
        return (
            f"blkverify: {self.op} offset={self.request_offset} bytes={self.request_bytes} {detail}"
        )


@dataclass(frozen=True)
class LoggedMismatch:
    """A mismatch read back from a qio-nbd record file, with where it came from."""

    mismatch: Mismatch
    time: str = ""
    export: str = ""
    client: str = ""
    action: str = ""  # "raw" (the client got the trusted data) or "error" (EIO)


@dataclass(frozen=True)
class MismatchExtent:
    """A run of consecutive 512-byte sectors in which the two children differ (``verify``).

    ``offset`` is the first differing byte, ``offset + length`` follows the last one; bytes
    in between may be equal.
    """

    offset: int
    length: int

    @property
    def first_sector(self) -> int:
        return self.offset // 512

    @property
    def last_sector(self) -> int:
        return (self.offset + self.length - 1) // 512


@dataclass
class VerifyResult:
    """What ``verify`` found comparing the blkverify children over a range."""

    offset: int
    length: int
    extents: list[MismatchExtent] = field(default_factory=list)
    bytes_compared: int = 0
    bytes_skipped: int = 0  # proven equal from block status (both sides zero)
    seconds: float = 0.0
    cancelled: bool = False

    @property
    def differing_bytes(self) -> int:
        return sum(e.length for e in self.extents)


@dataclass(frozen=True)
class DiffResult:
    """``diff``: the same range read from both blkverify children."""

    offset: int
    raw: bytes
    test: bytes
    context: int | None = None  # lines shown around differing lines (None: every line)

    @property
    def differing_bytes(self) -> int:
        return sum(1 for a, b in zip(self.raw, self.test, strict=True) if a != b)

    @property
    def first_difference(self) -> int | None:
        """The image offset of the first differing byte, if any."""
        from qio.block.compare import first_difference

        at = first_difference(self.raw, self.test)
        return None if at is None else self.offset + at


@dataclass(frozen=True)
class GraphNode:
    """One node of the block graph as ``graph`` shows it."""

    role: str | None  # the name of the edge from the parent (None for the root)
    node_name: str
    driver: str
    filename: str
    options: dict[str, Any]  # the node's own options (its children's are on their nodes)
    read_only: bool
    probed: bool
    leaf_label: str  # how a leaf names what it opened: "a.img", "" for null-co
    children: tuple[GraphNode, ...] = ()


@dataclass(frozen=True)
class LocateStep:
    """``locate``: what one layer of the graph did with the byte at ``offset``."""

    role: str | None  # the edge from the parent (None for the root)
    driver: str
    node_name: str
    filename: str
    offset: int  # the offset as this layer saw it
    facts: tuple[str, ...]  # one line per decision the layer made
    children: tuple[LocateStep, ...] = ()
