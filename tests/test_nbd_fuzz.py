"""Hostile input for qio-nbd: random and truncated handshakes and requests.

In-process, hypothesis drives the ``Connection`` state machine over a real 1 MiB raw export:
whatever arrives, nothing may raise, the output stays framed and bounded, and the image never
grows nor changes outside what valid, in-bounds writes asked for.  Over a socket, a real
server takes seeded garbage and abrupt disconnects on many connections and must still serve
a well-behaved client afterwards.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qio.block.node import OpenFlags
from qio.block.open import OpenContext
from qio.block.options import Options
from qio.nbd import protocol as p
from qio.nbd.connection import Connection, ServerContext, State
from qio.nbd.export import Export
from qio.nbd.mismatch import MismatchRecorder
from qio.session import OpenRequest, open_backend
from tests.nbd_support import QEMU_IO, qio_nbd, run

SIZE = 1 << 20
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Export]:
    path = tmp_path_factory.mktemp("fuzz") / "f.img"
    path.write_bytes(bytes(SIZE))
    options = Options()
    options.set("driver", "raw")
    blk = open_backend(OpenContext(), OpenRequest(str(path), options, OpenFlags(), False))
    exp = Export("", blk, recorder=MismatchRecorder(log_path=None))
    exp.path = path  # type: ignore[attr-defined]
    yield exp
    exp.close()


def _feed(conn: Connection, data: bytes, cuts: list[int]) -> bytes:
    """Feed ``data`` split at ``cuts``; return everything the server produced."""
    out = bytearray()
    conn.greeting()
    out += conn.take_output()
    pos = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        conn.feed(data[pos:cut])
        pos = max(pos, cut)
        out += conn.take_output()
        assert len(out) < 80 << 20
    return bytes(out)


def _handshake(structured: bool, meta: bool, go: bool = True) -> bytes:
    data = struct.pack(">I", p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES)
    if structured:
        data += p.option_request(p.OPT_STRUCTURED_REPLY)
    if meta:
        q = p.BASE_ALLOCATION.encode()
        data += p.option_request(
            p.OPT_SET_META_CONTEXT, p.name_payload("") + struct.pack(">II", 1, len(q)) + q
        )
    if go:
        data += p.option_request(p.OPT_GO, p.name_payload("") + struct.pack(">H", 0))
    return data


def _check_image(export: Export) -> None:
    path: Path = export.path  # type: ignore[attr-defined]
    assert path.stat().st_size == SIZE
    assert export.size == SIZE


@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_random_bytes(export: Export, data: bytes, cuts: list[int]) -> None:
    conn = Connection(ServerContext({"": export}), "fuzz")
    _feed(conn, data, cuts)
    _check_image(export)


options = st.tuples(
    st.sampled_from([*range(0, 13), 0xFFFF, 0x80000001]),
    st.binary(max_size=64),
    st.integers(-8, 8),  # error in the declared length
)


@FUZZ
@given(
    opts=st.lists(options, max_size=6),
    structured=st.booleans(),
    truncate=st.integers(0, 400),
    cuts=st.lists(st.integers(0, 400), max_size=4),
)
def test_random_options(
    export: Export,
    opts: list[tuple[int, bytes, int]],
    structured: bool,
    truncate: int,
    cuts: list[int],
) -> None:
    data = _handshake(structured, meta=False, go=False)
    for option, payload, skew in opts:
        declared = max(0, len(payload) + skew)
        data += struct.pack(">QII", p.OPTS_MAGIC, option, declared) + payload
    data = data[: max(4, len(data) - truncate)]
    conn = Connection(ServerContext({"": export}), "fuzz")
    out = _feed(conn, data, cuts)
    # Everything after the greeting is option replies (or the export-name answer).
    assert out.startswith(p.HANDSHAKE_HEADER.pack(p.INIT_MAGIC, p.OPTS_MAGIC, 3))
    _check_image(export)


requests = st.tuples(
    st.sampled_from([*range(0, 10), 0xFFFF]),  # command
    st.integers(0, 0xFFFF),  # flags
    st.one_of(st.integers(0, SIZE), st.integers(0, (1 << 64) - 1)),  # offset
    st.one_of(st.integers(0, 70000), st.integers(0, (1 << 32) - 1)),  # length
    st.integers(0, 4),  # how much of a write payload to send (quarters)
)


@FUZZ
@given(
    reqs=st.lists(requests, max_size=8),
    structured=st.booleans(),
    meta=st.booleans(),
    bad_magic=st.booleans(),
    cuts=st.lists(st.integers(0, 300000), max_size=4),
)
def test_random_requests(
    export: Export,
    reqs: list[tuple[int, int, int, int, int]],
    structured: bool,
    meta: bool,
    bad_magic: bool,
    cuts: list[int],
) -> None:
    data = _handshake(structured, meta and structured)
    for i, (kind, flags, offset, length, quarters) in enumerate(reqs):
        magic = 0x12345678 if bad_magic and i == len(reqs) - 1 else p.REQUEST_MAGIC
        data += p.REQUEST_HEADER.pack(magic, flags, kind, i + 1, offset, length)
        if kind == p.CMD_WRITE and length <= 70000:
            data += b"\xab" * (length * quarters // 4)
    conn = Connection(ServerContext({"": export}), "fuzz")
    before = export.read(0, SIZE)
    out = _feed(conn, data, cuts)
    assert conn.state in (State.TRANSMISSION, State.CLOSED) or conn.closing
    assert out
    _check_image(export)
    # Only complete, in-bounds, valid writes may have changed anything, and only where asked.
    after = export.read(0, SIZE)
    allowed = bytearray(SIZE)
    for kind, _flags, offset, length, _q in reqs:
        if kind in (p.CMD_WRITE, p.CMD_WRITE_ZEROES, p.CMD_TRIM) and offset < SIZE:
            end = min(SIZE, offset + length)
            allowed[offset:end] = b"\x01" * (end - offset)
    changed = [i for i in range(0, SIZE, 4096) if before[i : i + 4096] != after[i : i + 4096]]
    for block in changed:
        assert any(allowed[block : block + 4096]), f"unexpected change at {block}"
    export.write_zeroes(0, SIZE, 0)  # next example starts from zeroes again


def test_socket_garbage_then_real_client(tmp_path: Path) -> None:
    """Seeded garbage, truncated packets and abrupt disconnects over real sockets."""
    img = tmp_path / "g.img"
    img.write_bytes(b"\x5a" * SIZE)
    rng = random.Random(1234)
    with qio_nbd(str(img), tmp_path, extra=("-e", "8")) as srv:
        assert srv.port is not None
        deadline = time.monotonic() + 20
        for i in range(60):
            assert time.monotonic() < deadline, "server too slow under fuzzing"
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                greeting = s.recv(18)
                assert greeting[:8] == b"NBDMAGIC"
                kind = i % 4
                if kind == 0:
                    payload = rng.randbytes(rng.randrange(0, 2000))
                elif kind == 1:
                    payload = _handshake(True, True) + rng.randbytes(rng.randrange(0, 100))
                elif kind == 2:
                    payload = _handshake(bool(i & 8), False) + p.REQUEST_HEADER.pack(
                        p.REQUEST_MAGIC, 0, p.CMD_WRITE, 1, rng.randrange(0, 2 * SIZE),
                        rng.choice([512, 1 << 31, (1 << 32) - 1]),
                    ) + rng.randbytes(100)  # fmt: skip
                else:
                    payload = struct.pack(">I", 1) + struct.pack(
                        ">QII", p.OPTS_MAGIC, rng.randrange(1, 20), (1 << 32) - 1
                    ) + rng.randbytes(300)  # fmt: skip
                try:
                    s.sendall(payload)
                    if rng.random() < 0.5:
                        s.settimeout(0.2)
                        try:
                            s.recv(65536)
                        except (TimeoutError, OSError):
                            pass
                except OSError:
                    pass  # the server may hang up first: that is allowed
        assert srv.proc is not None and srv.proc.poll() is None
        if QEMU_IO is not None:
            r = run([QEMU_IO, "-f", "raw", "-c", "read -q -P 0x5a 0 1M", srv.url], tmp_path)
            assert r.rc == 0, r.out + r.err
    assert srv.stderr.count("Traceback") == 0
    assert img.stat().st_size == SIZE
