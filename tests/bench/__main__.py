"""Benchmark: qio against qemu-io, measured in the same run on fresh copies.

    python -m tests.bench [--rounds N] [--quick] [--cache MODE] [--only NAMES] [--no-qemu]

Every workload runs through qio and through qemu-io (when installed) alternately, on fresh
copies of the same images, ``--rounds`` times.  The Markdown table gives the median wall time
and the median CPU time (user + system) of each tool, their ratios qio/qemu-io, the peak
resident set size of each process and issue 7's target with whether this run met it.  Both
tools run with the same cache mode (qemu-io's default, writethrough, unless ``--cache`` says
otherwise).  docs/performance.md explains the workloads and keeps the latest results.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20
PYCACHE = os.path.join(tempfile.gettempdir(), "qio-bench-pycache")


@dataclass
class Sample:
    seconds: float  # wall time
    cpu: float  # user + system time of the process
    max_rss_kib: int


@dataclass
class Workload:
    name: str
    describe: str
    prepare: Callable[[str], None]  # builds the input files in a directory
    argv: Callable[[str], list[str]]  # tool-independent arguments (after the program)
    stdin: str | None = None  # file (relative to the directory) fed on stdin
    qemu: bool = True  # whether qemu-io can run it
    max_ratio: float | None = None  # issue 7's target for median wall time qio / qemu-io
    max_rss_mib: int | None = None  # issue 7's peak RSS target for qio
    check: Callable[[str], bool] | None = None  # validates the image qio left behind


def child_env() -> dict[str, str]:
    """The environment of every Python the benchmark starts.

    Bytecode is cached (in a directory of the benchmark's own, so the checkout stays clean)
    even where PYTHONDONTWRITEBYTECODE is set: an installed qio has compiled bytecode, and
    compiling its modules on every start would triple the start-up time measured.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def warm_bytecode_cache() -> None:
    """Compile qio (and the standard library modules it imports) into the cache once."""
    env = child_env()
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "qio")],
        env=env,
        stdout=subprocess.DEVNULL,
        check=False,
    )
    d = tempfile.mkdtemp(prefix="qio-bench-")
    try:
        make_raw(os.path.join(d, "r.img"), MIB)
        for cmd in (
            [sys.executable, "-c", "pass"],
            [sys.executable, "-m", "qio", "-f", "raw", "-c", "help"],
        ):
            subprocess.run(
                cmd + (["r.img"] if "qio" in cmd else []),
                cwd=d,
                env=env,
                stdout=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                check=False,
            )
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(cmd: list[str], cwd: str, stdin_path: str | None) -> Sample:
    env = child_env()
    stdin = open(os.path.join(cwd, stdin_path), "rb") if stdin_path else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
    err = proc.stderr.read() if proc.stderr else b""
    if os.waitstatus_to_exitcode(status) not in (0,):
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.decode(errors='replace')[:500]}")
    return Sample(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def qemu_img(*args: str, cwd: str) -> None:
    subprocess.run(["qemu-img", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def make_raw(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


class Unavailable(Exception):
    """A workload cannot be prepared on this machine (it is left out of the table)."""


def make_qcow2(cwd: str, name: str, size: int, cluster: int) -> None:
    opts = ["-f", "qcow2", "-o", f"cluster_size={cluster}", name, str(size)]
    if shutil.which("qemu-img"):
        qemu_img("create", "-q", *opts, cwd=cwd)
        return
    made = subprocess.run(
        [sys.executable, "-m", "qio.img", "create", "-q", *opts],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if made.returncode:
        raise Unavailable("creating a qcow2 image needs qemu-img or qio-img create")


def qio_fill(cwd: str, args: list[str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "qio", *args],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        env=child_env(),
    )


def command_file(cwd: str, name: str, lines: list[str]) -> None:
    with open(os.path.join(cwd, name), "w") as f:
        f.write("\n".join(lines) + "\n")


def workloads(scale: float, cache: str) -> list[Workload]:
    big = int(256 * MIB * scale) // MIB * MIB or MIB
    n_random = max(200, int(20000 * scale))
    dump = max(MIB, int(16 * MIB * scale) // MIB * MIB)
    area = 64 * MIB
    rng = random.Random(42)
    writes = [
        f"write -q -P 0x{rng.randrange(256):02x} {rng.randrange(area // 4096) * 4096} 4k"
        for _ in range(n_random)
    ]
    reads = [f"read -q {rng.randrange(area // 4096) * 4096} 4k" for _ in range(n_random)]
    t = ["-t", cache]

    def prep_start(d: str) -> None:
        make_raw(os.path.join(d, "r.img"), MIB)

    def prep_raw(d: str) -> None:
        make_raw(os.path.join(d, "r.img"), big)

    def prep_qcow2(d: str) -> None:
        make_qcow2(d, "q.qcow2", big, 65536)

    def prep_filled_qcow2(d: str) -> None:
        make_qcow2(d, "q.qcow2", big, 65536)
        qio_fill(d, ["-t", "unsafe", "-c", f"write -q -P 0xab 0 {big}", "q.qcow2"])

    def prep_allocated_4k(d: str) -> None:
        make_qcow2(d, "q.qcow2", area, 4096)
        qio_fill(d, ["-t", "unsafe", "-c", f"write -q -P 1 0 {area}", "q.qcow2"])
        command_file(d, "cmds", writes)

    def prep_fresh_4k(d: str) -> None:
        make_qcow2(d, "q.qcow2", area, 4096)
        command_file(d, "cmds", writes)

    def prep_reads(d: str) -> None:
        make_qcow2(d, "q.qcow2", area, 4096)
        qio_fill(d, ["-t", "unsafe", "-c", f"write -q -P 1 0 {area}", "q.qcow2"])
        command_file(d, "cmds", reads)

    def prep_dump(d: str) -> None:
        make_raw(os.path.join(d, "r.img"), dump)
        qio_fill(d, ["-f", "raw", "-t", "unsafe", "-c", f"write -q -P 0x61 0 {dump // 2}", "r.img"])

    def prep_blkverify(d: str) -> None:
        make_raw(os.path.join(d, "r.img"), big)
        make_qcow2(d, "q.qcow2", big, 65536)
        qio_fill(
            d,
            [
                "-f",
                "raw",
                "-t",
                "unsafe",
                "-c",
                f"write -q -P 0xab 0 {big}",
                "blkverify:r.img:q.qcow2",
            ],
        )

    def prep_verify(d: str) -> None:
        size = int(4096 * MIB * max(scale, 1 / 16))
        make_raw(os.path.join(d, "r.img"), size)
        make_qcow2(d, "q.qcow2", size, 65536)
        qio_fill(
            d,
            [
                "-f",
                "raw",
                "-t",
                "unsafe",
                "-c",
                "write -q -P 5 1M 64k",
                "-c",
                f"write -q -P 6 {size // 2} 64k",
                "blkverify:r.img:q.qcow2",
            ],
        )

    blkverify = "blkverify:r.img:q.qcow2"
    return [
        Workload(
            "1 start-up",
            "-c 'read 0 512' on a 1 MiB raw image",
            prep_start,
            lambda d: ["-f", "raw", *t, "-c", "read 0 512", "r.img"],
        ),
        Workload(
            "2 write raw",
            f"write -P 0xab 0 {big >> 20}M on raw",
            prep_raw,
            lambda d: ["-f", "raw", *t, "-c", f"write -q -P 0xab 0 {big}", "r.img"],
            max_ratio=0.5,
            max_rss_mib=64,
        ),
        Workload(
            "3 write qcow2",
            f"write -P 0xab 0 {big >> 20}M on a fresh qcow2 (64k)",
            prep_qcow2,
            lambda d: ["-f", "qcow2", *t, "-c", f"write -q -P 0xab 0 {big}", "q.qcow2"],
            max_ratio=0.5,
            max_rss_mib=64,
        ),
        Workload(
            "4 read qcow2",
            f"read -P 0xab 0 {big >> 20}M on that qcow2",
            prep_filled_qcow2,
            lambda d: ["-f", "qcow2", *t, "-c", f"read -q -P 0xab 0 {big}", "q.qcow2"],
            max_ratio=0.5,
            max_rss_mib=64,
        ),
        Workload(
            "5 4k overwrite",
            f"{n_random} random 4k write -q -P (stdin), allocated qcow2 4k",
            prep_allocated_4k,
            lambda d: ["-f", "qcow2", *t, "q.qcow2"],
            stdin="cmds",
            max_ratio=1.0,
        ),
        Workload(
            "6 4k allocate",
            f"{n_random} random 4k write -q -P (stdin), fresh qcow2 4k",
            prep_fresh_4k,
            lambda d: ["-f", "qcow2", *t, "q.qcow2"],
            stdin="cmds",
            max_ratio=1.0,
            check=image_checks,
        ),
        Workload(
            "7 4k read",
            f"{n_random} random 4k read -q (stdin), qcow2 4k",
            prep_reads,
            lambda d: ["-f", "qcow2", *t, "q.qcow2"],
            stdin="cmds",
            max_ratio=1.5,
        ),
        Workload(
            "8 hexdump",
            f"read -v 0 {dump >> 20}M to /dev/null",
            prep_dump,
            lambda d: ["-f", "raw", *t, "-c", f"read -v 0 {dump}", "r.img"],
            max_ratio=0.5,
        ),
        Workload(
            "9 blkverify read",
            f"blkverify read -P 0xab 0 {big >> 20}M (raw + qcow2)",
            prep_blkverify,
            lambda d: ["-f", "raw", *t, "-c", f"read -q -P 0xab 0 {big}", blkverify],
            max_ratio=0.5,
            max_rss_mib=64,
        ),
        Workload(
            "10 verify sparse",
            "verify of a sparse blkverify pair (qio only; qemu-io column: reading it all)",
            prep_verify,
            lambda d: ["-f", "raw", *t, "-c", "verify -q", blkverify],
            qemu=False,
            max_ratio=1.0,
        ),
    ]


def verify_baseline(d: str, cache: str) -> list[str]:
    """What qemu-io needs to look at the same data: read all of it through blkverify."""
    size = os.path.getsize(os.path.join(d, "r.img"))
    cmds: list[str] = []
    pos = 0
    while pos < size:
        n = min(1 << 30, size - pos)
        cmds += ["-c", f"read -q {pos} {n}"]
        pos += n
    return ["-f", "raw", "-t", cache, *cmds, "blkverify:r.img:q.qcow2"]


def image_checks(d: str) -> bool:
    """``qemu-img check`` (or ``qio-img check``) passes on the qcow2 qio wrote."""
    tool = ["qemu-img"] if shutil.which("qemu-img") else [sys.executable, "-m", "qio.img"]
    ran = subprocess.run(
        [*tool, "check", "-q", "q.qcow2"],
        cwd=d,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    return ran.returncode == 0


@dataclass
class Row:
    w: Workload
    qio: list[Sample]
    qemu: list[Sample]
    checked: bool = True


def median(samples: list[Sample], what: str) -> float:
    return statistics.median(getattr(s, what) for s in samples)


def peak_mib(samples: list[Sample]) -> int:
    return max(s.max_rss_kib for s in samples) // 1024


def verdict(row: Row, floor: float | None) -> tuple[str, str]:
    """(target, met?) for a row, from issue 7's targets table."""
    w = row.w
    q = median(row.qio, "seconds")
    if w.name.startswith("1 "):
        target = "<= 2.5 x `python -c pass`"
        if floor is None:
            return target, "?"
        return target, f"{'yes' if q <= 2.5 * floor else 'no'} ({q / floor:.2f} x)"
    parts = []
    ok = True
    if not w.qemu:
        parts.append("faster than reading it all")
    elif w.max_ratio is not None:
        parts.append(f"ratio <= {w.max_ratio:g}")
    if w.max_ratio is not None and row.qemu:
        ok &= q / median(row.qemu, "seconds") <= w.max_ratio
    if w.max_rss_mib is not None:
        parts.append(f"RSS <= {w.max_rss_mib} MiB")
        ok &= peak_mib(row.qio) <= w.max_rss_mib
    if w.check is not None:
        parts.append("image checks clean")
        ok &= row.checked
    met = "yes" if ok else "no"
    if not row.qemu:
        met = f"{met} (qio side only)" if w.max_rss_mib or w.check else "? (no qemu-io)"
    return ", ".join(parts), met


def table(rows: list[Row], floor: float | None) -> list[str]:
    """The results as a Markdown table (docs/performance.md keeps the latest one)."""
    out = [
        "| workload | qio wall s | qemu-io wall s | ratio | qio CPU s | qemu-io CPU s | CPU ratio"
        " | qio peak RSS | qemu-io peak RSS | target | met? |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        q, qc = median(row.qio, "seconds"), median(row.qio, "cpu")
        if row.qemu:
            e, ec = median(row.qemu, "seconds"), median(row.qemu, "cpu")
            theirs = [f"{e:.3f}", f"{q / e:.2f}", f"{ec:.3f}", f"{qc / ec:.2f}" if ec else "-"]
            their_rss = f"{peak_mib(row.qemu)} MiB"
        else:
            theirs, their_rss = ["-", "-", "-", "-"], "-"
        target, met = verdict(row, floor)
        cells = [
            f"{row.w.name}: {row.w.describe}",
            f"{q:.3f}",
            theirs[0],
            theirs[1],
            f"{qc:.3f}",
            theirs[2],
            theirs[3],
            f"{peak_mib(row.qio)} MiB",
            their_rss,
            target,
            met,
        ]
        out.append("| " + " | ".join(cells) + " |")
    if floor is not None:
        out.append("")
        out.append(f"Floor (`python -c pass`, median): {floor:.3f} s wall.")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="scale the data-moving workloads down to a tenth (the targets are for full size)",
    )
    ap.add_argument(
        "--cache",
        default="writethrough",
        help="cache mode for both tools (default: qemu-io's, writethrough)",
    )
    ap.add_argument("--only", default="", help="comma-separated workload numbers to run")
    ap.add_argument("--no-qemu", action="store_true", help="measure qio only")
    args = ap.parse_args()
    scale = 0.1 if args.quick else 1.0
    have_qemu = shutil.which("qemu-io") is not None and not args.no_qemu
    selected = {s.strip() for s in args.only.split(",") if s.strip()}
    print(
        f"cache mode: {args.cache}; rounds: {args.rounds}; scale: {scale}; "
        f"qemu-io: {'yes' if have_qemu else 'not measured'}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    warm_bytecode_cache()
    floor: list[float] = []
    rows: list[Row] = []
    for w in workloads(scale, args.cache):
        if selected and w.name.split()[0] not in selected:
            continue
        row = Row(w, [], [])
        try:
            rounds(w, row, args.rounds, have_qemu, args.cache, floor)
        except Unavailable as exc:
            print(f"  skipped: {w.name} ({exc})", file=sys.stderr, flush=True)
            continue
        rows.append(row)
        print(f"  done: {w.name}", file=sys.stderr, flush=True)
    print("\n".join(table(rows, statistics.median(floor) if floor else None)))
    return 0


def rounds(w: Workload, row: Row, n: int, have_qemu: bool, cache: str, floor: list[float]) -> None:
    """Runs the workload ``n`` times through each tool, alternately, on fresh copies."""
    qio_cmd = [sys.executable, "-m", "qio"]
    for _ in range(n):
        for tool in ("qio", "qemu") if have_qemu else ("qio",):
            d = tempfile.mkdtemp(prefix="qio-bench-")
            try:
                w.prepare(d)
                if tool == "qio":
                    row.qio.append(run([*qio_cmd, *w.argv(d)], d, w.stdin))
                    if w.check is not None and not w.check(d):
                        row.checked = False
                elif w.qemu:
                    row.qemu.append(run(["qemu-io", *w.argv(d)], d, w.stdin))
                else:
                    row.qemu.append(run(["qemu-io", *verify_baseline(d, cache)], d, None))
            finally:
                shutil.rmtree(d, ignore_errors=True)
        if w.name.startswith("1 "):
            floor.append(run([sys.executable, "-c", "pass"], REPO, None).seconds)


if __name__ == "__main__":
    sys.exit(main())
