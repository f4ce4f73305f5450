"""Benchmark: qio against qemu-io, measured in the same run on fresh copies.

    python -m tests.bench [--rounds N] [--quick] [--cache MODE] [--only NAMES] [--no-qemu]

Every workload runs through qio and through qemu-io (when installed) alternately, on fresh
copies of the same images, ``--rounds`` times.  The table gives the median wall time of each
tool, the ratio qio/qemu-io and the peak resident set size of each process.  Both tools run
with the same cache mode (qemu-io's default, writethrough, unless ``--cache`` says otherwise).
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
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20


@dataclass
class Sample:
    seconds: float
    max_rss_kib: int


@dataclass
class Workload:
    name: str
    describe: str
    prepare: Callable[[str], None]  # builds the input files in a directory
    argv: Callable[[str], list[str]]  # tool-independent arguments (after the program)
    stdin: str | None = None  # file (relative to the directory) fed on stdin
    qemu: bool = True  # whether qemu-io can run it
    results: dict[str, list[Sample]] = field(default_factory=dict)


def run(cmd: list[str], cwd: str, stdin_path: str | None) -> Sample:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
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
    return Sample(elapsed, usage.ru_maxrss)


def qemu_img(*args: str, cwd: str) -> None:
    subprocess.run(["qemu-img", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def make_raw(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def make_qcow2(cwd: str, name: str, size: int, cluster: int) -> None:
    if shutil.which("qemu-img"):
        qemu_img(
            "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}", name, str(size), cwd=cwd
        )
    else:
        from qio.block.qcow2.create import create_qcow2

        create_qcow2(os.path.join(cwd, name), size, cluster_size=cluster)


def qio_fill(cwd: str, args: list[str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "qio", *args],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": REPO},
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
        ),
        Workload(
            "3 write qcow2",
            f"write -P 0xab 0 {big >> 20}M on a fresh qcow2 (64k)",
            prep_qcow2,
            lambda d: ["-f", "qcow2", *t, "-c", f"write -q -P 0xab 0 {big}", "q.qcow2"],
        ),
        Workload(
            "4 read qcow2",
            f"read -P 0xab 0 {big >> 20}M on that qcow2",
            prep_filled_qcow2,
            lambda d: ["-f", "qcow2", *t, "-c", f"read -q -P 0xab 0 {big}", "q.qcow2"],
        ),
        Workload(
            "5 4k overwrite",
            f"{n_random} random 4k write -q -P (stdin), allocated qcow2 4k",
            prep_allocated_4k,
            lambda d: ["-f", "qcow2", *t, "q.qcow2"],
            stdin="cmds",
        ),
        Workload(
            "6 4k allocate",
            f"{n_random} random 4k write -q -P (stdin), fresh qcow2 4k",
            prep_fresh_4k,
            lambda d: ["-f", "qcow2", *t, "q.qcow2"],
            stdin="cmds",
        ),
        Workload(
            "7 4k read",
            f"{n_random} random 4k read -q (stdin), qcow2 4k",
            prep_reads,
            lambda d: ["-f", "qcow2", *t, "q.qcow2"],
            stdin="cmds",
        ),
        Workload(
            "8 hexdump",
            f"read -v 0 {dump >> 20}M to /dev/null",
            prep_dump,
            lambda d: ["-f", "raw", *t, "-c", f"read -v 0 {dump}", "r.img"],
        ),
        Workload(
            "9 blkverify read",
            f"blkverify read -P 0xab 0 {big >> 20}M (raw + qcow2)",
            prep_blkverify,
            lambda d: ["-f", "raw", *t, "-c", f"read -q -P 0xab 0 {big}", blkverify],
        ),
        Workload(
            "10 verify sparse",
            "verify of a sparse blkverify pair (qio only; qemu-io column: reading it all)",
            prep_verify,
            lambda d: ["-f", "raw", *t, "-c", "verify -q", blkverify],
            qemu=False,
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


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="scale the workloads down (about a tenth)")
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
    qio_cmd = [sys.executable, "-m", "qio"]
    selected = {s.strip() for s in args.only.split(",") if s.strip()}
    print(
        f"cache mode: {args.cache}; rounds: {args.rounds}; scale: {scale}; qemu-io: {'yes' if have_qemu else 'not measured'}"
    )
    floor: list[float] = []
    rows = []
    for w in workloads(scale, args.cache):
        if selected and w.name.split()[0] not in selected:
            continue
        qio_s: list[Sample] = []
        qemu_s: list[Sample] = []
        for _ in range(args.rounds):
            for tool in ("qio", "qemu") if have_qemu else ("qio",):
                d = tempfile.mkdtemp(prefix="qio-bench-")
                try:
                    w.prepare(d)
                    if tool == "qio":
                        qio_s.append(run([*qio_cmd, *w.argv(d)], d, w.stdin))
                    elif w.qemu:
                        qemu_s.append(run(["qemu-io", *w.argv(d)], d, w.stdin))
                    else:
                        qemu_s.append(run(["qemu-io", *verify_baseline(d, args.cache)], d, None))
                finally:
                    shutil.rmtree(d, ignore_errors=True)
            if w.name.startswith("1 "):
                floor.append(run([sys.executable, "-c", "pass"], REPO, None).seconds)
        rows.append((w, qio_s, qemu_s))
    print(
        f"{'workload':<18} {'qio s':>8} {'qemu-io s':>10} {'ratio':>7} {'qio RSS':>9} {'qemu RSS':>9}  description"
    )
    for w, qs, es in rows:
        q = statistics.median(s.seconds for s in qs)
        qr = max(s.max_rss_kib for s in qs) // 1024
        if es:
            e = statistics.median(s.seconds for s in es)
            er = max(s.max_rss_kib for s in es) // 1024
            print(
                f"{w.name:<18} {q:>8.3f} {e:>10.3f} {q / e:>7.2f} {qr:>7}Mi {er:>7}Mi  {w.describe}"
            )
        else:
            print(f"{w.name:<18} {q:>8.3f} {'-':>10} {'-':>7} {qr:>7}Mi {'-':>9}  {w.describe}")
    if floor:
        f = statistics.median(floor)
        start = next(
            (
                statistics.median(s.seconds for s in qs)
                for w, qs, _ in rows
                if w.name.startswith("1 ")
            ),
            None,
        )
        if start:
            print(f"python -c pass: {f:.3f}s; qio start-up is {start / f:.2f} x that floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
