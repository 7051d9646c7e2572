"""What a job store keeps and promises, whichever database holds it.

Two stores implement this interface and pass one test suite (`tests/service/test_store.py`):
SQLite in WAL mode under the data folder (`sqlite_store.py`, the default: nothing to start, one
host) and PostgreSQL (`postgres_store.py`: several API replicas share one queue). `stores.py`
picks one by the scheme of `--store`.

Uploads and artifacts are content-addressed files under the data folder in both cases; a job row
is committed only after its uploads are on disk, so an accepted job is never lost. Every run of a
job is an attempt with the worker's host, PID and kernel start time, so that after a crash a
replica can tell a worker still alive from before (and kill it) from an unrelated process that
reused the PID. A worker records its result only for its own attempt: a job that was requeued
meanwhile is not finished twice.

A claim belongs to one replica (its `owner`, `host:port`) and carries a lease that the replica
renews while it runs the job. A replica that dies stops renewing; once the lease has passed, any
replica puts the job back in the queue (the attempt's outcome is `expired`) and another one runs
it. A replica that finds it no longer holds a job (it expired, or was cancelled through another
replica) kills its worker, so a job never runs twice at once for longer than one renewal.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Optional

from ..types import Record

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
CHUNK = 1 << 20


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Job(Record):
    """A job as the API shows it."""

    id: str
    status: str
    command: str
    options: dict[str, Any]
    inputs: dict[str, dict[str, str]]
    artifacts: dict[str, str] = field(default_factory=dict)
    progress: float = 0.0
    stage: str = ""
    error: Optional[str] = None
    created: str = ""
    started: Optional[str] = None
    finished: Optional[str] = None
    attempts: int = 0
    pid: Optional[int] = None
    owner: Optional[str] = None  # the replica (host:port) that runs it, while it runs

    def public(self) -> dict[str, Any]:
        data = self.to_dict()
        data.pop("pid")
        data.pop("owner")
        data["inputs"] = {k: v["name"] for k, v in self.inputs.items()}
        data["artifacts"] = sorted(self.artifacts)
        return data

    def digests(self) -> set[str]:
        return {entry["sha256"] for entry in self.inputs.values()} | set(self.artifacts.values())


@dataclass(frozen=True)
class Attempt:
    """One run of a job by one worker process, on behalf of one replica."""

    job_id: str
    attempt: int
    pid: Optional[int]
    start_ticks: Optional[int]
    owner: Optional[str] = None
    node: Optional[str] = None  # the host the worker runs on


class Store(ABC):
    """Jobs and their attempts in a database; their files under `data_dir`."""

    def __init__(self, data_dir: Path):
        # Absolute: workers lay out links to the blobs from their own temporary folders.
        self.dir = Path(data_dir).resolve()
        self.blobs = self.dir / "blobs"
        self.logs = self.dir / "logs"
        self.tmp = self.dir / "tmp"
        for folder in (self.blobs, self.logs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    @abstractmethod
    def location(self) -> str:
        """What `--store` names, so that a worker opens the same store (never with a password in it)."""

    def close(self) -> None:
        """Release connections (a store is usable until then)."""

    # --- files ---

    def put(self, source: BinaryIO | bytes) -> str:
        """Store a stream or bytes under its SHA-256; returns the digest."""
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                chunks = [source] if isinstance(source, bytes) else iter(lambda: source.read(CHUNK), b"")
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
            return self.adopt(Path(tmp), digest.hexdigest())
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def adopt(self, staged: Path, digest: str) -> str:
        """Move a file already written under the blob folder to its content address."""
        target = self.blob(digest)
        if target.exists():
            staged.unlink()
            os.utime(target)  # freshly referenced: the collector's grace period starts again
        else:
            os.replace(staged, target)
        return digest

    def blob(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise KeyError(digest)  # never a path from outside
        return self.blobs / digest

    # --- jobs ---

    @abstractmethod
    def create(self, command: str, options: dict[str, Any], inputs: dict[str, dict[str, str]]) -> Job:
        """Queue a new job."""

    @abstractmethod
    def get(self, job_id: str) -> Optional[Job]: ...

    @abstractmethod
    def list(self, *, limit: int = 50, offset: int = 0, status: Optional[str] = None) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and how many there are."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs by status, every status present."""

    @abstractmethod
    def claim(self, *, owner: str = "", lease_seconds: float = 30.0) -> Optional[Job]:
        """Atomically move the oldest queued job to running as a new attempt of `owner`, leased for
        `lease_seconds`, and return it; None when nothing is queued. Two callers never get one job."""

    @abstractmethod
    def set_worker(self, job_id: str, attempt: int, pid: int, start_ticks: Optional[int], *,
                   node: Optional[str] = None) -> None:
        """Record the process that runs this attempt."""

    @abstractmethod
    def progress(self, job_id: str, progress: float, stage: str, *, attempt: Optional[int] = None) -> None: ...

    @abstractmethod
    def finish(self, job_id: str, status: str, *, error: Optional[str] = None,
               artifacts: Optional[dict[str, str]] = None, only_if_running: bool = True,
               attempt: Optional[int] = None) -> bool:
        """Record a final state; returns False when the job was no longer running (cancelled, requeued)
        or, with `attempt`, is running as another attempt."""

    @abstractmethod
    def fail_attempt(self, job_id: str, attempt: int, error: str, *, retries: int) -> Optional[str]:
        """The worker of this attempt died without a result: close the attempt as `failed` with `error`,
        and queue the job again if fewer than `retries` attempts failed before, else fail the job.
        Returns the job's new status, or None when the job was not running as this attempt."""

    @abstractmethod
    def open_attempts(self, *, owner: Optional[str] = None) -> list[Attempt]:
        """Attempts with no recorded end (of `owner` only, if given): their worker may still be alive."""

    @abstractmethod
    def requeue(self, job_ids: Optional[Iterable[str]] = None, *, reason: str, owner: Optional[str] = None) -> int:
        """Put running jobs (all of them, these, or those of `owner` and of no owner) back in the queue
        and close their open attempts as `interrupted`; returns how many."""

    @abstractmethod
    def renew(self, owner: str, lease_seconds: float) -> set[str]:
        """Extend the leases of the jobs `owner` runs; returns the ids it still holds."""

    @abstractmethod
    def expire(self) -> list[Attempt]:
        """Queue again every running job whose lease has passed, closing its attempt as `expired`;
        returns those attempts (so that a replica can kill their workers if they are on its host)."""

    @abstractmethod
    def attempts_of(self, job_id: str) -> list[dict[str, Any]]: ...

    # --- garbage ---

    @abstractmethod
    def referenced(self) -> set[str]:
        """Every blob some job still refers to."""

    @abstractmethod
    def delete_finished(self, before: str) -> list[str]:
        """Delete jobs that ended before this ISO time (rows and attempts); returns their ids."""

    def discard(self, digests: Iterable[str], *, keep: Iterable[str] = ()) -> int:
        """Delete these blobs unless a job refers to them or they are in `keep`; returns how many went."""
        spared = self.referenced() | set(keep)
        removed = 0
        for digest in set(digests) - spared:
            try:
                self.blob(digest).unlink()
                removed += 1
            except (FileNotFoundError, KeyError):
                pass
        return removed

    def collect(self, *, retain_seconds: float, grace_seconds: float = 600.0, keep: Iterable[str] = ()) -> dict[str, int]:
        """Delete finished jobs older than `retain_seconds` (rows, attempts, logs), then every blob and
        stale upload no job refers to that is older than `grace_seconds`. Returns what went."""
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=retain_seconds)
        old = self.delete_finished(cutoff.isoformat(timespec="milliseconds"))
        for job_id in old:
            (self.logs / f"{job_id}.log").unlink(missing_ok=True)
        spared = self.referenced() | set(keep)
        horizon = time.time() - grace_seconds
        blobs = 0
        for path in self.blobs.iterdir():
            try:
                if path.name not in spared and path.stat().st_mtime < horizon:
                    path.unlink()
                    blobs += 1
            except FileNotFoundError:
                pass
        return {"jobs": len(old), "blobs": blobs}

