"""Durable job store: SQLite in WAL mode for jobs, content-addressed files for uploads and artifacts.

Everything lives under one data folder; nothing needs to be started. A job row is committed
only after its uploads are on disk, so an accepted job is never lost, and jobs that were
running when the server stopped are queued again when it starts.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Optional

from ..types import Record

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
CHUNK = 1 << 20

_SCHEMA = """
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
"""


class TooLarge(Exception):
    """An upload passed the size limit."""


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


class Store:
    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir)
        self.blobs = self.dir / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.path = self.dir / "jobs.sqlite"
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        return db

    # --- files ---

    def put(self, source: BinaryIO | bytes, *, limit: Optional[int] = None) -> str:
        """Store a stream or bytes under its SHA-256; returns the digest. Raises TooLarge past `limit` bytes."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, bytes):
                    chunks = [source]
                else:
                    chunks = iter(lambda: source.read(CHUNK), b"")
                for chunk in chunks:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise TooLarge(size)
                    digest.update(chunk)
                    out.write(chunk)
            name = digest.hexdigest()
            os.replace(tmp, self.blobs / name)
            return name
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

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

    def durations(self) -> list[float]:
        """Seconds from start to finish of every finished job."""
        with self._db() as db:
            rows = db.execute("SELECT started, finished FROM jobs WHERE finished IS NOT NULL AND started IS NOT NULL").fetchall()
        parse = datetime.datetime.fromisoformat
        return [(parse(f) - parse(s)).total_seconds() for s, f in rows]

    def claim(self) -> Optional[Job]:
        """Atomically move the oldest queued job to running and return it."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created, id LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1, stage = 'starting', "
                       "progress = 0 WHERE id = ?", (now(), row["id"]))
            db.execute("COMMIT")
        return self.get(row["id"])

    def set_pid(self, job_id: str, pid: int) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def progress(self, job_id: str, progress: float, stage: str) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND status = 'running'", (progress, stage, job_id))

    def finish(self, job_id: str, status: str, *, error: Optional[str] = None,
               artifacts: Optional[dict[str, str]] = None, only_if_running: bool = True) -> bool:
        """Record a final state; returns False when the job was no longer running (cancelled, requeued)."""
        condition = " AND status = 'running'" if only_if_running else " AND status NOT IN ('succeeded', 'failed', 'cancelled')"
        with self._db() as db:
            cursor = db.execute(
                f"UPDATE jobs SET status = ?, error = ?, artifacts = ?, finished = ?, stage = ?, "
                f"progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END WHERE id = ?{condition}",
                (status, error, json.dumps(artifacts or {}), now(), status, status, job_id),
            )
        return cursor.rowcount == 1

    def requeue_running(self) -> int:
        """On start: jobs that were running when the server stopped are queued again."""
        with self._db() as db:
            cursor = db.execute("UPDATE jobs SET status = 'queued', pid = NULL, stage = 'queued again after a restart', "
                                "progress = 0 WHERE status = 'running'")
        return cursor.rowcount


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], status=row["status"], command=row["command"], options=json.loads(row["options"]),
        inputs=json.loads(row["inputs"]), artifacts=json.loads(row["artifacts"]), progress=row["progress"],
        stage=row["stage"], error=row["error"], created=row["created"], started=row["started"],
        finished=row["finished"], attempts=row["attempts"], pid=row["pid"],
    )
