"""The default job store: SQLite in WAL mode, one file under the data folder, nothing to start.

One host at a time writes it (several processes of that host may: the server, its workers, a
second replica on another port). Write transactions are `BEGIN IMMEDIATE`, so a claim is atomic
across processes. Leases are kept in this host's clock (`time.time()`).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional

from .store import STATUSES, Attempt, Job, Store, now

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
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    ALTER TABLE attempts ADD COLUMN owner TEXT;
    ALTER TABLE attempts ADD COLUMN node TEXT;
    ALTER TABLE attempts ADD COLUMN error TEXT;
    """,
)


class SQLiteStore(Store):
    def __init__(self, data_dir: Path, path: Optional[Path] = None):
        super().__init__(data_dir)
        self.path = Path(path).resolve() if path else self.dir / "jobs.sqlite"
        self._local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                db.executescript(script)
                db.execute(f"PRAGMA user_version = {number}")

    @property
    def location(self) -> str:
        return str(self.path)

    def _db(self) -> "_Borrowed":
        """This thread's connection (opened once: a connect per query costs more than the query)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return _Borrowed(db)

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

    def claim(self, *, owner: str = "", lease_seconds: float = 30.0) -> Optional[Job]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created, id LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            started = now()
            db.execute("UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1, stage = 'starting', "
                       "progress = 0, pid = NULL, owner = ?, lease_until = ? WHERE id = ?",
                       (started, owner, time.time() + lease_seconds, row["id"]))
            attempt = db.execute("SELECT attempts FROM jobs WHERE id = ?", (row["id"],)).fetchone()[0]
            db.execute("INSERT INTO attempts (job_id, attempt, started, owner) VALUES (?, ?, ?, ?)",
                       (row["id"], attempt, started, owner))
            db.execute("COMMIT")
        return self.get(row["id"])

    def set_worker(self, job_id: str, attempt: int, pid: int, start_ticks: Optional[int], *,
                   node: Optional[str] = None) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET pid = ? WHERE id = ? AND attempts = ?", (pid, job_id, attempt))
            db.execute("UPDATE attempts SET pid = ?, start_ticks = ?, node = ? WHERE job_id = ? AND attempt = ?",
                       (pid, start_ticks, node or socket.gethostname(), job_id, attempt))

    def progress(self, job_id: str, progress: float, stage: str, *, attempt: Optional[int] = None) -> None:
        condition, args = ("", ()) if attempt is None else (" AND attempts = ?", (attempt,))
        with self._db() as db:
            db.execute(f"UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND status = 'running'{condition}",
                       (progress, stage, job_id, *args))

    def finish(self, job_id: str, status: str, *, error: Optional[str] = None,
               artifacts: Optional[dict[str, str]] = None, only_if_running: bool = True,
               attempt: Optional[int] = None) -> bool:
        condition = " AND status = 'running'" if only_if_running else " AND status NOT IN ('succeeded', 'failed', 'cancelled')"
        args: tuple = ()
        if attempt is not None:
            condition, args = condition + " AND attempts = ?", (attempt,)
        finished = now()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(
                f"UPDATE jobs SET status = ?, error = ?, artifacts = ?, finished = ?, stage = ?, owner = NULL, "
                f"lease_until = NULL, progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END WHERE id = ?{condition}",
                (status, error, json.dumps(artifacts or {}), finished, status, status, job_id, *args),
            )
            if cursor.rowcount == 1:
                db.execute("UPDATE attempts SET finished = ?, outcome = ?, error = ? WHERE job_id = ? AND finished IS NULL",
                           (finished, status, error, job_id))
            db.execute("COMMIT")
        return cursor.rowcount == 1

    def fail_attempt(self, job_id: str, attempt: int, error: str, *, retries: int) -> Optional[str]:
        finished = now()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            running = db.execute("SELECT 1 FROM jobs WHERE id = ? AND status = 'running' AND attempts = ?",
                                 (job_id, attempt)).fetchone()
            if running is None:
                db.execute("COMMIT")
                return None
            failed = db.execute("SELECT COUNT(*) FROM attempts WHERE job_id = ? AND outcome = 'failed'",
                                (job_id,)).fetchone()[0]
            db.execute("UPDATE attempts SET finished = ?, outcome = 'failed', error = ? WHERE job_id = ? AND attempt = ?",
                       (finished, error, job_id, attempt))
            if failed < retries:
                status = "queued"
                db.execute("UPDATE jobs SET status = 'queued', pid = NULL, owner = NULL, lease_until = NULL, "
                           "progress = 0, stage = ? WHERE id = ?", (f"queued again: {error}"[:200], job_id))
            else:
                status = "failed"
                db.execute("UPDATE jobs SET status = 'failed', error = ?, finished = ?, stage = 'failed', owner = NULL, "
                           "lease_until = NULL WHERE id = ?", (error, finished, job_id))
            db.execute("COMMIT")
        return status

    def open_attempts(self, *, owner: Optional[str] = None) -> list[Attempt]:
        condition, args = ("", ()) if owner is None else (" AND (owner = ? OR owner IS NULL)", (owner,))
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM attempts WHERE finished IS NULL{condition}", args).fetchall()
        return [_attempt(r) for r in rows]

    def requeue(self, job_ids: Optional[Iterable[str]] = None, *, reason: str, owner: Optional[str] = None) -> int:
        finished = now()
        condition, args = ("", ()) if owner is None else (" AND (owner = ? OR owner IS NULL)", (owner,))
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in db.execute(f"SELECT id FROM jobs WHERE status = 'running'{condition}", args).fetchall()]
            if job_ids is not None:
                wanted = set(job_ids)
                ids = [i for i in ids if i in wanted]
            for job_id in ids:
                db.execute("UPDATE jobs SET status = 'queued', pid = NULL, owner = NULL, lease_until = NULL, stage = ?, "
                           "progress = 0 WHERE id = ?", (reason, job_id))
                db.execute("UPDATE attempts SET finished = ?, outcome = 'interrupted', error = ? "
                           "WHERE job_id = ? AND finished IS NULL", (finished, reason, job_id))
            db.execute("COMMIT")
        return len(ids)

    def renew(self, owner: str, lease_seconds: float) -> set[str]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE jobs SET lease_until = ? WHERE owner = ? AND status = 'running'",
                       (time.time() + lease_seconds, owner))
            held = {r[0] for r in db.execute("SELECT id FROM jobs WHERE owner = ? AND status = 'running'", (owner,))}
            db.execute("COMMIT")
        return held

    def expire(self) -> list[Attempt]:
        finished = now()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT a.* FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempts "
                              "WHERE j.status = 'running' AND j.lease_until < ?", (time.time(),)).fetchall()
            for row in rows:
                reason = f"queued again: the lease of replica {row['owner']} expired"
                db.execute("UPDATE jobs SET status = 'queued', pid = NULL, owner = NULL, lease_until = NULL, stage = ?, "
                           "progress = 0 WHERE id = ?", (reason, row["job_id"]))
                db.execute("UPDATE attempts SET finished = ?, outcome = 'expired', error = ? "
                           "WHERE job_id = ? AND finished IS NULL", (finished, reason, row["job_id"]))
            db.execute("COMMIT")
        return [_attempt(r) for r in rows]

    def attempts_of(self, job_id: str) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    # --- garbage ---

    def referenced(self) -> set[str]:
        with self._db() as db:
            rows = db.execute("SELECT inputs, artifacts FROM jobs").fetchall()
        found: set[str] = set()
        for inputs, artifacts in rows:
            found |= {entry["sha256"] for entry in json.loads(inputs).values()}
            found |= set(json.loads(artifacts).values())
        return found

    def delete_finished(self, before: str) -> list[str]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            old = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished < ?",
                (before,)).fetchall()]
            for job_id in old:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                db.execute("DELETE FROM attempts WHERE job_id = ?", (job_id,))
            db.execute("COMMIT")
        return old


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
        finished=row["finished"], attempts=row["attempts"], pid=row["pid"], owner=row["owner"],
    )


def _attempt(row: sqlite3.Row) -> Attempt:
    return Attempt(row["job_id"], row["attempt"], row["pid"], row["start_ticks"], row["owner"], row["node"])
