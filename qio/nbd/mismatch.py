"""What qio-nbd does when a blkverify export finds its two children disagree.

qemu-io ends the program at the first blkverify mismatch.  A server must not: the guest (or
whatever client) keeps running, and the mismatch is evidence to keep.  ``MismatchRecorder``

* writes one line on stderr naming the request, the first differing offset and its sector;
* appends one JSON object per mismatch to a log file (``--mismatch-log``), which
  ``load_mismatch_records`` reads back (qio's ``mismatches -l FILE`` lists them);
* answers the driver with the policy: ``"raw"`` (the client gets the trusted raw child's data,
  the default) or ``"error"`` (the read fails with EIO).

The one function the blkverify driver needs is ``handle`` (installed as
``OpenContext.mismatch_handler``).  ``from_fatal`` covers a driver that ends the program with
qemu-io's ``blkverify: ...`` line instead of asking the handler: the server turns that into a
record and an EIO for the client, and keeps serving.
"""

from __future__ import annotations

import errno
import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from qio.results import LoggedMismatch, Mismatch

ACTIONS = ("raw", "error")

_FATAL_LINE = re.compile(
    r"^blkverify: (?P<op>read|write) offset=(?P<off>\d+) bytes=(?P<bytes>\d+) "
    r"(?:contents mismatch at offset (?P<at>\d+)|return value mismatch (?P<a>-?\d+) != (?P<b>-?\d+))"
)


@dataclass
class RequestContext:
    """Which client request is running, so a record can say where the mismatch came from."""

    export: str = ""
    client: str = ""
    command: str = ""
    offset: int = 0
    length: int = 0


@dataclass
class MismatchRecorder:
    action: str = "raw"
    log_path: str | None = None
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    program: str = "qio-nbd"
    current: RequestContext = field(default_factory=RequestContext)
    count: int = 0

    def handle(self, mismatch: Mismatch) -> str:
        """The policy hook: record ``mismatch`` and tell the driver what to do."""
        self.record(mismatch, self.action)
        return self.action

    def from_fatal(self, message: str) -> Mismatch | None:
        """Record a ``blkverify: ...`` line a driver ended the request with (then: EIO)."""
        m = _FATAL_LINE.match(message)
        if m is None:
            return None
        at = m.group("at")
        mismatch = Mismatch(
            op=m.group("op"),
            request_offset=int(m.group("off")),
            request_bytes=int(m.group("bytes")),
            offset=int(at) if at is not None else None,
            test_ret=int(m.group("a") or 0),
            raw_ret=int(m.group("b") or 0),
        )
        self.record(mismatch, "error")
        return mismatch

    def record(self, mismatch: Mismatch, action: str) -> None:
        self.count += 1
        outcome = "client gets the raw data" if action == "raw" else "client gets EIO"
        where = (
            f"offset {mismatch.offset} (sector {mismatch.sector})"
            if mismatch.offset is not None
            else f"return values {mismatch.test_ret} != {mismatch.raw_ret}"
        )
        self.stderr.write(
            f"{self.program}: blkverify mismatch in export '{self.current.export}' at {where}: "
            f"{mismatch.op} offset={mismatch.request_offset} bytes={mismatch.request_bytes}; "
            f"{outcome}\n"
        )
        self.stderr.flush()
        if self.log_path is None:
            return
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "export": self.current.export,
            "client": self.current.client,
            "op": mismatch.op,
            "request_offset": mismatch.request_offset,
            "request_bytes": mismatch.request_bytes,
            "offset": mismatch.offset,
            "sector": mismatch.sector,
            "test_ret": mismatch.test_ret,
            "raw_ret": mismatch.raw_ret,
            "window_offset": mismatch.window_offset,
            "raw_bytes": mismatch.raw_bytes.hex(),
            "test_bytes": mismatch.test_bytes.hex(),
            "action": action,
            "line": mismatch.qemu_line(),
        }
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")


class MismatchLogError(Exception):
    """A record file that cannot be read (``errno``) or holds something else."""

    def __init__(self, message: str, errno_value: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = errno_value


def load_mismatch_records(path: str) -> list[LoggedMismatch]:
    """The entries of a ``--mismatch-log`` file, each with its export, client, time and action
    (for qio's ``mismatches -l``)."""
    records: list[LoggedMismatch] = []
    try:
        with open(path, encoding="utf-8") as log:
            lines = log.readlines()
    except OSError as exc:
        raise MismatchLogError(
            f"Could not open '{path}': {exc.strerror}", exc.errno or errno.EIO
        ) from None
    except UnicodeDecodeError:
        raise MismatchLogError(f"{path}: not a mismatch record file") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            mismatch = Mismatch(
                op=str(entry["op"]),
                request_offset=int(entry["request_offset"]),
                request_bytes=int(entry["request_bytes"]),
                offset=None if entry.get("offset") is None else int(entry["offset"]),
                test_ret=int(entry.get("test_ret", 0)),
                raw_ret=int(entry.get("raw_ret", 0)),
                raw_bytes=bytes.fromhex(entry.get("raw_bytes", "")),
                test_bytes=bytes.fromhex(entry.get("test_bytes", "")),
                window_offset=int(entry.get("window_offset", 0)),
            )
            records.append(
                LoggedMismatch(
                    mismatch,
                    time=str(entry.get("time", "")),
                    export=str(entry.get("export", "")),
                    client=str(entry.get("client", "")),
                    action=str(entry.get("action", "")),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise MismatchLogError(f"{path}:{number}: not a mismatch record") from None
    return records


def load_mismatch_log(path: str) -> list[Mismatch]:
    """The ``Mismatch`` records of a ``--mismatch-log`` file."""
    return [r.mismatch for r in load_mismatch_records(path)]
