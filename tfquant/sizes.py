"""A file's sizes: its gzip size, the bytes an app download or an over-the-air update costs, and
where its bytes go when quantizing made it no smaller."""

from __future__ import annotations

import gzip
from typing import Optional

GZIP_LEVEL = 9


def gzip_size(data: bytes) -> int:
    """Bytes after gzip -9: what an app store download or an OTA update actually costs."""
    started = _GZIPPING.pop(id(data), None)
    if started is not None and started[0] is data:
        return started[1].result()
    return _gzip_size(data)


def gzip_size_soon(data: bytes) -> None:
    """Start `gzip_size(data)` on a background thread (zlib lets go of the GIL while it compresses):
    gzip -9 of a 100 MB float file takes seconds, which the conversion's other steps can hide."""
    from concurrent.futures import ThreadPoolExecutor

    global _GZIP_THREAD
    if id(data) in _GZIPPING:
        return
    if _GZIP_THREAD is None:
        _GZIP_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfquant-gzip")
    _GZIPPING[id(data)] = (data, _GZIP_THREAD.submit(_gzip_size, data))  # the bytes held: their id stays theirs
    while len(_GZIPPING) > _GZIP_KEPT:  # sizes never asked for (a failed conversion) are not kept forever
        _GZIPPING.pop(next(iter(_GZIPPING)))


def larger_than_float(quantized: bytes, float_file: bytes, mode: str, gzipped: tuple[int, int]) -> Optional[str]:
    """A note for a quantized file at least as large as its float file, else None.

    Quantizing shrinks weights four times, but every quantized tensor carries a scale and a zero
    point (per channel for weights), and the graph itself (ops, tensors, their names) costs the
    same in both files. Where the weights are a small part of the file, as in a small model or a
    recurrent layer unrolled into a few ops per step, the file can come out larger; the note
    says so with the numbers, so that nobody takes it for a failed conversion. `gzipped`: the two
    files' gzip sizes, as the report has them already.
    """
    if len(quantized) < len(float_file):
        return None
    mine, theirs = _contents(quantized), _contents(float_file)
    return (f"the {mode} file ({len(quantized):,} bytes) is not smaller than the float file ({len(float_file):,}): "
            f"its weights and constants take {mine[0]:,} bytes (float: {theirs[0]:,}), the rest is the graph of "
            f"{mine[1]:,} ops and {mine[2]:,} tensors, whose quantized tensors each carry a scale and a zero point "
            f"(per channel for weights); gzip -9: {gzipped[0]:,} against {gzipped[1]:,} bytes")


def _contents(data: bytes) -> tuple[int, int, int]:
    """(bytes of constant data, ops, tensors) of a .tflite file, its model metadata's buffers not counted."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    metadata = {model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    buffers = [model.Buffers(i) for i in range(model.BuffersLength()) if i not in metadata]
    # A file over 2 GB keeps its buffers after the flatbuffer, at an offset, with their size beside it.
    constants = sum(b.DataLength() + (b.Size() if b.Offset() > 1 else 0) for b in buffers)
    graphs = [model.Subgraphs(g) for g in range(model.SubgraphsLength())]
    return constants, sum(g.OperatorsLength() for g in graphs), sum(g.TensorsLength() for g in graphs)


def _gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0))


_GZIP_KEPT = 4
_GZIPPING: dict[int, tuple] = {}
_GZIP_THREAD = None
