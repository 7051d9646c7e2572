"""Which job store `--store` names: a registry keyed by the scheme of its location.

No location, or a path, is the default SQLite file (under the data folder unless a path is
given); `postgresql://` (or `postgres://`) is a PostgreSQL server that replicas share. The
workers open the store from the same location, which the server hands them in their environment
(`TFQUANT_STORE`), never on a command line that `ps` shows with its password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from ..errors import BackendError, problem
from .postgres_store import PostgresStore
from .sqlite_store import SQLiteStore
from .store import Store

STORES: dict[str, Callable[[Path, str], Store]] = {
    "": lambda data_dir, location: SQLiteStore(data_dir, Path(location) if location else None),
    "postgresql": PostgresStore,
    "postgres": PostgresStore,
}


def open_store(data_dir: Path, location: Optional[str] = None) -> Store:
    """The store at `location` (see the module's docstring), with its files under `data_dir`."""
    location = location or ""
    scheme = urlsplit(location).scheme if "://" in location else ""
    if scheme not in STORES:
        raise BackendError(problem(f"--store {location.split('://')[0]}://…",
                                   "a path or postgresql://…", f"the scheme {scheme!r}"))
    return STORES[scheme](Path(data_dir), location)
