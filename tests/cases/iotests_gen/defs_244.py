"""qemu-iotests 244 and 274 as conformance cases."""

from __future__ import annotations

from builder import Test


def t244() -> list[Test]:
    out = []
    t = Test(
        "iotest_244_data_file_open",
        "iotest 244: opening images with an external data file: named in the image, given as an option, missing, or not allowed",
    )
    t.pristine()
    t.image("t.qcow2", "qcow2", "64M", "data_file=t.data")
    t.image("n.qcow2", "qcow2", "64M", "data_file=n.data")
    t.img("amend -odata_file= n.qcow2")
    t.image("i.qcow2", "qcow2", "64M")
    for img in ("t.qcow2", "n.qcow2"):
        t.run("", f"open {img}", "read -P 0 0 64k")
        t.run("", f"open -odata-file.filename={img[0]}.data {img}", "read -P 0 0 64k", "info")
        t.run("", f"open -odata-file.filename=inexistent {img}", "read -P 0 0 64k")
    t.run("", "open -odata-file.filename=t.data i.qcow2", "read -P 0 0 64k")
    t.run("", "open -odata-file.filename=inexistent i.qcow2", "read -P 0 0 64k")
    t.wipe("n.qcow2")  # it cannot be opened without the data-file option
    out.append(t)

    t = Test(
        "iotest_244_data_file_conflicts",
        "iotest 244: compressed writes and data files; internal snapshot part skipped (qemu-img)",
    )
    t.image("t.src", "qcow2", "64M")
    t.run("-f qcow2 t.src", "write -P 0x11 0 1M")
    t.img("convert -f qcow2 -O qcow2 -odata_file=t.data t.src t.qcow2")
    t.run("-f qcow2 t.qcow2", "write -c -P 0x22 0 1M", "read -P 0x11 0 1M", "map")
    out.append(t)

    for raw in ("off", "on"):
        t = Test(
            f"iotest_244_data_file_raw_{raw}",
            f"iotest 244: standalone image with an external data file (data_file_raw={raw}): written, discarded, zeroed; both files read back",
        )
        t.image("t.qcow2", "qcow2", "64M", "data_file=t.data", f"data_file_raw={raw}")
        t.run("-f qcow2 t.qcow2", "write -P 0x11 1M 4M", "discard 2M 2M", "write -z 3M 3M")
        t.run("-f qcow2 t.qcow2", "read -P 0 0 1M", "read -P 0x11 1M 1M", "read -P 0 2M 4M", "map")
        if raw == "off":
            t.run(
                "-f raw t.data",
                "read -P 0 0 1M",
                "read -P 0x11 1M 1M",
                "read -P 0x11 4M 1M",
                "read -P 0 5M 1M",
            )
        else:
            t.run("-f raw t.data", "read -P 0 0 1M", "read -P 0x11 1M 1M", "read -P 0 3M 3M")
        out.append(t)

    t = Test(
        "iotest_244_block_status", "iotest 244: block status with an external data file at offset 0"
    )
    t.image("t.qcow2", "qcow2", "64M", "data_file=t.data")
    t.run("-f qcow2 t.qcow2", "write -P 0x11 0 1M")
    t.run("-f qcow2 t.qcow2", "read -P 0x11 0 1M", "map", "alloc 0 2M")
    t.run("-t writeback -f qcow2 t.qcow2", "write 0 512", "flush")
    out.append(t)
    return out


def t274() -> list[Test]:
    out = []
    short, long_ = 1 << 20, 2 << 20
    t = Test(
        "iotest_274_short_backing",
        "iotest 274: a short middle image in a backing chain: visible data, alloc, map; qemu-img commit top -> mid (HMP/QMP commits skipped)",
    )
    t.image("base", "qcow2", str(long_))
    t.img(f"create -q -f qcow2 -b base -F qcow2 mid {short}")
    t.img(f"create -q -f qcow2 -b mid -F qcow2 top {long_}")
    t.run("-f qcow2 base", f"write -P 1 0 {long_}")
    t.run("-f qcow2 top", f"read -P 1 0 {short}")
    t.run("-f qcow2 top", f"read -P 0 {short} {long_ - short}")
    for img in ("base", "mid", "top"):
        t.run(f"-f qcow2 {img}", f"alloc 0 {short}", f"alloc {short} {long_ - short}", "map")
    t.img("commit -q top")
    t.run("-f qcow2 mid", f"read -P 1 0 {short}", "length")
    t.run("-f qcow2 mid", f"read -P 0 {short} {long_ - short}", "map")
    out.append(t)

    cases = [("off", "6G", "1G", "8G", "5G"), ("metadata", "32G", "30G", "33G", "31G"),
             ("falloc", "10M", "5M", "15M", "9M"), ("full", "16M", "8M", "12M", "11M"),
             ("off", "384k", "253k", "512k", "253k"), ("off", "400k", "256k", "512k", "336k"),
             ("off", "512k", "256k", "500k", "436k")]  # fmt: skip
    for tool in ("img", "io"):
        t = Test(
            f"iotest_274_resize_{tool}",
            "iotest 274: growing an overlay over a longer backing file zeroes the area the backing file would show through "
            + (
                "(qemu-img resize --preallocation)"
                if tool == "img"
                else "(the same through qemu-io truncate -m)"
            ),
        )
        for i, (prealloc, base_size, old, new, off) in enumerate(cases):
            t.image(f"b{i}", "qcow2", base_size)
            t.img(f"create -q -f qcow2 -b b{i} -F qcow2 t{i} {old}")
            t.qio(f"-f qcow2 -c 'write -q -P 1 {off} 64k' b{i}")
            if tool == "img":
                t.img(f"resize -q -f qcow2 --preallocation {prealloc} t{i} {new}")
        for i, (prealloc, _, _, new, off) in enumerate(cases):
            cmds = [f"truncate -m {prealloc} {new}"] if tool == "io" else []
            t.run(f"-f qcow2 t{i}", *cmds, f"read -P 0 {off} 64k", "map", "length")
        out.append(t)
    return out


def all_tests() -> list[Test]:
    return t244() + t274()
