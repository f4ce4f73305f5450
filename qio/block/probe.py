"""Image format probing: which format driver claims the first bytes of an image.

Like QEMU's ``bdrv_probe_all`` every format scores the first 512 bytes and the highest score
wins; raw scores 1 and so wins only when nothing else claims the image.
"""

from __future__ import annotations

import struct

PROBE_BYTES = 512


def _score(buf: bytes, filename: str) -> list[tuple[int, str]]:
    scores: list[tuple[int, str]] = [(1, "raw")]
    if len(buf) >= 8 and buf[:4] == b"QFI\xfb":
        version = struct.unpack_from(">I", buf, 4)[0]
        if version >= 2:
            scores.append((100, "qcow2"))
        elif version == 1:
            scores.append((100, "qcow"))
    if buf[:4] == b"QED\x00":
        scores.append((100, "qed"))
    if buf[:4] in (b"KDMV", b"COWD") or buf.startswith(b"# Disk DescriptorFile"):
        scores.append((100, "vmdk"))
    if buf[:8] == b"conectix":
        scores.append((100, "vpc"))
    if buf[:8] == b"vhdxfile":
        scores.append((100, "vhdx"))
    if buf[:6] == b"LUKS\xba\xbe":
        scores.append((100, "luks"))
    if len(buf) >= 0x44 and struct.unpack_from("<I", buf, 0x40)[0] == 0xBEDA107F:
        scores.append((100, "vdi"))
    if buf[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        scores.append((100, "parallels"))
    if buf.startswith(b"Bochs Virtual HD Image"):
        scores.append((100, "bochs"))
    if filename.endswith(".dmg"):
        scores.append((2, "dmg"))
    return scores


def probe(buf: bytes, filename: str = "") -> str:
    """The name of the format that claims ``buf`` (always at least "raw")."""
    best_score, best = 0, "raw"
    for score, name in _score(buf, filename):
        if score > best_score:
            best_score, best = score, name
    return best
