"""Output files: checked before any work starts, written whole or not at all."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import OutputError, called, problem


def check_targets(paths: list[Path], *, overwrite: bool) -> None:
    """Fail early, before any conversion, if an output exists or its folder cannot be written."""
    for path in paths:
        if path.is_dir():
            raise OutputError(problem(path, "a file path for the output", "a folder"))
        if path.exists() and not overwrite:
            raise OutputError(problem(path, f"a path that does not exist yet (or {called('overwrite')})", "an existing file"))
        _check_folder(path.parent if str(path.parent) else Path("."))


def _check_folder(folder: Path) -> None:
    # Walk up to the first ancestor that exists: missing folders are created on write.
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(problem(folder, "a writable output folder", f"{existing} is not a folder"))
    # Try a real write: os.access() says yes to root even on read-only mounts.
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".tfquant-probe-"):
            pass
    except OSError as exc:
        raise OutputError(problem(folder, "a writable output folder", exc.strerror or exc)) from None


def write_all(files: dict[Path, bytes], *, overwrite: bool) -> None:
    """Write every file to a temporary name, then rename them all; on any error remove the temporaries."""
    check_targets(list(files), overwrite=overwrite)
    staged: list[tuple[str, Path]] = []
    umask = os.umask(0)
    os.umask(umask)
    current = None
    try:
        for path, data in files.items():
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved model is an ordinary file
        for tmp, path in staged:
            current = path
            os.replace(tmp, path)
    except OSError as exc:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        full = exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        expected = f"room to write {len(files.get(current, b'')):,} bytes" if full else "a writable output file"
        raise OutputError(problem(current or exc.filename or "output", expected, exc.strerror or exc)) from None
