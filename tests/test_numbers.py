"""qemu-io's number parsing and formatting rules (cvtnum, strtol base 0, cvtstr, timestr)."""

import errno
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qio.numbers import (
    NumberError,
    ParsedSize,
    _parse_size_general,
    cvtnum,
    cvtstr,
    parse_pattern,
    parse_size,
    report_lines,
    strtol_base0,
    timestr,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("512", 512),
        ("010", 10),
        ("+512", 512),
        ("0x200", 512),
        ("0X10", 16),
        ("1k", 1024),
        ("1K", 1024),
        ("1.5k", 1536),
        ("0.1k", 102),
        ("1.k", 1024),
        ("1.", 1),
        ("1.0", 1),
        ("512b", 512),
        ("2M", 2 << 20),
        ("3G", 3 << 30),
        ("1T", 1 << 40),
        ("1P", 1 << 50),
        ("7E", 7 << 60),
        ("0x1k", 1024),
    ],
)
def test_cvtnum_accepts(text: str, value: int) -> None:
    assert cvtnum(text).value == value


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("1.5", errno.EINVAL),
        ("1kb", errno.EINVAL),
        ("1KiB", errno.EINVAL),
        (".5k", errno.EINVAL),
        ("abc", errno.EINVAL),
        ("-1", errno.EINVAL),
        ("1k5", errno.EINVAL),
        ("0x", errno.EINVAL),
        ("1e3", errno.EINVAL),
        ("1_000", errno.EINVAL),
        ("0x1.5k", errno.EINVAL),
        ("99999999999999999999", errno.ERANGE),
        ("8E", errno.ERANGE),
        ("16E", errno.ERANGE),
        ("", errno.EINVAL),
    ],
)
def test_cvtnum_rejects(text: str, code: int) -> None:
    with pytest.raises(NumberError) as info:
        cvtnum(text)
    assert info.value.code == code


def test_hex_with_suffix_is_flagged_for_the_deprecation_warning() -> None:
    assert cvtnum("0x1k").hex_with_suffix
    assert not cvtnum("1k").hex_with_suffix


def test_parse_error_messages() -> None:
    with pytest.raises(NumberError) as info:
        cvtnum("abc")
    assert (
        info.value.message()
        == "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- abc"
    )
    with pytest.raises(NumberError) as info:
        cvtnum("8E")
    assert info.value.message() == "Parsing error: argument too large -- 8E"


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_cvtnum_decimal_round_trip(n: int) -> None:
    assert cvtnum(str(n)).value == n


@given(st.integers(min_value=0, max_value=(1 << 52)))
def test_cvtnum_kilo_suffix(n: int) -> None:
    assert cvtnum(f"{n}k").value == n * 1024


@pytest.mark.parametrize(
    ("text", "value"),
    [("17", 17), ("021", 0x11), ("0x11", 0x11), ("0", 0), ("255", 255), ("+7", 7), ("0377", 255)],
)
def test_pattern_accepts(text: str, value: int) -> None:
    assert parse_pattern(text) == value


@pytest.mark.parametrize(
    "text", ["08", "256", "-1", "0x11k", "0x", "1a", "0400", "99999999999", " 5x"]
)
def test_pattern_rejects(text: str) -> None:
    assert parse_pattern(text) is None


def test_strtol_base0() -> None:
    assert strtol_base0("100") == 100
    assert strtol_base0("0x10") == 16
    assert strtol_base0("1k") is None
    assert strtol_base0("-5") == -5


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 bytes"),
        (512, "512 bytes"),
        (1000, "1000 bytes"),
        (1024, "1 KiB"),
        (1536, "1.500 KiB"),
        (1048576, "1 MiB"),
        (1048575, "1023.999 KiB"),
        (426.184236, "426.184236 bytes"),
        (1610612736, "1.500 GiB"),
        (1 << 60, "1 EiB"),
    ],
)
def test_cvtstr(value: float, text: str) -> None:
    assert cvtstr(value) == text


def test_timestr() -> None:
    assert timestr(0.004, False) == "00.00 sec"
    assert timestr(0.3, False) == "00.30 sec"
    assert timestr(1.2, False) == "0:00:01.20"
    assert timestr(0.0, True) == "0:00:00.00"
    assert timestr(3725.5, False) == "1:02:05.50"


def test_report_lines() -> None:
    text = report_lines("read", 0.5, 0, 512, 512, 1, False)
    assert (
        text
        == "read 512/512 bytes at offset 0\n512 bytes, 1 ops; 00.50 sec (1 KiB/sec and 2.0000 ops/sec)\n"
    )
    assert report_lines("wrote", 0.5, 0, 512, 512, 1, True) == "512,1,0:00:00.50,1024.000,2.000\n"


@given(
    st.text(alphabet="0123456789kKmMgGtTpPeEbBxX.", min_size=1, max_size=24),
    st.sampled_from(["B", "K"]),
)
def test_parse_size_fast_path_agrees_with_the_general_parser(text: str, suffix: str) -> None:
    def outcome(parse: Callable[[str, str], ParsedSize]) -> object:
        try:
            return parse(text, suffix)
        except NumberError as exc:
            return exc.code

    assert outcome(parse_size) == outcome(_parse_size_general)


def test_fraction_rounding_to_one_behaves_like_the_c_conversion() -> None:
    # strtod gives 1.0 for ".99999999999999999999"; (uint64_t)(1.0 * 2^64) is 0 on x86-64.
    assert cvtnum("1.99999999999999999999k").value == 1024
    assert cvtnum("0.99999999999999999999k").value == 0
