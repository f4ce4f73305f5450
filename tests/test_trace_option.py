"""-T: syntax, warnings for missing events, events files, the log file."""

from __future__ import annotations

from pathlib import Path

import pytest

from qio.trace_option import TraceOptionError, open_log_file, parse_trace_option


def test_enable_patterns() -> None:
    assert parse_trace_option("bogus").warnings == [": warning: trace event 'bogus' does not exist"]
    assert parse_trace_option("enable=-gone").warnings == [
        ": warning: trace event 'gone' does not exist"
    ]
    assert parse_trace_option("bdrv_*").warnings == []
    assert parse_trace_option("").warnings == []
    assert parse_trace_option("file=x.log").log_file == "x.log"


def test_syntax_errors() -> None:
    with pytest.raises(TraceOptionError) as info:
        parse_trace_option("x,y=1")
    assert info.value.message == ": Invalid parameter 'y'"
    with pytest.raises(TraceOptionError) as info:
        parse_trace_option("x,z")
    assert info.value.warnings == [
        ": warning: short-form boolean option 'z' deprecated\nPlease use z=on instead"
    ]


def test_events_file(tmp_path: Path) -> None:
    events = tmp_path / "ev"
    events.write_bytes(b"one\n\n#comment\n-two*\nthree\nlastX")
    assert parse_trace_option(f"events={events}").warnings == [
        f":{events}:1: warning: trace event 'one' does not exist",
        f":{events}:5: warning: trace event 'three' does not exist",
        # QEMU cuts the last character of a final line without newline
        f":{events}:6: warning: trace event 'last' does not exist",
    ]
    with pytest.raises(TraceOptionError):
        parse_trace_option(f"events={tmp_path / 'missing'}")


def test_log_file(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_text("old")
    open_log_file(str(log))
    assert log.read_bytes() == b""
    with pytest.raises(TraceOptionError) as info:
        open_log_file(str(tmp_path / "no" / "t.log"))
    assert "Error opening logfile" in info.value.message
