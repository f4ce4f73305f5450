"""Differential runs: the same invocation through the real qemu-io and through qio.

Each side runs in its own temporary directory, prepared by the same setup steps (which use the
real QEMU tools, so both start from byte-identical files).  For every invocation the exit
status, stdout and stderr are compared after the normalisation the shared conformance runner
applies (timing figures of statistics lines, program-name prefixes, the program's own usage
text, the temporary directory); after all invocations the files left in both directories must
be identical, byte for byte.

Used by the pytest suite (``tests/test_cases.py`` and friends) and from the command line while
writing cases::

    python tests/differential.py -f raw -c 'read -v 0 16' disk.raw --copy sample_images/disk.raw
    printf 'read 0 1\\n' | python tests/differential.py --stdin - -f raw disk.raw --image disk.raw:1M
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
QEMU_IO = "qemu-io"
QEMU_IMG = "qemu-img"
DEFAULT_TIMEOUT = 60.0


def oracle_missing_reason() -> str | None:
    """Why differential tests cannot run here, or None when qemu-io and qemu-img exist."""
    for tool in (QEMU_IO, QEMU_IMG):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y qemu-utils)"
    return None


def tool_env() -> dict[str, str]:
    """The environment of both sides: C locale, qio importable from this checkout."""
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env.pop("LANGUAGE", None)
    env.pop("POSIXLY_CORRECT", None)  # would change getopt's argument permutation
    env.pop("NO_COLOR", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


ORACLE_ARGV = [QEMU_IO]
CANDIDATE_ARGV = [sys.executable, "-m", "qio"]


# -- normalisation (the shared runner's rules) -------------------------------------------------
STATS_RE = re.compile(
    r"^(?P<pre>.*, -?\d+ ops; )"
    r"(?:\d\d\.\d\d sec|\d+:\d\d:\d\d\.\d\d) "
    r"\((?:\d+(?:\.\d+)?|inf|-?nan) (?:bytes|KiB|MiB|GiB|TiB|PiB|EiB)/sec"
    r" and (?:\d+\.\d{4}|inf|-?nan) ops/sec\)$"
)
CSTATS_RE = re.compile(
    r"^(?P<pre>-?\d+,-?\d+,)\d+:\d\d:\d\d\.\d\d,"
    r"(?:\d+\.\d{3}|inf|-?nan),(?:\d+\.\d{3}|inf|-?nan)$"
)
PROGRAM_NAMES = ("qemu-io", "qio")
PROG_RE = re.compile(r"^(?:qemu-io|qio)(?=: )")
USAGE_RE = re.compile(r"^Usage: (?:qemu-io|qio) ")
SEE_RE = re.compile(r"^See '(?:qemu-io|qio) -c help'")
HELP_LINE_RE = re.compile(r"^([a-z_]+) (?:.* )?-- \S")
# qemu-io 7.2's commands: help lines of qio's own additions are dropped before comparing.
QEMU_IO_COMMANDS = frozenset(
    "abort aio_flush aio_read aio_write alloc break close discard flush help info length map "
    "open quit read readv remove_break reopen resume sigraise sleep truncate wait_break write "
    "writev".split()
)
USAGE_TEXT = "<USAGE TEXT>"
NODE_NAME_RE = re.compile(r"'#block\d+'")
# "qemu-io:FILE:LINE: message": QEMU's error location right after the program name
LOCATION_RE = re.compile(r"^(?:qemu-io|qio):(?=[^\s:])")


def normalise(data: bytes, directories: Sequence[str] = ()) -> list[str]:
    """One stream as the lines that are compared.

    The shared runner's rules, plus two: automatic node names (``'#block194'``) are masked,
    because QEMU makes them with a random suffix, and the program name is also recognised
    before an error location (``qemu-io:events.txt:3: warning: ...``).
    """
    text = data.decode("latin-1")
    for d in directories:
        text = text.replace(d, "$DIR")
    lines: list[str] = []
    for line in text.split("\n"):
        m = STATS_RE.match(line)
        if m:
            line = m.group("pre") + "<TIME> (<RATE>/sec and <OPS> ops/sec)"
        else:
            m = CSTATS_RE.match(line)
            if m:
                line = m.group("pre") + "<TIME>,<RATE>,<OPS>"
        line = PROG_RE.sub("PROG", line)
        line = LOCATION_RE.sub("PROG:", line)
        # QEMU's automatic node names end in two random digits: never comparable.
        line = NODE_NAME_RE.sub("'#block<N>'", line)
        line = USAGE_RE.sub("Usage: PROG ", line)
        line = SEE_RE.sub("See 'PROG -c help'", line)
        m = HELP_LINE_RE.match(line)
        if m and m.group(1) not in QEMU_IO_COMMANDS:
            continue
        lines.append(line)
    # The program's own usage text (-h, bad options) is its own: only the first words count.
    if lines and lines[0].startswith("Usage: PROG "):
        return [USAGE_TEXT]
    return lines


# -- processes -------------------------------------------------------------------------------
@dataclass
class RunResult:
    status: int | None  # None: timed out
    stdout: bytes
    stderr: bytes

    @property
    def crashed(self) -> bool:
        return b"Traceback (most recent call last)" in self.stderr


def run_program(
    argv: Sequence[str],
    cwd: Path,
    stdin: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    preexec: Callable[[], None] | None = None,
) -> RunResult:
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=tool_env(),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=preexec,
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        return RunResult(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return RunResult(None, out, err)


def checked_run(argv: Sequence[str], cwd: Path, what: str) -> None:
    """A setup command that must succeed (a failure is the case's fault, not qio's)."""
    result = run_program(argv, cwd)
    if result.status != 0:
        raise SetupError(
            f"{what}: {' '.join(argv)} exited {result.status}: "
            + (result.stdout + result.stderr).decode("latin-1").strip()
        )


class SetupError(Exception):
    """Preparing the directories failed: a broken case, not a qio discrepancy."""


# -- scenarios -------------------------------------------------------------------------------
SetupStep = Callable[[Path], None]


@dataclass
class Invocation:
    """One program run: arguments after the program name, and optional piped stdin."""

    args: list[str]
    stdin: bytes | None = None
    label: str = ""
    obey_permissions: bool = False  # obey file permissions even as root (permission tests)


@dataclass
class Scenario:
    name: str
    setup: list[SetupStep] = field(default_factory=list)
    runs: list[Invocation] = field(default_factory=list)
    timeout: float = DEFAULT_TIMEOUT


@dataclass
class SideResult:
    runs: list[RunResult]
    files: dict[str, str]  # relative name -> digest
    directory: str


@dataclass
class Outcome:
    scenario: Scenario
    differences: list[str]
    details: list[str]

    @property
    def ok(self) -> bool:
        return not self.differences

    def explain(self) -> str:
        return "\n".join(
            [f"{self.scenario.name}: {len(self.differences)} difference(s)"]
            + ["  " + d for d in self.differences]
            + self.details
        )


WINDOW = 1 << 20


def file_digest(path: Path) -> str:
    """Size plus content: equal digests mean byte-identical files.

    Holes are never read (a sparse 4 TiB image costs nothing): only the non-zero 1 MiB
    windows that hold data are hashed, so the digest does not depend on how the file system
    laid the holes out.
    """
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        h.update(b"size %d\n" % size)
        pos = 0
        last_window = -WINDOW  # none hashed yet
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError:
                break  # ENXIO: only a hole remains
            window = max(start // WINDOW * WINDOW, last_window + WINDOW)
            while window < end:
                data = os.pread(fd, WINDOW, window)
                if data.strip(b"\0"):
                    h.update(b"%d " % window)
                    h.update(data)
                last_window = window
                window += WINDOW
            pos = end
    finally:
        os.close(fd)
    return h.hexdigest()


def directory_digest(root: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            found[str(path.relative_to(root))] = file_digest(path)
    return found


def _drop_file_permission_override() -> None:
    """Run the child as a root that obeys file permissions: drop CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from the capability bounding set, so the program exec'd next lacks
    them (an unprivileged uid could not even reach the Python interpreter under /root)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_side(prefix: Sequence[str], scenario: Scenario, directory: Path) -> SideResult:
    results = []
    for inv in scenario.runs:
        preexec = (
            _drop_file_permission_override if inv.obey_permissions and os.geteuid() == 0 else None
        )
        results.append(
            run_program(list(prefix) + inv.args, directory, inv.stdin, scenario.timeout, preexec)
        )
    return SideResult(results, directory_digest(directory), str(directory))


def prepare(scenario: Scenario, directory: Path) -> None:
    directory.mkdir()
    for step in scenario.setup:
        step(directory)


def _udiff(expected: list[str], got: list[str]) -> str:
    return "\n".join(difflib.unified_diff(expected, got, "qemu-io", "qio", lineterm="", n=2))


def compare(scenario: Scenario, oracle: SideResult, candidate: SideResult) -> Outcome:
    differences: list[str] = []
    details: list[str] = []
    for index, (inv, o, c) in enumerate(
        zip(scenario.runs, oracle.runs, candidate.runs, strict=True), 1
    ):
        tag = f"run {index}" + (f" ({inv.label})" if inv.label else "")
        if o.status is None:
            raise SetupError(f"{tag}: qemu-io timed out")
        if c.status is None:
            differences.append(f"{tag}: qio timed out after {scenario.timeout}s")
            continue
        if c.crashed:
            differences.append(f"{tag}: qio crashed: " + c.stderr.decode("latin-1").strip()[-300:])
        for stream in ("stdout", "stderr"):
            exp = normalise(getattr(o, stream), [oracle.directory])
            got = normalise(getattr(c, stream), [candidate.directory])
            if exp != got:
                differences.append(f"{tag}: {stream} differs")
                details.append(f"--- {tag} {stream}: qio {' '.join(inv.args)}\n{_udiff(exp, got)}")
        if o.status != c.status:
            differences.append(f"{tag}: exit status {c.status}, qemu-io {o.status}")
    if oracle.files.keys() != candidate.files.keys():
        differences.append(
            f"files: qemu-io left {sorted(oracle.files)}, qio left {sorted(candidate.files)}"
        )
    for name in sorted(oracle.files.keys() & candidate.files.keys()):
        if oracle.files[name] != candidate.files[name]:
            differences.append(f"files: {name} differs after the runs")
    return Outcome(scenario, differences, details)


def run_scenario(scenario: Scenario, keep: bool = False) -> Outcome:
    """Set up both directories, run both programs, compare everything."""
    root = Path(tempfile.mkdtemp(prefix=f"qio-diff-{scenario.name[:40]}-"))
    try:
        odir, cdir = root / "qemu-io", root / "qio"
        prepare(scenario, odir)
        prepare(scenario, cdir)
        if directory_digest(odir) != directory_digest(cdir):
            raise SetupError("setup is not deterministic")
        oracle = run_side(ORACLE_ARGV, scenario, odir)
        candidate = run_side(CANDIDATE_ARGV, scenario, cdir)
        return compare(scenario, oracle, candidate)
    finally:
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


# -- setup helpers ---------------------------------------------------------------------------
def create_image(name: str, size: str, fmt: str = "raw", options: Sequence[str] = ()) -> SetupStep:
    def step(d: Path) -> None:
        argv = [QEMU_IMG, "create", "-q", "-f", fmt]
        if options:
            argv += ["-o", ",".join(options)]
        checked_run(argv + [name, size], d, "qemu-img create")

    return step


def write_file(name: str, data: bytes, mode: int | None = None) -> SetupStep:
    def step(d: Path) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mode is not None:
            path.chmod(mode)

    return step


def copy_file(source: Path, name: str) -> SetupStep:
    def step(d: Path) -> None:
        shutil.copyfile(source, d / name)

    return step


def qemu_io_setup(args: Sequence[str]) -> SetupStep:
    def step(d: Path) -> None:
        checked_run([QEMU_IO, *args], d, "setup qemu-io")

    return step


# -- command line ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="run one qemu-io command line through qemu-io and qio and compare",
        usage="%(prog)s [--image NAME:SIZE] [--copy PATH] [--stdin FILE] -- QEMU-IO-ARGS...",
    )
    parser.add_argument("--image", action="append", default=[], help="NAME:SIZE raw image")
    parser.add_argument("--copy", action="append", default=[], help="copy PATH into the dirs")
    parser.add_argument("--stdin", help="file whose bytes are piped in ('-' = our stdin)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    setup: list[SetupStep] = []
    for spec in opts.image:
        name, _, size = spec.partition(":")
        setup.append(create_image(name, size or "1M"))
    for path in opts.copy:
        setup.append(copy_file(Path(path).resolve(), Path(path).name))
    stdin = None
    if opts.stdin is not None:
        stdin = sys.stdin.buffer.read() if opts.stdin == "-" else Path(opts.stdin).read_bytes()
    outcome = run_scenario(Scenario("cli", setup, [Invocation(args, stdin)]), keep=opts.keep)
    print("identical" if outcome.ok else outcome.explain())
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
