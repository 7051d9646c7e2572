"""Durable job store: SQLite in WAL mode for jobs, content-addressed files for uploads and artifacts.

Everything lives under one data folder; nothing needs to be started. A job row is committed
only after its uploads are on disk, so an accepted job is never lost. Every run of a job is an
attempt with the worker's PID and kernel start time, so that after a crash the server can tell
a worker still alive from before (and kill it) from an unrelated process that reused the PID.
A worker records its result only for its own attempt: a job that was requeued meanwhile is not
finished twice.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Optional

from ..types import Record

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
CHUNK = 1 << 20

# Schema migrations, applied in order; PRAGMA user_version records how many ran.
MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        command TEXT NOT NULL,
        options TEXT NOT NULL,
        inputs TEXT NOT NULL,
        artifacts TEXT NOT NULL DEFAULT '{}',
        progress REAL NOT NULL DEFAULT 0,
        stage TEXT NOT NULL DEFAULT '',
        error TEXT,
        created TEXT NOT NULL,
        started TEXT,
        finished TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        pid INTEGER
    );
    CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
    """,
    """
    CREATE TABLE IF NOT EXISTS attempts (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        pid INTEGER,
        start_ticks INTEGER,
        started TEXT NOT NULL,
        finished TEXT,
        outcome TEXT,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE INDEX IF NOT EXISTS attempts_open ON attempts (finished);
    """,
)


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

    def public(self) -> dict[str, Any]:
        data = self.to_dict()
        data.pop("pid")
        data["inputs"] = {k: v["name"] for k, v in self.inputs.items()}
        data["artifacts"] = sorted(self.artifacts)
        return data

    def digests(self) -> set[str]:
        return {entry["sha256"] for entry in self.inputs.values()} | set(self.artifacts.values())


@dataclass(frozen=True)
class Attempt:
    """One run of a job by one worker process."""

    job_id: str
    attempt: int
    pid: Optional[int]
    start_ticks: Optional[int]


class Store:
    def __init__(self, data_dir: Path):
        # Absolute: workers lay out links to the blobs from their own temporary folders.
        self.dir = Path(data_dir).resolve()
        self.blobs = self.dir / "blobs"
        self.logs = self.dir / "logs"
        self.tmp = self.dir / "tmp"
        for folder in (self.blobs, self.logs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "jobs.sqlite"
        self._local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                db.executescript(script)
                db.execute(f"PRAGMA user_version = {number}")

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (opened once: a connect per query costs more than the query)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return _Borrowed(db)

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

    def create(self, command: str, options: dict[str, Any], inputs: dict[str, dict[str, str]]) -> Job:
        job = Job(id=uuid.uuid4().hex, status="queued", command=command, options=options, inputs=inputs, created=now())
        with self._db() as db:
            db.execute(
                "INSERT INTO jobs (id, status, command, options, inputs, created) VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.status, command, json.dumps(options), json.dumps(inputs), job.created),
            )
        return job

    def get(self, job_id: str) -> Optional[Job]:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list(self, *, limit: int = 50, offset: int = 0, status: Optional[str] = None) -> tuple[list[Job], int]:
        where, args = ("WHERE status = ?", [status]) if status else ("", [])
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM jobs {where} ORDER BY created DESC, id LIMIT ? OFFSET ?",
                              (*args, limit, offset)).fetchall()
            total = db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
        return [_job(r) for r in rows], total

    def counts(self) -> dict[str, int]:
        with self._db() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        found = {r[0]: r[1] for r in rows}
        return {s: found.get(s, 0) for s in STATUSES}

    def claim(self) -> Optional[Job]:
        """Atomically move the oldest queued job to running as a new attempt and return it."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created, id LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            started = now()
            db.execute("UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1, stage = 'starting', "
                       "progress = 0, pid = NULL WHERE id = ?", (started, row["id"]))
            attempt = db.execute("SELECT attempts FROM jobs WHERE id = ?", (row["id"],)).fetchone()[0]
            db.execute("INSERT INTO attempts (job_id, attempt, started) VALUES (?, ?, ?)", (row["id"], attempt, started))
            db.execute("COMMIT")
        return self.get(row["id"])

    def set_worker(self, job_id: str, attempt: int, pid: int, start_ticks: Optional[int]) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET pid = ? WHERE id = ? AND attempts = ?", (pid, job_id, attempt))
            db.execute("UPDATE attempts SET pid = ?, start_ticks = ? WHERE job_id = ? AND attempt = ?",
                       (pid, start_ticks, job_id, attempt))

    def progress(self, job_id: str, progress: float, stage: str, *, attempt: Optional[int] = None) -> None:
        condition, args = ("", ()) if attempt is None else (" AND attempts = ?", (attempt,))
        with self._db() as db:
            db.execute(f"UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND status = 'running'{condition}",
                       (progress, stage, job_id, *args))

    def finish(self, job_id: str, status: str, *, error: Optional[str] = None,
               artifacts: Optional[dict[str, str]] = None, only_if_running: bool = True,
               attempt: Optional[int] = None) -> bool:
        """Record a final state; returns False when the job was no longer running (cancelled, requeued)
        or, with `attempt`, is running as another attempt."""
        condition = " AND status = 'running'" if only_if_running else " AND status NOT IN ('succeeded', 'failed', 'cancelled')"
        args: tuple = ()
        if attempt is not None:
            condition, args = condition + " AND attempts = ?", (attempt,)
        finished = now()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(
                f"UPDATE jobs SET status = ?, error = ?, artifacts = ?, finished = ?, stage = ?, "
                f"progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END WHERE id = ?{condition}",
                (status, error, json.dumps(artifacts or {}), finished, status, status, job_id, *args),
            )
            if cursor.rowcount == 1:
                db.execute("UPDATE attempts SET finished = ?, outcome = ? WHERE job_id = ? AND finished IS NULL",
                           (finished, status, job_id))
            db.execute("COMMIT")
        return cursor.rowcount == 1

    def open_attempts(self) -> list[Attempt]:
        """Attempts with no recorded end: their worker may still be alive."""
        with self._db() as db:
            rows = db.execute("SELECT job_id, attempt, pid, start_ticks FROM attempts WHERE finished IS NULL").fetchall()
        return [Attempt(r["job_id"], r["attempt"], r["pid"], r["start_ticks"]) for r in rows]

    def requeue(self, job_ids: Optional[Iterable[str]] = None, *, reason: str) -> int:
        """Put running jobs (all of them, or these) back in the queue and close their open attempts."""
        finished = now()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'running'").fetchall()]
            if job_ids is not None:
                wanted = set(job_ids)
                ids = [i for i in ids if i in wanted]
            for job_id in ids:
                db.execute("UPDATE jobs SET status = 'queued', pid = NULL, stage = ?, progress = 0 WHERE id = ?",
                           (reason, job_id))
                db.execute("UPDATE attempts SET finished = ?, outcome = 'interrupted' WHERE job_id = ? AND finished IS NULL",
                           (finished, job_id))
            db.execute("COMMIT")
        return len(ids)

    def attempts_of(self, job_id: str) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    # --- garbage ---

    def referenced(self) -> set[str]:
        """Every blob some job still refers to."""
        with self._db() as db:
            rows = db.execute("SELECT inputs, artifacts FROM jobs").fetchall()
        found: set[str] = set()
        for inputs, artifacts in rows:
            found |= {entry["sha256"] for entry in json.loads(inputs).values()}
            found |= set(json.loads(artifacts).values())
        return found

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
        cutoff = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=retain_seconds)).isoformat()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            old = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished < ?",
                (cutoff,)).fetchall()]
            for job_id in old:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                db.execute("DELETE FROM attempts WHERE job_id = ?", (job_id,))
            db.execute("COMMIT")
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


class _Borrowed:
    """`with store._db() as db:` on a kept connection: rolls back a transaction left open by an error."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, kind, value, tb) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], status=row["status"], command=row["command"], options=json.loads(row["options"]),
        inputs=json.loads(row["inputs"]), artifacts=json.loads(row["artifacts"]), progress=row["progress"],
        stage=row["stage"], error=row["error"], created=row["created"], started=row["started"],
        finished=row["finished"], attempts=row["attempts"], pid=row["pid"],
    )
