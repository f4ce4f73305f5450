"""``-T [[enable=]PATTERN][,events=FILE][,file=FILE]``: QEMU's trace option, as qio can honour it.

qio emits no QEMU trace events, so nothing is ever traced; what stays observable is exactly
what qemu-io does with the option itself: its syntax errors, ``help`` (the list of events),
the warning for an event name (not a pattern) that does not exist, the same warnings for every line of an events file (with
QEMU's ``prog:file:line:`` location and its habit of cutting the last character of a final
line without newline), and the log file, which QEMU creates (empty here) after the options
were parsed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from qio.trace_events import TRACE_EVENTS

KNOWN_KEYS = ("enable", "events", "file")


class TraceOptionError(Exception):
    """The option cannot be used: qemu-io prints the message and exits with status 1."""

    def __init__(self, message: str, warnings: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message  # including any location prefix, without the program name
        self.warnings = warnings or []  # printed before the message


@dataclass
class TraceRequest:
    warnings: list[str]  # full lines after "PROG" (e.g. ": warning: ..." or ":f:1: warning:")
    log_file: str | None
    list_events: bool = False  # enable=help: print the event names and exit with status 0


def _split_option_string(text: str) -> list[tuple[str | None, str]]:
    """QemuOpts elements: (key or None for a bare word, value); ``,,`` is a literal comma."""
    elements: list[tuple[str | None, str]] = []
    i, n = 0, len(text)
    while i < n:
        chars: list[str] = []
        while i < n:
            if text[i] == ",":
                if i + 1 < n and text[i + 1] == ",":
                    chars.append(",")
                    i += 2
                    continue
                break
            chars.append(text[i])
            i += 1
        i += 1
        word = "".join(chars)
        key, eq, value = word.partition("=")
        elements.append((key, value) if eq else (None, word))
    return elements


def _is_pattern(name: str) -> bool:
    return "*" in name or "?" in name


def _enable(pattern: str) -> str | None:
    """The warning for one enable pattern, if any (no event exists in qio)."""
    name = pattern[1:] if pattern.startswith("-") else pattern
    if _is_pattern(name) or name in _KNOWN:
        return None
    return f"warning: trace event '{name}' does not exist"


_KNOWN = frozenset(TRACE_EVENTS)


def _events_file(path: str) -> tuple[list[str], bool]:
    """The warnings for an events file, and whether a line asked for the event list."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        raise TraceOptionError(f":{path}: {os.strerror(exc.errno or 0)}") from None
    warnings: list[str] = []
    # Lines as fgets() returns them: each keeps its newline except perhaps the last.
    chunks = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    for number, chunk in enumerate(chunks, 1):
        text = chunk.split(b"\0", 1)[0]
        if len(text) <= 1:
            continue
        text = text[:-1]  # QEMU drops the last character, newline or not
        if text.startswith(b"#"):
            continue
        if text in (b"help", b"?"):  # each line goes through trace_enable_events
            return warnings, True
        warning = _enable(text.decode("utf-8", "surrogateescape"))
        if warning is not None:
            warnings.append(f":{path}:{number}: {warning}")
    return warnings, False


def parse_trace_option(text: str) -> TraceRequest:
    """What one ``-T`` does at the point qemu-io parses it."""
    values: dict[str, str] = {}
    warnings: list[str] = []
    for index, (key, value) in enumerate(_split_option_string(text)):
        if key is None:
            if index == 0:
                key = "enable"
            else:  # QemuOpts' deprecated short-form boolean: "nofile" means file=off
                word = value
                key, value = (word[2:], "off") if word.startswith("no") else (word, "on")
                warnings.append(
                    f": warning: short-form boolean option '{word}' deprecated\n"
                    f"Please use {key}={value} instead"
                )
        if key not in KNOWN_KEYS:
            raise TraceOptionError(f": Invalid parameter '{key}'", warnings)
        values[key] = value
    if values.get("enable") in ("help", "?"):
        return TraceRequest(warnings, None, list_events=True)
    if "enable" in values:
        warning = _enable(values["enable"])
        if warning is not None:
            warnings.append(f": {warning}")
    if "events" in values:
        file_warnings, list_events = _events_file(values["events"])
        warnings += file_warnings
        if list_events:
            return TraceRequest(warnings, None, list_events=True)
    return TraceRequest(warnings, values.get("file"))


def open_log_file(path: str) -> None:
    """QEMU opens (and truncates) the trace log file once the options are parsed."""
    try:
        with open(path, "w"):
            pass
    except OSError as exc:
        raise TraceOptionError(
            f": Error opening logfile {path}: {os.strerror(exc.errno or 0)}"
        ) from None
