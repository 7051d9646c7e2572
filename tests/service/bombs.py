"""Decompression bombs for the service tests, made in a second: deflate a zero chunk once and
repeat the compressed block (each ends on a full flush, so blocks are independent)."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np

CHUNK = 1 << 24


class _RepeatedZeros:
    """A raw-deflate compressor that compresses one zero chunk once and reuses its blocks."""

    def __init__(self):
        self._zero = _full_flush(bytes(CHUNK))

    def compress(self, data: bytes) -> bytes:
        if len(data) == CHUNK and not any(data[:64]) and data == bytes(CHUNK):
            return self._zero
        return _full_flush(data)

    def flush(self) -> bytes:
        return zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def _full_flush(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def _write_member(archive: zipfile.ZipFile, name: str, head: bytes, zeros: int) -> None:
    with archive.open(name, "w", force_zip64=True) as handle:
        handle._compressor = _RepeatedZeros()  # the standard writer still computes sizes and CRC
        handle.write(head)
        zero = bytes(CHUNK)
        for _ in range(zeros // CHUNK):
            handle.write(zero)


def npz_bomb(path: Path, expanded: int, name: str = "x", inner=(8, 8, 1)) -> Path:
    """An .npz whose one float32 array unpacks to about `expanded` bytes."""
    count = expanded // (4 * int(np.prod(inner)))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (count, *inner)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        _write_member(archive, f"{name}.npy", header.getvalue(), count * 4 * int(np.prod(inner)))
    return path


def zip_bomb(path: Path, expanded: int, members: int = 3) -> Path:
    """A SavedModel-looking .zip (saved_model.pb plus variables) that unpacks to about `expanded` bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model/saved_model.pb", b"\x08\x01")
        for index in range(members):
            _write_member(archive, f"model/variables/variables.data-0000{index}-of-0000{members}", b"",
                          expanded // members)
    return path
