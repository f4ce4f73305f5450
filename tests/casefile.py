"""Case files in the shared conformance runner's format, turned into differential scenarios.

The format (see /work/shared/conformance/README.md): ``desc``/``timeout`` lines, setup lines
executed with the real QEMU tools in both directories (``image``, ``qemu-img``, ``qemu-io``,
``fill``, ``ramp``, ``poke``, ``file``), then ``run`` blocks whose ``-c`` lines are taken
verbatim.  A ``# requires: DRIVER...`` comment names qio drivers the case needs (the test
is skipped while qio lacks them).  qio's other extension, used only by cases under ``tests/cases/piped/`` (the shared runner
would reject it): a ``< TEXT`` line appends ``TEXT`` plus a newline to the run's piped stdin
(``<`` alone is an empty line).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.differential import (
    QEMU_IMG,
    QEMU_IO,
    Invocation,
    Scenario,
    SetupError,
    SetupStep,
    checked_run,
    run_program,
)

# qemu-io options that take a separate argument: used to find the file operand of a ``run``
# line, since the ``-c`` commands go between the options and the file.
OPTIONS_WITH_ARGUMENT = frozenset(
    [
        "-f",
        "--format",
        "-t",
        "--cache",
        "-d",
        "--discard",
        "-i",
        "--aio",
        "-T",
        "--trace",
        "--object",
        "-c",
        "--cmd",
    ]
)
SETUP_KINDS = frozenset(["image", "file", "qemu-img", "qemu-io", "fill", "poke", "ramp"])
MIN_SETUP_ARGS = {"image": 3, "fill": 4, "poke": 3, "ramp": 3}


class CaseFormatError(Exception):
    pass


@dataclass
class RunBlock:
    line: int
    args: list[str]
    commands: list[str] = field(default_factory=list)
    stdin: bytes | None = None

    def argv_tail(self) -> list[str]:
        """OPTIONS -c CMD... [FILE], as the shared runner builds it."""
        options, operand = split_file_operand(self.args)
        tail = list(options)
        for command in self.commands:
            tail += ["-c", command]
        if operand is not None:
            tail.append(operand)
        return tail


@dataclass
class CaseFile:
    path: Path
    desc: str = ""
    timeout: float | None = None
    setup: list[tuple[int, str, list[str]]] = field(default_factory=list)
    runs: list[RunBlock] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # image name -> format
    plain: set[str] = field(default_factory=set)  # files declared with ``file``
    # qio drivers the case needs (a "# requires: qcow2" comment, ignored by the shared runner)
    requires: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem


def split_file_operand(tokens: list[str]) -> tuple[list[str], str | None]:
    """(options, file): the file is the last token when it is a non-option operand."""
    last_operand: int | None = None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            if i + 1 < len(tokens):
                last_operand = i + 1
            break
        if token in OPTIONS_WITH_ARGUMENT:
            i += 2
            continue
        if not token.startswith("-") or token == "-":
            last_operand = i
        i += 1
    if last_operand is None or last_operand != len(tokens) - 1:
        return tokens, None
    return tokens[:-1], tokens[-1]


def parse_case(path: Path, allow_stdin: bool = False) -> CaseFile:
    case = CaseFile(path)
    current: RunBlock | None = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        line = raw.strip()
        where = f"{path.name}:{lineno}"
        if line.startswith("<") and allow_stdin:
            if current is None:
                raise CaseFormatError(f"{where}: stdin line before any 'run'")
            text = raw.lstrip()[1:]
            text = text[1:] if text.startswith(" ") else text
            current.stdin = (current.stdin or b"") + text.encode() + b"\n"
            continue
        if line.startswith("# requires:"):
            case.requires += line.split(":", 1)[1].split()
            continue
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "-c":
            if current is None:
                raise CaseFormatError(f"{where}: '-c' before any 'run'")
            current.commands.append(rest)
        elif word == "run":
            try:
                current = RunBlock(lineno, shlex.split(rest))
            except ValueError as exc:
                raise CaseFormatError(f"{where}: {exc}") from None
            case.runs.append(current)
        elif word == "desc":
            case.desc = rest
        elif word == "timeout":
            try:
                case.timeout = float(rest)
            except ValueError:
                raise CaseFormatError(f"{where}: bad timeout {rest!r}") from None
        elif word in SETUP_KINDS:
            if case.runs:
                raise CaseFormatError(f"{where}: setup line after the first 'run'")
            try:
                tokens = shlex.split(rest)
            except ValueError as exc:
                raise CaseFormatError(f"{where}: {exc}") from None
            if len(tokens) < MIN_SETUP_ARGS.get(word, 1):
                raise CaseFormatError(f"{where}: '{word}' needs more arguments")
            if word == "image":
                case.formats[tokens[0]] = tokens[1]
            elif word == "file":
                case.plain.add(tokens[0])
            case.setup.append((lineno, word, tokens))
        else:
            raise CaseFormatError(f"{where}: unknown directive {word!r}")
    if not case.runs:
        raise CaseFormatError(f"{path.name}: no 'run' block")
    return case


def parse_int(text: str) -> int:
    """Setup offsets and lengths: an integer with an optional k/m/g suffix."""
    text = text.strip().lower()
    multiplier = 1
    for suffix, mult in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if text.endswith(suffix):
            text, multiplier = text[:-1], mult
            break
    return int(text, 0) * multiplier


def probe_format(directory: Path, name: str) -> str | None:
    result = run_program([QEMU_IMG, "info", "--output=json", name], directory)
    if result.status != 0:
        return None
    try:
        return json.loads(result.stdout).get("format")
    except ValueError:
        return None


def _write_bytes(case: CaseFile, d: Path, name: str, offset: str, data: bytes, tag: str) -> None:
    if name in case.plain:
        with open(d / name, "r+b") as f:
            f.seek(parse_int(offset))
            f.write(data)
        return
    source = d.parent / f".{d.name}-{tag}"
    source.write_bytes(data)
    try:
        fmt = case.formats.get(name) or probe_format(d, name) or "raw"
        checked_run(
            [QEMU_IO, "-f", fmt, "-c", f"write -q -s {source} {offset} {len(data)}", name],
            d,
            "setup write",
        )
    finally:
        source.unlink()


def setup_step(case: CaseFile, index: int, kind: str, tokens: list[str]) -> SetupStep:
    def step(d: Path) -> None:
        if kind == "image":
            name, fmt, size = tokens[:3]
            argv = [QEMU_IMG, "create", "-q", "-f", fmt]
            if tokens[3:]:
                argv += ["-o", ",".join(tokens[3:])]
            checked_run(argv + [name, size], d, "image")
        elif kind == "file":
            (d / tokens[0]).write_bytes(bytes.fromhex("".join(tokens[1:])))
        elif kind == "qemu-img":
            checked_run([QEMU_IMG, *tokens], d, "qemu-img")
        elif kind == "qemu-io":
            checked_run([QEMU_IO, *tokens], d, "qemu-io")
        elif kind == "fill":
            name, pattern, offset, length = tokens[:4]
            fmt = case.formats.get(name) or probe_format(d, name) or "raw"
            checked_run(
                [QEMU_IO, "-f", fmt, "-c", f"write -q -P {pattern} {offset} {length}", name],
                d,
                "fill",
            )
        elif kind == "poke":
            data = bytes.fromhex("".join(tokens[2:]))
            _write_bytes(case, d, tokens[0], tokens[1], data, f"poke{index}")
        elif kind == "ramp":
            start = parse_int(tokens[3]) if len(tokens) > 3 else 0
            data = bytes((start + i) & 0xFF for i in range(parse_int(tokens[2])))
            _write_bytes(case, d, tokens[0], tokens[1], data, f"ramp{index}")
        else:  # pragma: no cover - parse_case only accepts SETUP_KINDS
            raise SetupError(f"unknown setup {kind}")

    return step


def to_scenario(case: CaseFile) -> Scenario:
    scenario = Scenario(
        case.name,
        [setup_step(case, i, kind, tokens) for i, (_line, kind, tokens) in enumerate(case.setup)],
        [Invocation(run.argv_tail(), run.stdin, f"line {run.line}") for run in case.runs],
    )
    if case.timeout is not None:
        scenario.timeout = case.timeout
    return scenario


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.casefile [--show] CASE...``: run cases, print differences (or, with
    --show, qemu-io's normalised output, which helps when writing a case)."""
    import argparse
    import sys

    from tests.differential import ORACLE_ARGV, normalise, run_scenario, run_side

    parser = argparse.ArgumentParser()
    parser.add_argument("--show", action="store_true")
    parser.add_argument("cases", nargs="+", type=Path)
    opts = parser.parse_args(argv)
    failed = 0
    for path in opts.cases:
        scenario = to_scenario(parse_case(path, allow_stdin=path.parent.name == "piped"))
        if opts.show:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp) / "d"
                d.mkdir()
                for step in scenario.setup:
                    step(d)
                side = run_side(ORACLE_ARGV, scenario, d)
                for inv, result in zip(scenario.runs, side.runs, strict=True):
                    print(f"=== {path.name} {inv.label}: qemu-io {shlex.join(inv.args)}")
                    for line in normalise(result.stdout, [str(d)]):
                        print("  |" + line)
                    for line in normalise(result.stderr, [str(d)]):
                        print("  !" + line)
                    print(f"  exit {result.status}")
            continue
        outcome = run_scenario(scenario)
        if outcome.ok:
            print(f"ok   {path.name}")
        else:
            failed += 1
            print("FAIL " + outcome.explain())
    print(f"{len(opts.cases) - failed}/{len(opts.cases)} cases match", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
