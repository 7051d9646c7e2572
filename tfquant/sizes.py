"""A file's gzip size, the bytes an app download or an over-the-air update costs."""

from __future__ import annotations

import gzip

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


def _gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0))


_GZIP_KEPT = 4
_GZIPPING: dict[int, tuple] = {}
_GZIP_THREAD = None
