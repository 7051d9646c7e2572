"""The job store for replicas that share one queue: PostgreSQL through psycopg 3 (`tfquant[postgres]`).

Several `tfquant serve` processes, on one host or many, point `--store` at one database. A job
is claimed with `SELECT ... FOR UPDATE SKIP LOCKED`, so replicas polling at once never get the
same job and never wait on each other's claims. Leases are kept in the database's clock, so the
replicas' clocks need not agree.

tfquant creates and migrates its own tables (prefixed `tfquant_`, so a shared database is fine):
each migration runs once, in order, under an advisory lock (two replicas starting together do
not race), and is recorded in `tfquant_migrations`. Nobody runs SQL by hand.
"""

from __future__ import annotations

import datetime
import socket
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit, urlunsplit

from ..errors import BackendError, problem
from .store import STATUSES, Attempt, Job, Store

MIGRATION_LOCK = 0x7466_7175_616E  # "tfquan": pg_advisory_xact_lock key of the migrations
MIGRATIONS = (
    """
    CREATE TABLE tfquant_jobs (
        id text PRIMARY KEY,
        status text NOT NULL,
        command text NOT NULL,
        options jsonb NOT NULL,
        inputs jsonb NOT NULL,
        artifacts jsonb NOT NULL DEFAULT '{}',
        progress double precision NOT NULL DEFAULT 0,
        stage text NOT NULL DEFAULT '',
        error text,
        created timestamptz NOT NULL DEFAULT clock_timestamp(),
        started timestamptz,
        finished timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        pid integer,
        owner text,
        lease_until timestamptz
    );
    CREATE INDEX tfquant_jobs_queue ON tfquant_jobs (created, id) WHERE status = 'queued';
    CREATE INDEX tfquant_jobs_status ON tfquant_jobs (status, created);
    CREATE INDEX tfquant_jobs_owner ON tfquant_jobs (owner) WHERE status = 'running';
    CREATE TABLE tfquant_attempts (
        job_id text NOT NULL REFERENCES tfquant_jobs (id) ON DELETE CASCADE,
        attempt integer NOT NULL,
        pid integer,
        start_ticks bigint,
        owner text,
        node text,
        started timestamptz NOT NULL,
        finished timestamptz,
        outcome text,
        error text,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE INDEX tfquant_attempts_open ON tfquant_attempts (job_id) WHERE finished IS NULL;
    """,
)


class PostgresStore(Store):
    def __init__(self, data_dir: Path, url: str, *, connections: int = 8):
        super().__init__(data_dir)
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise BackendError(f"--store {redact(url)}: PostgreSQL needs the postgres extra: "
                               f"pip install 'tfquant[postgres]' ({exc})") from None
        self.url = url
        try:
            with psycopg.connect(url, connect_timeout=10, autocommit=True) as db:
                migrate(db)
        except psycopg.Error as exc:
            raise BackendError(problem(f"--store {redact(url)}", "a PostgreSQL server that accepts the connection",
                                       first_line(exc))) from None
        self._pool = ConnectionPool(url, min_size=1, max_size=connections, open=True, name="tfquant-store", timeout=10,
                                    kwargs={"autocommit": True, "row_factory": dict_row})

    @property
    def location(self) -> str:
        return self.url

    def close(self) -> None:
        self._pool.close()

    def _one(self, sql: str, args: Any = ()) -> Optional[dict]:
        with self._pool.connection() as db:
            return db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: Any = ()) -> list[dict]:
        with self._pool.connection() as db:
            return db.execute(sql, args).fetchall()

    # --- jobs ---

    def create(self, command: str, options: dict[str, Any], inputs: dict[str, dict[str, str]]) -> Job:
        from psycopg.types.json import Jsonb

        row = self._one("INSERT INTO tfquant_jobs (id, status, command, options, inputs) VALUES (%s, 'queued', %s, %s, %s) "
                        "RETURNING *", (uuid.uuid4().hex, command, Jsonb(options), Jsonb(inputs)))
        return _job(row)

    def get(self, job_id: str) -> Optional[Job]:
        row = self._one("SELECT * FROM tfquant_jobs WHERE id = %s", (job_id,))
        return None if row is None else _job(row)

    def list(self, *, limit: int = 50, offset: int = 0, status: Optional[str] = None) -> tuple[list[Job], int]:
        where, args = ("WHERE status = %s", [status]) if status else ("", [])
        with self._pool.connection() as db:
            rows = db.execute(f"SELECT * FROM tfquant_jobs {where} ORDER BY created DESC, id LIMIT %s OFFSET %s",
                              (*args, limit, offset)).fetchall()
            total = db.execute(f"SELECT COUNT(*) AS n FROM tfquant_jobs {where}", args).fetchone()["n"]
        return [_job(r) for r in rows], total

    def counts(self) -> dict[str, int]:
        found = {r["status"]: r["n"] for r in self._all("SELECT status, COUNT(*) AS n FROM tfquant_jobs GROUP BY status")}
        return {s: found.get(s, 0) for s in STATUSES}

    def claim(self, *, owner: str = "", lease_seconds: float = 30.0) -> Optional[Job]:
        with self._pool.connection() as db, db.transaction():
            row = db.execute(
                "WITH next AS (SELECT id FROM tfquant_jobs WHERE status = 'queued' ORDER BY created, id LIMIT 1 "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE tfquant_jobs j SET status = 'running', started = clock_timestamp(), attempts = j.attempts + 1, "
                "stage = 'starting', progress = 0, pid = NULL, owner = %s, "
                "lease_until = clock_timestamp() + make_interval(secs => %s) FROM next WHERE j.id = next.id RETURNING j.*",
                (owner, float(lease_seconds))).fetchone()
            if row is None:
                return None
            db.execute("INSERT INTO tfquant_attempts (job_id, attempt, started, owner) VALUES (%s, %s, %s, %s)",
                       (row["id"], row["attempts"], row["started"], owner))
        return _job(row)

    def set_worker(self, job_id: str, attempt: int, pid: int, start_ticks: Optional[int], *,
                   node: Optional[str] = None) -> None:
        with self._pool.connection() as db, db.transaction():
            db.execute("UPDATE tfquant_jobs SET pid = %s WHERE id = %s AND attempts = %s", (pid, job_id, attempt))
            db.execute("UPDATE tfquant_attempts SET pid = %s, start_ticks = %s, node = %s WHERE job_id = %s AND attempt = %s",
                       (pid, start_ticks, node or socket.gethostname(), job_id, attempt))

    def progress(self, job_id: str, progress: float, stage: str, *, attempt: Optional[int] = None) -> None:
        condition, args = ("", ()) if attempt is None else (" AND attempts = %s", (attempt,))
        with self._pool.connection() as db:
            db.execute(f"UPDATE tfquant_jobs SET progress = %s, stage = %s WHERE id = %s AND status = 'running'{condition}",
                       (progress, stage, job_id, *args))

    def finish(self, job_id: str, status: str, *, error: Optional[str] = None,
               artifacts: Optional[dict[str, str]] = None, only_if_running: bool = True,
               attempt: Optional[int] = None) -> bool:
        from psycopg.types.json import Jsonb

        condition = " AND status = 'running'" if only_if_running else " AND status NOT IN ('succeeded', 'failed', 'cancelled')"
        args: tuple = ()
        if attempt is not None:
            condition, args = condition + " AND attempts = %s", (attempt,)
        with self._pool.connection() as db, db.transaction():
            row = db.execute(
                f"UPDATE tfquant_jobs SET status = %s, error = %s, artifacts = %s, finished = clock_timestamp(), "
                f"stage = %s, owner = NULL, lease_until = NULL, "
                f"progress = CASE WHEN %s = 'succeeded' THEN 1.0 ELSE progress END WHERE id = %s{condition} "
                f"RETURNING finished", (status, error, Jsonb(artifacts or {}), status, status, job_id, *args)).fetchone()
            if row is not None:
                db.execute("UPDATE tfquant_attempts SET finished = %s, outcome = %s, error = %s "
                           "WHERE job_id = %s AND finished IS NULL", (row["finished"], status, error, job_id))
        return row is not None

    def fail_attempt(self, job_id: str, attempt: int, error: str, *, retries: int) -> Optional[str]:
        with self._pool.connection() as db, db.transaction():
            running = db.execute("SELECT 1 FROM tfquant_jobs WHERE id = %s AND status = 'running' AND attempts = %s "
                                 "FOR UPDATE", (job_id, attempt)).fetchone()
            if running is None:
                return None
            failed = db.execute("SELECT COUNT(*) AS n FROM tfquant_attempts WHERE job_id = %s AND outcome = 'failed'",
                                (job_id,)).fetchone()["n"]
            db.execute("UPDATE tfquant_attempts SET finished = clock_timestamp(), outcome = 'failed', error = %s "
                       "WHERE job_id = %s AND attempt = %s", (error, job_id, attempt))
            if failed < retries:
                db.execute("UPDATE tfquant_jobs SET status = 'queued', pid = NULL, owner = NULL, lease_until = NULL, "
                           "progress = 0, stage = %s WHERE id = %s", (f"queued again: {error}"[:200], job_id))
                return "queued"
            db.execute("UPDATE tfquant_jobs SET status = 'failed', error = %s, finished = clock_timestamp(), "
                       "stage = 'failed', owner = NULL, lease_until = NULL WHERE id = %s", (error, job_id))
            return "failed"

    def open_attempts(self, *, owner: Optional[str] = None) -> list[Attempt]:
        condition, args = ("", ()) if owner is None else (" AND (owner = %s OR owner IS NULL)", (owner,))
        return [_attempt(r) for r in self._all(f"SELECT * FROM tfquant_attempts WHERE finished IS NULL{condition}", args)]

    def requeue(self, job_ids: Optional[Iterable[str]] = None, *, reason: str, owner: Optional[str] = None) -> int:
        condition, args = ("", []) if owner is None else (" AND (owner = %s OR owner IS NULL)", [owner])
        if job_ids is not None:
            condition, args = condition + " AND id = ANY(%s)", args + [list(job_ids)]
        with self._pool.connection() as db, db.transaction():
            ids = [r["id"] for r in db.execute(
                f"UPDATE tfquant_jobs SET status = 'queued', pid = NULL, owner = NULL, lease_until = NULL, stage = %s, "
                f"progress = 0 WHERE status = 'running'{condition} RETURNING id", (reason, *args)).fetchall()]
            db.execute("UPDATE tfquant_attempts SET finished = clock_timestamp(), outcome = 'interrupted', error = %s "
                       "WHERE job_id = ANY(%s) AND finished IS NULL", (reason, ids))
        return len(ids)

    def renew(self, owner: str, lease_seconds: float) -> set[str]:
        rows = self._all("UPDATE tfquant_jobs SET lease_until = clock_timestamp() + make_interval(secs => %s) "
                         "WHERE owner = %s AND status = 'running' RETURNING id", (float(lease_seconds), owner))
        return {r["id"] for r in rows}

    def expire(self) -> list[Attempt]:
        with self._pool.connection() as db, db.transaction():
            rows = db.execute(
                "SELECT a.* FROM tfquant_jobs j JOIN tfquant_attempts a ON a.job_id = j.id AND a.attempt = j.attempts "
                "WHERE j.status = 'running' AND j.lease_until < clock_timestamp() FOR UPDATE OF j SKIP LOCKED").fetchall()
            for row in rows:
                reason = f"queued again: the lease of replica {row['owner']} expired"
                db.execute("UPDATE tfquant_jobs SET status = 'queued', pid = NULL, owner = NULL, lease_until = NULL, "
                           "stage = %s, progress = 0 WHERE id = %s", (reason, row["job_id"]))
                db.execute("UPDATE tfquant_attempts SET finished = clock_timestamp(), outcome = 'expired', error = %s "
                           "WHERE job_id = %s AND finished IS NULL", (reason, row["job_id"]))
        return [_attempt(r) for r in rows]

    def attempts_of(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM tfquant_attempts WHERE job_id = %s ORDER BY attempt", (job_id,))
        return [{k: _iso(v) if isinstance(v, datetime.datetime) else v for k, v in r.items()} for r in rows]

    # --- garbage ---

    def referenced(self) -> set[str]:
        found: set[str] = set()
        for row in self._all("SELECT inputs, artifacts FROM tfquant_jobs"):
            found |= {entry["sha256"] for entry in row["inputs"].values()}
            found |= set(row["artifacts"].values())
        return found

    def delete_finished(self, before: str) -> list[str]:
        rows = self._all("DELETE FROM tfquant_jobs WHERE status IN ('succeeded', 'failed', 'cancelled') "
                         "AND finished < %s::timestamptz RETURNING id", (before,))
        return [r["id"] for r in rows]


def migrate(db) -> int:
    """Apply the migrations this database has not had, under a lock; returns the schema version."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS tfquant_migrations (version integer PRIMARY KEY, "
                   "applied timestamptz NOT NULL DEFAULT clock_timestamp())")
        version = db.execute("SELECT COALESCE(MAX(version), 0) FROM tfquant_migrations").fetchone()[0]
        if version > len(MIGRATIONS):
            raise BackendError(f"the tfquant tables: expected schema version {len(MIGRATIONS)} or older, found "
                               f"{version} (written by a newer tfquant)")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute(script)
            db.execute("INSERT INTO tfquant_migrations (version) VALUES (%s)", (number,))
    return max(version, len(MIGRATIONS))


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def first_line(exc: BaseException) -> str:
    """A driver's message on one line (libpq's run over several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _iso(value: Optional[datetime.datetime]) -> Optional[str]:
    return None if value is None else value.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _job(row: dict) -> Job:
    return Job(
        id=row["id"], status=row["status"], command=row["command"], options=row["options"], inputs=row["inputs"],
        artifacts=row["artifacts"], progress=row["progress"], stage=row["stage"], error=row["error"],
        created=_iso(row["created"]), started=_iso(row["started"]), finished=_iso(row["finished"]),
        attempts=row["attempts"], pid=row["pid"], owner=row["owner"],
    )


def _attempt(row: dict) -> Attempt:
    return Attempt(row["job_id"], row["attempt"], row["pid"], row["start_ticks"], row["owner"], row["node"])
