"""Units of the filter stack: padding, request spans, buffer comparison, graph, scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qio.block.compare import differing_sectors, first_difference
from qio.block.coroutine import Future, scheduler
from qio.block.graph import graph, one_line
from qio.block.mismatch import request_span_at
from qio.block.node import OpenFlags
from qio.block.open import OpenContext, open_image_sync
from qio.block.options import Options, parse_option_string
from qio.block.tracking import Padding
from qio.block.verify import ExtentBuilder


# -- padding -----------------------------------------------------------------------------
def test_padding_cases() -> None:
    assert Padding.of(4096, 4096, 4096) is None
    head = Padding.of(512, 512, 4096)
    assert head is not None
    assert (head.start, head.end, head.head, head.tail, head.merge_reads) == (
        0,
        4096,
        512,
        3072,
        True,
    )
    wide = Padding.of(512, 4096, 4096)
    assert wide is not None
    assert (wide.buf_len, wide.merge_reads) == (8192, True)
    apart = Padding.of(512, 9000, 4096)
    assert apart is not None
    assert (apart.buf_len, apart.merge_reads, apart.end) == (8192, False, 12288)


@given(st.integers(0, 1 << 20), st.integers(1, 1 << 16), st.sampled_from([512, 4096, 65536]))
def test_padding_covers_the_request(offset: int, length: int, align: int) -> None:
    pad = Padding.of(offset, length, align)
    if pad is None:
        assert offset % align == 0 and length % align == 0
        return
    assert pad.start % align == 0 and pad.end % align == 0
    assert pad.start <= offset and offset + length <= pad.end
    assert pad.end - pad.start < length + 2 * align


# -- comparison --------------------------------------------------------------------------
@given(st.binary(min_size=1, max_size=3000), st.data())
def test_first_difference(data: bytes, draw: st.DataObject) -> None:
    at = draw.draw(st.integers(0, len(data) - 1))
    other = bytearray(data)
    other[at] ^= 0xFF
    assert first_difference(data, data) is None
    assert first_difference(data, bytes(other)) == at


def test_differing_sectors_and_extents() -> None:
    a = bytes(4096)
    b = bytearray(a)
    for at in (511, 512, 1500, 4095):
        b[at] = 1
    found = list(differing_sectors(a, bytes(b), 1 << 30))
    base = (1 << 30) // 512
    assert found == [
        (base, (1 << 30) + 511, (1 << 30) + 511),
        (base + 1, (1 << 30) + 512, (1 << 30) + 512),
        (base + 2, (1 << 30) + 1500, (1 << 30) + 1500),
        (base + 7, (1 << 30) + 4095, (1 << 30) + 4095),
    ]
    builder = ExtentBuilder()
    for sector, first, last in found:
        builder.add(sector, first, last)
    builder.close()
    assert [(e.offset - (1 << 30), e.length) for e in builder.extents] == [(511, 990), (4095, 1)]


# -- request spans -----------------------------------------------------------------------
def open_graph(tmp_path: Path, text: str) -> object:
    for name in ("a.img", "b.img"):
        with open(tmp_path / name, "wb") as f:
            f.truncate(64 << 20)
    ctx = OpenContext(program="qio")
    options = parse_option_string(text.replace("DIR", str(tmp_path)))
    flags = OpenFlags(read_write=False)
    return open_image_sync(ctx, None, options, flags)


def test_request_span_through_the_stack(tmp_path: Path) -> None:
    root = open_graph(
        tmp_path,
        "driver=raw,offset=1000,file.driver=blkverify,file.raw.filename=DIR/a.img,"
        "file.test.driver=file,file.test.filename=DIR/b.img",
    )
    blkverify = root.children["file"]  # type: ignore[attr-defined]
    assert request_span_at(root, blkverify, 100, 50 << 20, 0) == (1100, 50 << 20)  # type: ignore[arg-type]
    root.probed = True  # type: ignore[attr-defined]
    root.request_alignment = 512  # type: ignore[attr-defined]
    assert request_span_at(root, blkverify, 100, 50, 0) == (1000, 512)  # type: ignore[arg-type]
    blkverify.max_transfer = 1 << 20
    span = request_span_at(root, blkverify, 0, 50 << 20, 40 << 20)  # type: ignore[arg-type]
    assert span == (1000 + (39 << 20), 1 << 20)
    scheduler.run_sync(root.close())  # type: ignore[attr-defined]


def test_graph_one_line(tmp_path: Path) -> None:
    root = open_graph(
        tmp_path,
        "driver=blkverify,raw.filename=DIR/a.img,test.driver=raw,test.file.driver=blkdebug,"
        "test.file.image.filename=DIR/b.img",
    )
    text = one_line(graph(root))  # type: ignore[arg-type]
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert text == f"blkverify(raw: file {a}, test: raw → blkdebug → file {b})"
    scheduler.run_sync(root.close())  # type: ignore[attr-defined]


# -- the scheduler's reschedule ----------------------------------------------------------
def test_rescheduled_requests_continue_in_order() -> None:
    order: list[str] = []

    async def request(name: str) -> None:
        await scheduler.reschedule()
        order.append(name)

    for name in "abc":
        scheduler.spawn(request(name), lambda task: order.append("done"), name)
    assert order == []
    scheduler.drain()
    # First in, first out; each reported as soon as it finishes (in place).
    assert order == ["a", "done", "b", "done", "c", "done"]


def test_synchronous_request_may_reschedule() -> None:
    async def request() -> int:
        await scheduler.reschedule()
        return 7

    assert scheduler.run_sync(request()) == 7


def test_unresolvable_wait_is_a_deadlock() -> None:
    from qio.block.coroutine import Deadlock

    async def request() -> None:
        await Future()

    with pytest.raises(Deadlock):
        scheduler.run_sync(request())


def test_options_first_key_follows_qdict_order() -> None:
    assert Options({"zzz": 1, "aaa": 2, "bogus": 3}).first_key() == "bogus"


# -- blkverify's mismatch handler (the contract qio-nbd relies on) -------------------------
@pytest.mark.parametrize("action", ["raw", "error"])
def test_mismatch_handler_decides(tmp_path: Path, action: str) -> None:
    from qio.errors import BlockError
    from qio.results import Mismatch

    (tmp_path / "a.img").write_bytes(b"\x11" * 4096)
    (tmp_path / "b.img").write_bytes(b"\x11" * 1000 + b"\x22" * 3096)
    seen: list[Mismatch] = []
    ctx = OpenContext(program="qio")

    def handler(mismatch: Mismatch) -> str:
        seen.append(mismatch)
        return action

    ctx.mismatch_handler = handler
    options = parse_option_string(
        f"driver=blkverify,raw.filename={tmp_path}/a.img,test.driver=file,"
        f"test.filename={tmp_path}/b.img"
    )
    root = open_image_sync(ctx, None, options, OpenFlags(read_write=False))
    buf = bytearray(4096)
    if action == "raw":
        scheduler.run_sync(root.preadv(0, memoryview(buf)))
        assert bytes(buf) == b"\x11" * 4096
    else:
        with pytest.raises(BlockError):
            scheduler.run_sync(root.preadv(0, memoryview(buf)))
    assert [(m.request_offset, m.request_bytes, m.offset) for m in seen] == [(0, 4096, 1000)]
    scheduler.run_sync(root.close())


def test_verify_stops_between_chunks(tmp_path: Path) -> None:
    from qio.block.verify import CHUNK, compare_children

    for name in ("a.img", "b.img"):
        (tmp_path / name).write_bytes(b"\x01" * (3 * CHUNK))
    root = open_graph_pair(tmp_path)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # after the first chunk

    raw, test = root.children["raw"], root.children["test"]
    result = scheduler.run_sync(compare_children(raw, test, 0, 3 * CHUNK, stop))
    assert result.cancelled and result.length == CHUNK and result.extents == []
    scheduler.run_sync(root.close())


def open_graph_pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    options = parse_option_string(
        f"driver=blkverify,raw.filename={tmp_path}/a.img,test.driver=file,"
        f"test.filename={tmp_path}/b.img"
    )
    return open_image_sync(OpenContext(program="qio"), None, options, OpenFlags(read_write=False))
