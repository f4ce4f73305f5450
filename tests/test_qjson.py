"""QEMU's JSON reader: accepted inputs, values, and every error message qemu-io shows."""

from __future__ import annotations

import subprocess

import pytest

from qio.block.qjson import JSONError, parse
from tests.differential import ORACLE_ARGV, tool_env

# input -> QEMU's message (after "Could not parse the JSON options: "), observed on qemu-io 7.2
ERRORS = {
    "": "Expecting a JSON value",
    "   ": "Expecting a JSON value",
    "{": "JSON parse error, premature EOI",
    '{"a":1': "JSON parse error, premature EOI",
    '{"a" 1}': "JSON parse error, missing : in object pair",
    "{1:2}": "JSON parse error, key is not a string in object",
    '{"a":1 "b":2}': "JSON parse error, expected separator in dict",
    '{"a":[1,2}': "JSON parse error, expected separator in list",
    '{"a":1}}': "Expecting at most one JSON value",
    '{"a":1} x': "Expecting at most one JSON value",
    '{"a":tru}': "JSON parse error, invalid keyword 'tru'",
    '{"a":"\\q"}': "JSON parse error, invalid escape sequence in string",
    '{"a":01}': "JSON parse error, stray '01'",
    '{"a":1.5e}': "JSON parse error, stray '1.5e}'",
    '{"a":-}': "JSON parse error, stray '-}'",
    '{"a":"x': "JSON parse error, stray '\"x'",
    '{"a":1,"a":2}': "JSON parse error, duplicate key",
    '{"a":@}': "JSON parse error, stray '@'",
    "{,}": "JSON parse error, expecting value",
    '{"a":]}': "JSON parse error, expecting value",
    '{"a":"\\u00"}': 'JSON parse error, \\u00" is not a valid Unicode character',
}


@pytest.mark.parametrize(("text", "message"), list(ERRORS.items()))
def test_error_messages(text: str, message: str) -> None:
    with pytest.raises(JSONError) as info:
        parse(text.encode())
    assert info.value.message == message


def test_values() -> None:
    assert parse(b'{"a":1,"b":[true,false,null],"c":{"d":"e"},"f":-0.5E+3}') == {
        "a": 1,
        "b": [True, False, None],
        "c": {"d": "e"},
        "f": -500.0,
    }
    assert parse(b"{'single':'quotes \"inside\"'}") == {"single": 'quotes "inside"'}
    assert parse(b'{"u":"\\u00e9\\ud83d\\ude00"}') == {"u": "\u00e9\U0001f600"}
    assert parse(b" [ ] ") == []
    assert parse(b"18446744073709551616") == float(1 << 64)


INPUTS = list(ERRORS) + [
    '{"a":0e5}',
    "{'driver':'raw'}",
    '{"a":"\\ud800"}',
    '{"a":"a\tb"}',
    '{"a":1.}',
    '{"a":.5}',
    '{"a":+1}',
    '{"a":[1,]}',
    '{"a":1}[',
    "[1,2]",
    "null",
    '"x"',
    '{"a":"\\u0000"}',
    '{"a":"\\uffff"}',
    '{"a":{"b":{"c":',
]


def qemu_io_json_error(text: str) -> str:
    result = subprocess.run(
        [*ORACLE_ARGV, "-c", "length", f"json:{text}"],
        capture_output=True,
        env=tool_env(),
        check=False,
    )
    return result.stderr.decode("utf-8", "surrogateescape")


@pytest.mark.oracle
@pytest.mark.parametrize("text", INPUTS)
def test_matches_qemu_io(text: str) -> None:
    prefix = f"qemu-io: can't open device json:{text}: "
    theirs = qemu_io_json_error(text)
    assert theirs.startswith(prefix)
    try:
        value = parse(text.encode())
    except JSONError as exc:
        assert theirs == f"{prefix}Could not parse the JSON options: {exc.message}\n"
    else:
        # Parsed: qemu-io then complains about the value, never about the syntax.
        assert "Could not parse the JSON options" not in theirs
        if not isinstance(value, dict):
            assert theirs == f"{prefix}Invalid JSON object given\n"


def test_nesting_limit() -> None:
    deep_ok = b'{"a":' + b"[" * 1023 + b"]" * 1023 + b"}"
    assert isinstance(parse(deep_ok), dict)
    with pytest.raises(JSONError) as info:
        parse(b'{"a":' + b"[" * 1024 + b"]" * 1024 + b"}")
    assert info.value.message == "JSON nesting depth limit exceeded"
