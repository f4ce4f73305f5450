"""blkdebug's rule parsing, unit by unit (the differential tests cover the whole driver)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qio.block.drivers.blkdebug_config import (
    DEFAULT_IO_TYPES,
    SectionList,
    build_rules,
    c_int,
    parse_config_file,
    parse_inline,
    strtou64,
)
from qio.block.options import Options, parse_option_string, qdict_order
from qio.errors import OpenError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("0x1c", 28),
        ("010", 8),
        (" +7", 7),
        ("-1", (1 << 64) - 1),
        ("0", 0),
        ("", None),
        ("0x", None),
        ("12abc", None),
        ("08", None),
        ("5 ", None),
    ],
)
def test_strtou64(text: str, value: int | None) -> None:
    assert strtou64(text) == value


def test_strtou64_overflow() -> None:
    with pytest.raises(OverflowError):
        strtou64("99999999999999999999999")


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_strtou64_round_trips(n: int) -> None:
    assert strtou64(str(n)) == n
    assert strtou64(hex(n)) == n


def test_c_int_truncates_like_c() -> None:
    assert c_int(4294967301) == 5
    assert c_int((1 << 64) - 5) == -5


def test_qdict_order_is_qemus_hash_order() -> None:
    # Observed with qemu-io: "bogus" is reported before "aaa" and "zzz".
    assert qdict_order(["zzz", "aaa", "bogus"]) == ["bogus", "aaa", "zzz"]


def rules_of(tmp_path: Path, text: str) -> list:
    conf = tmp_path / "r.conf"
    conf.write_text(text)
    sections = SectionList()
    parse_config_file(str(conf), sections)
    return build_rules(sections)


def test_config_file_quirks(tmp_path: Path) -> None:
    rules = rules_of(
        tmp_path,
        '# a comment\n[inject-error "first"]\n\tevent = "read_aio" ignored\nerrno = "0x1c"\n'
        'sector = "3"\nonce = "yes"\n\n[set-state]\nevent = "none"\nnew_state = "2"\n',
    )
    inject, set_state = rules
    assert (inject.action, inject.event, inject.errno, inject.offset, inject.once) == (
        "inject-error",
        "read_aio",
        28,
        1536,
        True,
    )
    assert inject.iotypes == DEFAULT_IO_TYPES
    assert (set_state.action, set_state.new_state) == ("set-state", 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('event = "x"\n', "no group defined"),
        ("[inject-error]\n \n", "parse error"),
        ('[inject-error]\nevent="read_aio"\n', "Invalid parameter 'event=\"read_aio\"'"),
        ('[inject-error]\nevent = "read_aio\n', "invalid parameter value: read_aio\n"),
        ("[inject-error]\n[set-state]\n", "Missing event name for rule"),
        ("[inject-error]\n[bogus]\n", "There is no option group 'bogus'"),
        ('[bogus]\n[inject-error]\nevent = "none"\n', "There is no option group 'bogus'"),
        ('[]\nevent = "none"\n', "no group defined"),
        ('[inject-error]\nevent = "none"\n[]\n', "There is no option group ']'"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(OpenError) as info:
        rules_of(tmp_path, text)
    assert info.value.message == message


def test_long_lines_are_read_in_fgets_pieces(tmp_path: Path) -> None:
    # The 1024th character starts a new "line": a word of its own, hence a parameter.
    with pytest.raises(OpenError) as info:
        rules_of(tmp_path, '[inject-error]\nevent = "none"' + " " * 1009 + "tail\n")
    assert info.value.message == "Invalid parameter 'tail'"


def inline(text: str) -> list:
    options = parse_option_string(text)
    sections = SectionList()
    parse_inline(options, sections)
    assert not len(options), "inline rules leave nothing behind"
    return build_rules(sections)


def test_inline_numbered_and_single() -> None:
    rules = inline(
        "inject-error.0.event=none,inject-error.1.event=l2_load,inject-error.1.iotype=read"
    )
    assert [(r.event, sorted(r.iotypes)) for r in rules] == [
        ("none", sorted(DEFAULT_IO_TYPES)),
        ("l2_load", ["read"]),
    ]
    assert [r.event for r in inline("set-state.event=none,set-state.new_state=3")] == ["none"]


def test_inline_typed_json_values() -> None:
    options = Options(
        {"inject-error.0.event": "none", "inject-error.0.errno": 28, "inject-error.0.once": True}
    )
    sections = SectionList()
    parse_inline(options, sections)
    (rule,) = build_rules(sections)
    assert (rule.errno, rule.once) == (28, True)
