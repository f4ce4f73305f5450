"""Compressed clusters: raw deflate (zlib, 4 KiB window as QEMU uses) and zstd."""

from __future__ import annotations

import zlib

from qio.block.qcow2.layout import COMPRESSION_ZLIB, COMPRESSION_ZSTD


class CompressionError(Exception):
    pass


def compress(data: bytes, kind: int, limit: int) -> bytes | None:
    """Compressed ``data``, or None when the result would not be shorter than ``limit``."""
    if kind == COMPRESSION_ZLIB:
        # QEMU: deflateInit2(Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY)
        engine = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9, zlib.Z_DEFAULT_STRATEGY
        )
        out = engine.compress(data) + engine.flush(zlib.Z_FINISH)
    elif kind == COMPRESSION_ZSTD:
        import zstandard

        out = zstandard.ZstdCompressor().compress(data)
    else:
        raise CompressionError(f"unknown compression type {kind}")
    if len(out) > limit:
        return None
    return out


def decompress(data: bytes, kind: int, size: int) -> bytes:
    """Exactly ``size`` bytes from the compressed stream (trailing bytes are ignored)."""
    try:
        if kind == COMPRESSION_ZLIB:
            engine = zlib.decompressobj(-12)
            out = engine.decompress(data, size)
        elif kind == COMPRESSION_ZSTD:
            import zstandard

            reader = zstandard.ZstdDecompressor().decompressobj()
            out = reader.decompress(data)[:size]
        else:
            raise CompressionError(f"unknown compression type {kind}")
    except (zlib.error, ValueError) as exc:
        raise CompressionError(str(exc)) from None
    except Exception as exc:  # zstandard.ZstdError
        raise CompressionError(str(exc)) from None
    if len(out) < size:
        raise CompressionError("short compressed cluster")
    return out
