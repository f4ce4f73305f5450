"""qio's own commands for exploring a blkverify pair and the block graph.

verify, diff and mismatches work on the first blkverify node of the graph; graph works on any
image.  None of them exists in qemu-io (they are ``qio_only``).
"""

from __future__ import annotations

import errno

from qio.block.coroutine import scheduler
from qio.block.graph import find_node, graph
from qio.block.node import BlockNode
from qio.commands.table import NOFILE_OK, command
from qio.errors import BlockError
from qio.results import DiffResult
from qio.session import CommandAbort, Session

DIFF_MAX_BYTES = 1 << 20


def _blkverify(s: Session, name: str) -> BlockNode:
    """The blkverify node the command works on; without one the command fails."""
    from qio.block.drivers.blkverify import BlkverifyNode

    node = find_node(s.require_blk().root, BlkverifyNode)
    if node is None:
        s.error_report(f"{name}: the image has no blkverify node (open blkverify:RAW:TEST)")
        raise CommandAbort(-errno.ENOTSUP)
    return node


def _range(s: Session, node: BlockNode, name: str, off_text: str, len_text: str) -> tuple[int, int]:
    offset = s.number(off_text)
    length = s.number(len_text)
    size = node.getlength()
    if offset > size or length > size - offset:
        s.r.message(f"{name} failed: {offset}+{length} goes past the end of the image ({size})")
        raise CommandAbort(-errno.EIO)
    return offset, length


VERIFY_HELP = (
    "\n compares the two children of the blkverify node over a range\n\n Example:\n"
    " 'verify' - compares the whole image\n 'verify 1M 64k' - compares 64 kilobytes at 1 MiB\n\n"
    " Reads the trusted copy (raw) and the image under test (test) chunk by chunk, skipping\n"
    " what block status says reads as zeros on both sides, and lists every run of differing\n"
    " 512-byte sectors: the offset of its first differing byte, its length up to the last\n"
    " differing byte, and its first and last sector.  The command fails when anything differs.\n"
    " -q, -- only print the summary line\n\n"
)


@command(
    name="verify",
    argmin=0,
    argmax=3,
    args="[-q] [off len]",
    oneline="compares the blkverify children (the whole image by default)",
    optstring="q",
    help=VERIFY_HELP,
    qio_only=True,
)
def verify_f(s: Session, argv: list[str]) -> int:
    from qio.block.verify import compare_children

    quiet = False
    opts = s.options(argv)
    for c, _arg in opts:
        if c == "q":
            quiet = True
    operands = opts.operands
    if len(operands) not in (0, 2):
        s.usage()
        return -errno.EINVAL
    node = _blkverify(s, "verify")
    if operands:
        offset, length = _range(s, node, "verify", operands[0], operands[1])
    else:
        offset, length = 0, node.getlength()
    raw, test = node.children["raw"], node.children["test"]
    try:
        result = scheduler.run_sync(
            compare_children(raw, test, offset, length, lambda: s.cancel.requested)
        )
    except BlockError as exc:
        s.r.message(f"verify failed: {exc.strerror}")
        return -exc.errno
    s.r.verify(result, quiet)
    if result.extents:
        return -errno.EIO
    return -errno.EINTR if result.cancelled else 0


DIFF_HELP = (
    "\n shows a range of both blkverify children side by side\n\n Example:\n"
    " 'diff 8k 512' - dumps 512 bytes at 8 KiB of the raw and the test child\n"
    " 'diff -n 1 0 64k' - only the differing lines of the first 64 KiB, with one line around\n\n"
    " Each line shows 16 bytes of the trusted copy (raw) and of the image under test (test);\n"
    " a line that differs is marked with '!' and followed by a line of '^^' under the\n"
    " differing bytes.  At most 1 MiB at a time.\n"
    " -n, -- only show differing lines and this many lines around each\n\n"
)


@command(
    name="diff",
    argmin=2,
    argmax=4,
    args="[-n lines] off len",
    oneline="shows the blkverify children side by side, differences marked",
    optstring="n:",
    help=DIFF_HELP,
    qio_only=True,
)
def diff_f(s: Session, argv: list[str]) -> int:
    context: int | None = None
    opts = s.options(argv)
    for c, arg in opts:
        if c == "n":
            context = s.number(arg or "")
    operands = opts.operands
    if len(operands) != 2:
        s.usage()
        return -errno.EINVAL
    node = _blkverify(s, "diff")
    offset, length = _range(s, node, "diff", operands[0], operands[1])
    if length > DIFF_MAX_BYTES:
        s.r.message(f"length cannot exceed {DIFF_MAX_BYTES}, given {operands[1]}")
        return -errno.EINVAL
    raw_buf, test_buf = bytearray(length), bytearray(length)

    async def read_both() -> None:
        await node.children["raw"].preadv(offset, memoryview(raw_buf))
        await node.children["test"].preadv(offset, memoryview(test_buf))

    try:
        scheduler.run_sync(read_both())
    except BlockError as exc:
        s.r.message(f"diff failed: {exc.strerror}")
        return -exc.errno
    result = DiffResult(offset, bytes(raw_buf), bytes(test_buf), context)
    s.r.diff(result)
    return 0


MISMATCHES_HELP = (
    "\n lists blkverify mismatches: those recorded in this session, or those a qio-nbd server\n"
    " recorded in a file\n\n Example:\n"
    " 'mismatches' - the mismatches of this session (blkverify option mismatch=report)\n"
    " 'mismatches -l mismatches.jsonl' - the file written by qio-nbd --mismatch-log\n\n"
    " Each mismatch is listed as blkverify reported it, with the 512-byte sector of the first\n"
    " differing byte.  Entries of a file also say which export and client they came from,\n"
    " when, and whether the client got the trusted raw data or an I/O error; on a terminal\n"
    " the raw and test bytes around the difference follow.  No image needs to be open.\n"
    " -l, -- list the mismatches recorded in this file instead\n\n"
)


@command(
    name="mismatches",
    argmin=0,
    argmax=2,
    args="[-l file]",
    oneline="lists the blkverify mismatches of this session or of a qio-nbd record file",
    optstring="l:",
    flags=NOFILE_OK,
    help=MISMATCHES_HELP,
    qio_only=True,
)
def mismatches_f(s: Session, argv: list[str]) -> int:
    path: str | None = None
    opts = s.options(argv)
    for c, arg in opts:
        if c == "l":
            path = arg
    if opts.operands:
        s.usage()
        return -errno.EINVAL
    if path is None:
        s.r.mismatches(s.mismatches.entries)
        return 0
    from qio.nbd.mismatch import MismatchLogError, load_mismatch_records

    try:
        records = load_mismatch_records(path)
    except MismatchLogError as exc:
        s.r.message(f"mismatches: {exc}")
        return -exc.errno
    s.r.mismatch_log(path, records)
    return 0


GRAPH_HELP = (
    "\n prints the block graph of the open image\n\n Example:\n"
    " 'graph' - one node per line: role, driver, what it opened, node name, options\n"
    " 'graph -s' - the same on one line, e.g. blkverify(raw: file a.img, test: raw → file b.img)\n\n"
    " -s, -- short form: the whole graph on one line\n\n"
)


@command(
    name="graph",
    argmin=0,
    argmax=1,
    args="[-s]",
    oneline="prints the block graph (nodes, drivers, children, options)",
    optstring="s",
    help=GRAPH_HELP,
    qio_only=True,
)
def graph_f(s: Session, argv: list[str]) -> int:
    short = False
    opts = s.options(argv)
    for c, _arg in opts:
        if c == "s":
            short = True
    if opts.operands:
        s.usage()
        return -errno.EINVAL
    s.r.graph(graph(s.require_blk().root), short)
    return 0


LOCATE_HELP = (
    "\n shows where a guest offset really lives, layer by layer\n\n Example:\n"
    " 'locate 12352' - follows the byte at offset 12352 down the graph\n\n"
    " For each layer: the offset it saw and what it did with it.  qcow2 shows the L1 and\n"
    " L2 entries it used, the (sub)cluster type and the host offset and refcount of the\n"
    " data, or that the read goes to the backing image or reads as zeros; raw shows its\n"
    " offset shift; blkverify follows both children; a file node names the host byte and\n"
    " whether the host file system has it allocated.  Nothing is written.\n\n"
)


@command(
    name="locate",
    argmin=1,
    argmax=1,
    args="off",
    oneline="shows where a guest offset lives in every layer (L1/L2 entries, host offset)",
    help=LOCATE_HELP,
    qio_only=True,
)
def locate_f(s: Session, argv: list[str]) -> int:
    from qio.block.locate import locate

    offset = s.number(argv[1])
    root = s.require_blk().root
    if offset >= root.getlength():
        s.r.message(f"locate failed: offset {offset} is past the end of the image ({root.getlength()})")
        return -errno.EINVAL
    try:
        step = scheduler.run_sync(locate(root, offset))
    except BlockError as exc:
        s.r.message(f"locate failed: {exc}")
        return -exc.errno
    s.r.locate(step)
    return 0
