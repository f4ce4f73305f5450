"""Seeded random qemu-io workloads, run through qemu-io and qio on copies of one image.

Used by the qcow2 differential tests and runnable by hand for longer soaks:

    python -m tests.qcow2_workload --commands 3000 --seed 7 -o cluster_size=4096,extended_l2=on
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS = re.compile(r"^(.*, -?\d+ ops; ).*$")
CSTATS = re.compile(r"^(-?\d+,-?\d+,).*$")


def qio_argv() -> list[str]:
    return [sys.executable, "-m", "qio"]


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["LC_ALL"] = "C"
    return env


def normalise(text: str) -> str:
    out = []
    for line in text.split("\n"):
        line = STATS.sub(r"\1<T>", line)
        line = CSTATS.sub(r"\1<T>", line)
        line = re.sub(r"^(qemu-io|qio): ", "PROG: ", line)
        # QEMU names anonymous nodes '#block' + a counter + two random digits.
        line = re.sub(r"'#block\d+'", "'#blockN'", line)
        out.append(line)
    return "\n".join(out)


def random_commands(
    rng: random.Random, size: int, cluster: int, count: int, compress: bool = True
) -> list[str]:
    cmds: list[str] = []

    def span(max_clusters: int = 3) -> tuple[int, int]:
        if rng.random() < 0.5:
            off = rng.randrange(0, size // 512) * 512
            length = rng.randrange(1, max_clusters * cluster // 512 + 1) * 512
        else:
            off = rng.randrange(0, size)
            length = rng.randrange(1, max_clusters * cluster + 1)
        length = max(1, min(length, size - off))
        return off, length

    for _ in range(count):
        r = rng.random()
        if r < 0.30:
            off, length = span()
            cmds.append(f"write -q -P 0x{rng.randrange(1, 256):02x} {off} {length}")
        elif r < 0.40:
            off, length = span()
            cmds.append(f"write -q -z {off} {length}")
        elif r < 0.47:
            off, length = span()
            cmds.append(f"write -q -z -u {off} {length}")
        elif r < 0.55:
            off, length = span(4)
            cmds.append(f"discard -q {off} {length}")
        elif r < 0.60 and compress:
            first = rng.randrange(0, size // cluster)
            n = rng.randrange(1, 3)
            n = min(n, size // cluster - first)
            cmds.append(
                f"write -q -c -P 0x{rng.randrange(1, 256):02x} {first * cluster} {n * cluster}"
            )
        elif r < 0.85:
            off, length = span()
            cmds.append(f"read -q -P 0x{rng.randrange(0, 256):02x} {off} {length}")
        elif r < 0.93:
            off = rng.randrange(0, size)
            cmds.append(f"read -v {off} {min(rng.randrange(1, 48), size - off)}")
        elif r < 0.97:
            off, length = span(8)
            cmds.append(f"alloc {off} {length}")
        else:
            cmds.append("map")
    return cmds


@dataclass
class Outcome:
    rc: int
    out: str
    err: str


def run_tool(argv: list[str], cwd: str, timeout: float = 600) -> Outcome:
    p = subprocess.run(
        argv,
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Outcome(p.returncode, normalise(p.stdout), normalise(p.stderr))


def batches(cmds: list[str], size: int = 400) -> list[list[str]]:
    return [cmds[i : i + size] for i in range(0, len(cmds), size)]


def run_workload(
    workdir: str,
    create_opts: str,
    size: int,
    cmds: list[str],
    backing: bool,
    cache: str = "writeback",
) -> list[str]:
    """Run ``cmds`` through both tools; return a list of differences (empty when equal)."""
    problems: list[str] = []
    sides = {}
    for side in ("qemu", "qio"):
        d = os.path.join(workdir, side)
        os.makedirs(d)
        sides[side] = d
        if backing:
            subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    "cluster_size=65536",
                    "base.qcow2",
                    str(size),
                ],
                cwd=d,
                check=True,
            )
            subprocess.run(
                [
                    "qemu-io",
                    "-f",
                    "qcow2",
                    "-c",
                    f"write -q -P 0xbb 0 {size // 2}",
                    "-c",
                    f"write -q -P 0xbc {size // 2 + 4096} {size // 4}",
                    "base.qcow2",
                ],
                cwd=d,
                check=True,
            )
            subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    create_opts,
                    "-b",
                    "base.qcow2",
                    "-F",
                    "qcow2",
                    "t.qcow2",
                    str(size),
                ],
                cwd=d,
                check=True,
            )
        else:
            subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    create_opts,
                    "t.qcow2",
                    str(size),
                ],
                cwd=d,
                check=True,
            )
    for i, batch in enumerate(batches(cmds)):
        args: list[str] = ["-f", "qcow2", "-t", cache]
        for c in batch:
            args += ["-c", c]
        args.append("t.qcow2")
        q = run_tool(["qemu-io", *args], sides["qemu"])
        c = run_tool([*qio_argv(), *args], sides["qio"])
        for what, a, b in (
            ("exit", str(q.rc), str(c.rc)),
            ("stdout", q.out, c.out),
            ("stderr", q.err, c.err),
        ):
            if a != b:
                import difflib

                diff = "\n".join(
                    list(
                        difflib.unified_diff(
                            a.split("\n"), b.split("\n"), "qemu-io", "qio", lineterm=""
                        )
                    )[:40]
                )
                problems.append(f"batch {i}: {what} differs\n{diff}")
        if problems:
            return problems
    qimg = os.path.join(sides["qio"], "t.qcow2")
    oracle = os.path.join(sides["qemu"], "t.qcow2")
    oracle_check = subprocess.run(["qemu-img", "check", "-f", "qcow2", oracle], capture_output=True)
    # QEMU 7.2 can pack compressed data into a freed-and-reused data cluster, corrupting its
    # own image and the guest data there (qio does the same, see below).
    oracle_sound = oracle_check.returncode == 0
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", oracle, qimg],
        capture_output=True,
        text=True,
    )
    if cmp.returncode != 0 and oracle_sound:
        problems.append(f"qemu-img compare: {cmp.stdout.strip()} {cmp.stderr.strip()}")
    chk = subprocess.run(["qemu-img", "check", "-f", "qcow2", qimg], capture_output=True, text=True)
    if not oracle_sound:
        # qio reproduces QEMU's damage (compressed data packed into a reused cluster): the
        # two checks must then report the same.
        theirs = oracle_check.stdout.decode() + oracle_check.stderr.decode()
        if chk.stdout + chk.stderr != theirs:
            problems.append(f"qemu-img check differs from qemu-io's damaged image: {chk.stdout}")
    elif chk.returncode != 0:
        problems.append(
            f"qemu-img check: exit {chk.returncode}: {chk.stdout.strip()} {chk.stderr.strip()[:2000]}"
        )
    return problems


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", default="8M")
    ap.add_argument("-o", default="cluster_size=65536")
    ap.add_argument("--backing", action="store_true")
    ap.add_argument("--cache", default="writeback")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    size = (
        int(args.size[:-1]) << {"K": 10, "M": 20, "G": 30}[args.size[-1]]
        if args.size[-1] in "KMG"
        else int(args.size)
    )
    cluster = 65536
    m = re.search(r"cluster_size=(\d+)", args.o)
    if m:
        cluster = int(m.group(1))
    rng = random.Random(args.seed)
    cmds = random_commands(
        rng, size, cluster, args.commands, compress="extended_l2=on" not in args.o or True
    )
    work = tempfile.mkdtemp(prefix="qio-workload-")
    try:
        problems = run_workload(work, args.o, size, cmds, args.backing, args.cache)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)
    for p in problems:
        print(p)
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
