"""``qio-img info``: qemu-img 7.2's img_info (bdrv_query_image_info and its two dumps).

Each image of the chain is opened on its own, without its backing file and read-only, as
qemu-img does; ``--backing-chain`` then follows the full backing file name (and recorded
format) of each image, refusing loops.  The human dump is bdrv_image_info_dump; the JSON
dump is the ImageInfo QAPI object through QEMU's pretty printer, so its keys come out in
QDict order.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from qio.block.node import BlockNode
from qio.getopt import LongOption
from qio.img.common import ImgError, OpenSpec, error, open_image, parse_command_line, usage_error
from qio.numbers import size_to_str

LONGOPTS = (
    LongOption("help", False, "h"),
    LongOption("format", True, "f"),
    LongOption("output", True, "output"),
    LongOption("backing-chain", False, "backing-chain"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("force-share", False, "U"),
)


@dataclass
class SnapshotInfo:
    id: str
    name: str
    vm_state_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    icount: int | None

    def as_qapi(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "vm-state-size": self.vm_state_size,
            "date-sec": self.date_sec,
            "date-nsec": self.date_nsec,
            "vm-clock-sec": self.vm_clock_nsec // 1_000_000_000,
            "vm-clock-nsec": self.vm_clock_nsec % 1_000_000_000,
        }
        if self.icount is not None:
            obj["icount"] = self.icount
        return obj


@dataclass
class ImageInfo:
    """QAPI ImageInfo; None means "absent"."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None = None
    dirty_flag: bool | None = None
    cluster_size: int | None = None
    backing_filename: str | None = None
    full_backing_filename: str | None = None
    backing_filename_format: str | None = None
    snapshots: list[SnapshotInfo] = field(default_factory=list)
    format_specific: tuple[str, list[tuple[str, Any]]] | None = None

    def as_qapi(self) -> dict[str, Any]:
        """The QDict the QAPI output visitor builds (fields in schema order)."""
        obj: dict[str, Any] = {"filename": self.filename, "format": self.format}
        if self.dirty_flag is not None:
            obj["dirty-flag"] = self.dirty_flag
        if self.actual_size is not None:
            obj["actual-size"] = self.actual_size
        obj["virtual-size"] = self.virtual_size
        if self.cluster_size is not None:
            obj["cluster-size"] = self.cluster_size
        if self.backing_filename is not None:
            obj["backing-filename"] = self.backing_filename
        if self.full_backing_filename is not None:
            obj["full-backing-filename"] = self.full_backing_filename
        if self.backing_filename_format is not None:
            obj["backing-filename-format"] = self.backing_filename_format
        if self.snapshots:
            obj["snapshots"] = [s.as_qapi() for s in self.snapshots]
        if self.format_specific is not None:
            kind, data = self.format_specific
            obj["format-specific"] = {"type": kind, "data": data}
        return obj


# -- collecting ------------------------------------------------------------------------------
def full_backing_filename(node: BlockNode, backing: str) -> str | None:
    """bdrv_get_full_backing_filename: relative to the image's directory; None when the
    image has no plain file name to be relative to."""
    from qio.block.open import resolve_backing_path

    if node.filename.startswith("json:") and not os.path.isabs(backing):
        return None
    return resolve_backing_path(node.filename, backing)


def query_image_info(root: BlockNode) -> ImageInfo:
    """bdrv_query_image_info on an open image."""
    from qio.block.coroutine import scheduler

    info = ImageInfo(root.filename, root.format_name, root.getlength())
    # QEMU 7.2 counts the image file only (not an external data file)
    info.actual_size = root.allocated_file_size()
    driver_info = root.get_info()
    if driver_info is not None:
        if driver_info.cluster_size:
            info.cluster_size = driver_info.cluster_size
        info.dirty_flag = driver_info.is_dirty
    specific = root.specific_info()
    if specific is not None:
        info.format_specific = (specific.kind, specific.fields)
    backing = getattr(root, "backing_file", "") or ""
    if backing:
        info.backing_filename = backing
        info.full_backing_filename = full_backing_filename(root, backing)
        backing_format = getattr(root, "backing_format", "") or ""
        if backing_format:
            info.backing_filename_format = backing_format
    if root.format_name == "qcow2":
        from qio.block.qcow2.snapshots import read_snapshots

        for snap in scheduler.run_sync(read_snapshots(root)):
            info.snapshots.append(
                SnapshotInfo(
                    snap.id_str,
                    snap.name,
                    snap.vm_state_size,
                    snap.date_sec,
                    snap.date_nsec,
                    snap.vm_clock_nsec,
                    snap.icount if snap.has_icount else None,
                )
            )
    return info


def collect_image_info_list(
    filename: str, fmt: str | None, image_opts: bool, chain: bool, force_share: bool
) -> list[ImageInfo]:
    seen: set[str] = set()
    infos: list[ImageInfo] = []
    name: str | None = filename
    while name is not None:
        if name in seen:
            raise ImgError(f"Backing file '{name}' creates an infinite loop.")
        seen.add(name)
        spec = OpenSpec(
            name, fmt, image_opts, no_backing=True, force_share=force_share, no_io=True
        )
        image = open_image(spec)
        try:
            info = query_image_info(image.root)
        finally:
            image.close()
        infos.append(info)
        name, fmt, image_opts = None, None, False  # only the top image takes these
        if chain:
            if info.full_backing_filename is not None:
                name = info.full_backing_filename
            elif info.backing_filename is not None:
                raise ImgError(
                    "Could not determine absolute backing filename, but backing filename "
                    f"'{info.backing_filename}' present"
                )
            fmt = info.backing_filename_format
    return infos


# -- output ----------------------------------------------------------------------------------
def snapshot_dump_header() -> str:
    """bdrv_snapshot_dump(NULL): the column titles of a snapshot list."""
    return "%-10s%-17s%8s%20s%13s%11s" % ("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")


def snapshot_dump(snap: SnapshotInfo) -> str:
    """bdrv_snapshot_dump(sn): one row (local time, as QEMU's GDateTime)."""
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.date_sec))
    secs = snap.vm_clock_nsec // 1_000_000_000
    clock = "%02d:%02d:%02d.%03d" % (
        secs // 3600,
        (secs // 60) % 60,
        secs % 60,
        (snap.vm_clock_nsec // 1_000_000) % 1000,
    )
    icount = str(snap.icount) if snap.icount is not None else ""
    return "%-9s %-16s %8s%20s%13s%11s" % (
        snap.id,
        snap.name,
        size_to_str(snap.vm_state_size),
        date,
        clock,
        icount,
    )


def human_info(info: ImageInfo) -> str:
    """bdrv_image_info_dump."""
    from qio.render.plain import dump_specific

    disk = size_to_str(info.actual_size) if info.actual_size is not None else "unavailable"
    lines = [
        f"image: {info.filename}\n",
        f"file format: {info.format}\n",
        f"virtual size: {size_to_str(info.virtual_size)} ({info.virtual_size} bytes)\n",
        f"disk size: {disk}\n",
    ]
    if info.cluster_size is not None:
        lines.append(f"cluster_size: {info.cluster_size}\n")
    if info.dirty_flag:
        lines.append("cleanly shut down: no\n")
    if info.backing_filename is not None:
        text = f"backing file: {info.backing_filename}"
        if info.full_backing_filename is None:
            text += " (cannot determine actual path)"
        elif info.full_backing_filename != info.backing_filename:
            text += f" (actual path: {info.full_backing_filename})"
        lines.append(text + "\n")
    if info.backing_filename_format is not None:
        lines.append(f"backing file format: {info.backing_filename_format}\n")
    if info.snapshots:
        lines.append("Snapshot list:\n")
        lines.append(snapshot_dump_header() + "\n")
        lines.extend(snapshot_dump(s) + "\n" for s in info.snapshots)
    if info.format_specific is not None:
        lines.append("Format specific information:\n")
        lines.append(dump_specific(info.format_specific[1], 4))
    return "".join(lines)


def parse_output_format(value: str | None) -> str:
    if value is None or value == "human":
        return "human"
    if value == "json":
        return "json"
    raise ImgError("--output must be used with human or json as argument.")


def run(argv: list[str]) -> int:
    from qio.block.qjson import to_json_pretty

    options, operands = parse_command_line(argv, ":f:hU", LONGOPTS)
    fmt: str | None = None
    output: str | None = None
    chain = image_opts = force_share = False
    for key, value in options:
        if key == "h":
            from qio.img.main import help_text

            sys.stdout.write(help_text())
            return 0
        if key == "f":
            fmt = value
        elif key == "U":
            force_share = True
        elif key == "output":
            output = value
        elif key == "backing-chain":
            chain = True
        elif key == "image-opts":
            image_opts = True
    if len(operands) != 1:
        raise usage_error("Expecting one image file name")
    try:
        output_format = parse_output_format(output)
    except ImgError as exc:
        error(exc.message)
        return 1
    infos = collect_image_info_list(operands[0], fmt, image_opts, chain, force_share)
    if output_format == "human":
        sys.stdout.write("\n".join(human_info(info) for info in infos))
    elif chain:
        sys.stdout.write(to_json_pretty([i.as_qapi() for i in infos]) + "\n")
    else:
        sys.stdout.write(to_json_pretty(infos[0].as_qapi()) + "\n")
    return 0
