"""Random differential runs of qio-img compare/convert/snapshot/rebase/resize vs qemu-img.

Not collected by pytest (it takes minutes): ``python -m tests.img_ops_fuzz SEED ROUNDS``.
Each round makes a qcow2 image and an overlay with random options (cluster size, extended
L2, compat) and random qemu-io writes (data, zeros, discards, compressed clusters), then
applies random subcommands with both tools on identical copies.  Exit code, stdout, stderr
and every file left behind (snapshot dates masked) must be identical; the first mismatch of
a round is printed and the round's directory kept as ``/tmp/img_ops_fuzz/fail-SEED-ROUND``.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from tests.differential import QEMU_IMG, QEMU_IO, tool_env

ROOT = Path("/tmp/img_ops_fuzz")
CHECKOUT = Path(__file__).resolve().parent.parent
ENV = dict(tool_env(), PYTHONPATH=str(CHECKOUT))
Result = tuple[int, bytes, bytes]


def run(cwd: Path, args: list[str]) -> Result:
    p = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, check=False)
    return p.returncode, p.stdout, p.stderr.replace(b"qio-img", b"qemu-img")


def masked_digest(path: Path) -> str:
    data = bytearray(path.read_bytes())
    if data[:4] == b"QFI\xfb":
        nb, off = struct.unpack_from(">IQ", data, 60)
        for _ in range(nb):
            off = -(-off // 8) * 8
            _, _, id_len, name_len, _, _, _, _, extra = struct.unpack_from(">QIHHIIQII", data, off)
            data[off + 16 : off + 24] = bytes(8)
            off += 40 + extra + id_len + name_len
    return hashlib.md5(data).hexdigest()


def make_inputs(rng: random.Random, d: Path) -> tuple[str, int] | None:
    cs = rng.choice(["512", "4k", "64k", "128k"])
    cluster = {"512": 512, "4k": 4096, "64k": 65536, "128k": 131072}[cs]
    opts = f"cluster_size={cs}"
    if cs == "128k" and rng.random() < 0.5:
        opts += ",extended_l2=on"
    elif rng.random() < 0.2:
        opts += ",compat=0.10"
    size = rng.choice([1, 2, 3, 5]) * (1 << 20) + rng.choice([0, 0, 512, 4096])
    run(d, [QEMU_IMG, "create", "-f", "qcow2", "-o", opts, "a.qcow2", str(size)])
    run(d, [QEMU_IMG, "create", "-f", "qcow2", "-o", opts, "-b", "a.qcow2", "-F", "qcow2",
            "b.qcow2"])
    if not (d / "b.qcow2").exists():
        return None
    for image in ("a.qcow2", "b.qcow2"):
        cmds: list[str] = []
        for _ in range(rng.randint(1, 8)):
            off = rng.randrange(0, size // 512) * 512
            length = min(rng.randint(1, 256) * 512, size - off)
            kind = rng.choice(
                [f"write -P {rng.randint(0, 255)}", "write -z", "discard", "write -c -P 7"]
            )
            if kind.startswith("write -c"):
                off = off // cluster * cluster
                length = min(cluster, size - off)
            cmds += ["-c", f"{kind} {off} {length}"]
        run(d, [QEMU_IO, *cmds, image])
    shutil.copy(d / "a.qcow2", d / "a0.qcow2")
    return opts, size


def operations(rng: random.Random, opts: str, size: int) -> list[list[str]]:
    return [
        ["convert", "-O", "qcow2", "b.qcow2", "t.qcow2"],
        ["convert", "-O", "raw", "b.qcow2", "t.raw"],
        ["convert", "-c", "-O", "qcow2", "b.qcow2", "t.qcow2"],
        ["convert", "-O", "qcow2", "-o", opts, "-B", "a.qcow2", "-F", "qcow2", "b.qcow2",
         "t.qcow2"],
        ["convert", "-S", rng.choice(["0", "512", "4k", "64k"]), "-O", "qcow2", "-o", opts,
         "b.qcow2", "t.qcow2"],
        ["compare", "a.qcow2", "b.qcow2"],
        ["compare", "-s", "a.qcow2", "b.qcow2"],
        ["compare", "-p", "b.qcow2", "a0.qcow2"],
        ["snapshot", "-c", "s", "b.qcow2"],
        ["snapshot", "-c", "s", "a.qcow2"],
        ["snapshot", "-a", "s", "a.qcow2"],
        ["snapshot", "-d", "s", "a.qcow2"],
        ["convert", "-l", "s", "-O", "raw", "a.qcow2", "t.raw"],
        ["rebase", "-b", "", "b.qcow2"],
        ["rebase", "-p", "-b", "a0.qcow2", "-F", "qcow2", "b.qcow2"],
        ["resize", "--shrink", "b.qcow2", str(rng.choice([size // 1024 * 512, size * 2]))],
    ]


def one_round(seed: int, index: int, rng: random.Random) -> bool:
    work = ROOT / "work"
    shutil.rmtree(work, ignore_errors=True)
    q, p = work / "q", work / "p"
    q.mkdir(parents=True)
    p.mkdir()
    made = make_inputs(rng, q)
    if made is None:
        return True
    for f in q.iterdir():
        shutil.copy(f, p / f.name)
    for op in rng.sample(operations(rng, *made), 6):
        seen = []
        for d, tool in ((q, [QEMU_IMG]), (p, [sys.executable, "-m", "qio.img"])):
            result = run(d, tool + op)
            files = {f.name: masked_digest(f) for f in sorted(d.iterdir())}
            seen.append((result, files))
        if seen[0] != seen[1]:
            print(f"MISMATCH seed {seed} round {index}: {' '.join(op)}")
            print(f"  qemu-img {seen[0][0]}\n  qio-img  {seen[1][0]}")
            for name in seen[0][1]:
                if seen[0][1][name] != seen[1][1].get(name):
                    print(f"  file {name} differs")
            shutil.copytree(work, ROOT / f"fail-{seed}-{index}", dirs_exist_ok=True)
            return False
    return True


def main() -> int:
    seed, rounds = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    failures = sum(not one_round(seed, i, rng) for i in range(rounds))
    print(f"{rounds} rounds, {failures} with a mismatch")
    return 1 if failures else 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
