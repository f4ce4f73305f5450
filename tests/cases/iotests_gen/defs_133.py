"""qemu-iotests 133 and 137 (reopen) as conformance cases."""

from __future__ import annotations

from builder import Test


def t133() -> list[Test]:
    t = Test("iotest_133_reopen", "iotest 133: reopen -o: node names and drivers cannot change, non-string options, -r/-w/-c against their options, invalid values")
    t.image("t.base", "qcow2", "64M")
    t.img("create -q -f qcow2 -b t.base -F qcow2 t.qcow2")
    for o in ("node-name=foo", "file.node-name=foo", "backing.node-name=foo"):
        t.run("t.qcow2", f"reopen -o {o}")
    for o in ("node-name=foo", "file.node-name=foo", "backing.node-name=foo"):
        t.run("", f"open -o {o} t.qcow2", f"reopen -o {o}")
        t.run("", f"open -o {o} t.qcow2", "reopen")
    for o in ("driver=raw", "file.driver=qcow2", "backing.driver=file", "driver=qcow2", "file.driver=file", "backing.driver=qcow2"):
        t.run("t.qcow2", f"reopen -o {o}")
    t.run("-f null-co \"json:{'driver': 'null-co', 'size': 65536}\"", "reopen", "info")
    for c in ("-r -o read-only=on", "-w -o read-only=on", "-c none -o cache.direct=on",
              "-c writeback -o cache.direct=on", "-c directsync -o cache.no-flush=on",
              "-o read-only=foo", "-o cache.no-flush=bar", "-o cache.direct=baz", "-o auto-read-only=qux"):  # fmt: skip
        t.run("t.qcow2", f"reopen {c}")
    return [t]


def t137() -> list[Test]:
    out = []
    t = Test("iotest_137_reopen_qcow2_options", "iotest 137: reopen with every qcow2 runtime option, then I/O; invalid values; transaction semantics")
    t.image("t.qcow2", "qcow2", "64M")
    valid = ["lazy-refcounts=on,pass-discard-request=on", "lazy-refcounts=off,pass-discard-request=off",
             "pass-discard-snapshot=on,pass-discard-other=on", "pass-discard-snapshot=off,pass-discard-other=off"]
    valid += [f"overlap-check={m}" for m in ("all", "none", "cached", "constant")]
    valid += [f"overlap-check.template={m}" for m in ("all", "none", "cached", "constant")]
    for k in ("main-header", "active-l1", "active-l2", "refcount-table", "refcount-block", "snapshot-table",
              "inactive-l1", "inactive-l2"):
        valid += [f"overlap-check.{k}=on", f"overlap-check.{k}=off"]
    valid += ["cache-size=1M", "l2-cache-size=512k", "refcount-cache-size=128k", "cache-clean-interval=5",
              "cache-clean-interval=0", "cache-clean-interval=10"]  # fmt: skip
    t.run("t.qcow2", *[f"reopen -o {o}" for o in valid],
          "write -P 55 0 32M", "read -P 55 0 32M", "discard 0 32M", "write -z 0 32M", "read -P 0 0 32M")  # fmt: skip
    invalid = ["lazy-refcounts=42", "cache-size=1M,l2-cache-size=64k,refcount-cache-size=64k",
               "cache-size=1M,l2-cache-size=2M", "cache-size=1M,refcount-cache-size=2M", "l2-cache-size=256T",
               "refcount-cache-size=256T", "overlap-check=constant,overlap-check.template=all",
               "overlap-check=blubb", "overlap-check.template=blubb", "cache-clean-interval=-1"]  # fmt: skip
    t.run("t.qcow2", *[f"reopen -o {o}" for o in invalid], replay=False)
    t.run("t.qcow2", "reopen -o lazy-refcounts=on,overlap-check=blubb", "write -P 0x5a 0 512", "sigraise 9", replay=False)
    t.run("-r t.qcow2", "info")
    out.append(t)

    t = Test("iotest_137_reopen_keeps_checks", "iotest 137: a failed reopen (overlap-check=none,lazy-refcounts=42) keeps corruption detection on")
    t.pristine()
    t.image("t.qcow2", "qcow2", "64M")
    t.qio("-f qcow2 -c 'write -q 0 64k' t.qcow2")
    t.poke_file("t.qcow2", 0x20000, b"\x00\x00")
    t.run("t.qcow2", "reopen -o overlap-check=none,lazy-refcounts=42", "write 64k 64k")
    t.wipe("t.qcow2")
    out.append(t)
    return out


def all_tests() -> list[Test]:
    return t133() + t137()
