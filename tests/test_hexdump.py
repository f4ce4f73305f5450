"""The -v hexdump must be byte-identical to qemu-io's."""

import os

from hypothesis import given
from hypothesis import strategies as st

from qio.render.hexdump import hexdump, hexdump_bytes

MIXED = b"Hello, World! qemu-io_test #42\n !\"#$%&'()*+,-./\x00\t\n\x7f\x80\xc3\xa9\xffaz AZ 09 ~"

EXPECTED = (
    "00000000:  48 65 6c 6c 6f 2c 20 57 6f 72 6c 64 21 20 71 65  Hello..World..qe\n"
    "00000010:  6d 75 2d 69 6f 5f 74 65 73 74 20 23 34 32 0a 20  mu.io.test..42..\n"
    "00000020:  21 22 23 24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 00  ................\n"
    "00000030:  09 0a 7f 80 c3 a9 ff 61 7a 20 41 5a 20 30 39 20  .......az.AZ.09.\n"
    "00000040:  7e  .\n"
)


def test_reference_dump() -> None:
    assert hexdump(MIXED, 0) == EXPECTED


def test_unaligned_offset_and_short_tail() -> None:
    assert hexdump(MIXED[3:23], 3) == (
        "00000003:  6c 6f 2c 20 57 6f 72 6c 64 21 20 71 65 6d 75 2d  lo..World..qemu.\n"
        "00000013:  69 6f 5f 74  io.t\n"
    )


def test_offsets_wider_than_eight_digits() -> None:
    assert hexdump(bytes(20), 0x123456789A) == (
        "123456789a:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n"
        "12345678aa:  00 00 00 00  ....\n"
    )


def test_empty() -> None:
    assert hexdump(b"", 0) == ""


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=(1 << 32)))
def test_bulk_path_matches_simple_path(data: bytes, offset: int) -> None:
    assert hexdump_bytes(data, offset) == hexdump(data, offset).encode()


def test_bulk_path_on_large_random_data() -> None:
    data = os.urandom(70000)
    assert hexdump_bytes(data, 17) == hexdump(data, 17).encode()
