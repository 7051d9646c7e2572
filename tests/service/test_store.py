"""The job store on its own: one suite that both stores pass (SQLite, and a real PostgreSQL server),
then what is particular to each (migrations)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

import psycopg
import pytest

from tfquant.errors import BackendError
from tfquant.service import postgres_store
from tfquant.service.sqlite_store import MIGRATIONS
from tfquant.service.store import Store
from tfquant.service.stores import open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> str | None:
    """Where a fresh store lives: the default SQLite file, or a new PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres").database()


@pytest.fixture()
def store(location, tmp_path):
    opened = open_store(tmp_path / "data", location)
    yield opened
    opened.close()


def _sql(store: Store, statement: str, args: tuple = ()) -> None:
    """Run SQL on the store's own database, `jobs` naming its job table."""
    if isinstance(store, postgres_store.PostgresStore):
        with psycopg.connect(store.url, autocommit=True) as db:
            db.execute(statement.replace("jobs", "tfquant_jobs").replace("?", "%s"), args)
    else:
        with sqlite3.connect(store.path) as db:
            db.execute(statement, args)


def _job(store: Store, payload: bytes) -> tuple[str, str]:
    digest = store.put(payload)
    job = store.create("convert", {}, {"model": {"sha256": digest, "suffix": ".keras", "name": "m.keras"}})
    time.sleep(0.002)  # the next job is created later (times are in milliseconds): the queue's order is known
    return job.id, digest


def test_a_worker_records_only_its_own_attempt(store):
    job_id, _ = _job(store, b"model")
    first = store.claim(owner="a:1")
    assert first.id == job_id and first.status == "running" and first.owner == "a:1"
    store.set_worker(job_id, first.attempts, 1234, 99, node="host-a")
    assert [(a.pid, a.start_ticks, a.owner, a.node) for a in store.open_attempts()] == [(1234, 99, "a:1", "host-a")]
    assert store.requeue([job_id], reason="queued again") == 1
    second = store.claim(owner="a:1")
    assert second.attempts == 2
    # The first worker, had it survived, cannot finish the job that now runs as attempt 2.
    assert store.finish(job_id, "succeeded", attempt=1) is False
    assert store.finish(job_id, "succeeded", attempt=2) is True
    assert [a["outcome"] for a in store.attempts_of(job_id)] == ["interrupted", "succeeded"]
    done = store.get(job_id)
    assert done.progress == 1.0 and done.owner is None and done.finished >= done.started >= done.created


def test_concurrent_claims_give_each_job_to_one_replica_once(store, location, tmp_path):
    ids = {_job(store, f"model {i}".encode())[0] for i in range(40)}
    replicas = [open_store(tmp_path / "data", location) for _ in range(4)]
    claimed: dict[str, list[str]] = {f"r:{i}": [] for i in range(4)}

    def drain(replica: Store, owner: str) -> None:
        while (job := replica.claim(owner=owner)) is not None:
            claimed[owner].append(job.id)

    threads = [threading.Thread(target=drain, args=(r, o)) for r, o in zip(replicas, claimed)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for replica in replicas:
        replica.close()
    every = [j for found in claimed.values() for j in found]
    assert sorted(every) == sorted(ids)  # none lost, none claimed twice
    assert store.counts()["running"] == 40 and store.counts()["queued"] == 0
    assert all(len(store.attempts_of(j)) == 1 for j in ids)


def test_an_expired_lease_queues_the_job_again_and_its_owner_loses_it(store):
    job_id, _ = _job(store, b"model")
    other, _ = _job(store, b"model 2")
    assert store.claim(owner="a:1", lease_seconds=0.5).id == job_id
    assert store.claim(owner="b:2", lease_seconds=60).id == other
    assert store.renew("a:1", 0.5) == {job_id} and store.renew("b:2", 60) == {other}
    assert store.expire() == []  # not yet
    time.sleep(0.8)
    expired = store.expire()
    assert [(a.job_id, a.attempt, a.owner) for a in expired] == [(job_id, 1, "a:1")]
    assert store.get(job_id).status == "queued" and store.get(other).status == "running"
    assert store.renew("a:1", 0.5) == set()  # a:1 finds out it no longer holds the job
    assert store.finish(job_id, "succeeded", attempt=1) is False
    taken = store.claim(owner="b:2", lease_seconds=60)
    assert (taken.id, taken.attempts, taken.owner) == (job_id, 2, "b:2")
    assert store.finish(job_id, "succeeded", attempt=2) is True
    attempts = store.attempts_of(job_id)
    assert [(a["outcome"], a["owner"]) for a in attempts] == [("expired", "a:1"), ("succeeded", "b:2")]
    assert attempts[0]["error"] == "queued again: the lease of replica a:1 expired"
    assert attempts[0]["finished"] <= attempts[1]["started"]


def test_a_dead_worker_is_retried_at_most_retries_times(store):
    job_id, _ = _job(store, b"model")
    for attempt, expected in ((1, "queued"), (2, "failed")):
        assert store.claim(owner="a:1").attempts == attempt
        assert store.fail_attempt(job_id, attempt, f"worker {attempt} was killed by SIGKILL", retries=1) == expected
    assert store.fail_attempt(job_id, 2, "again", retries=1) is None  # not running as attempt 2 any more
    job = store.get(job_id)
    assert (job.status, job.error, job.attempts) == ("failed", "worker 2 was killed by SIGKILL", 2)
    assert [(a["outcome"], a["error"]) for a in store.attempts_of(job_id)] == [
        ("failed", "worker 1 was killed by SIGKILL"), ("failed", "worker 2 was killed by SIGKILL")]


def test_requeue_of_one_replica_leaves_the_others_jobs(store):
    mine, _ = _job(store, b"1")
    theirs, _ = _job(store, b"2")
    store.claim(owner="a:1")
    store.claim(owner="b:2")
    assert [a.job_id for a in store.open_attempts(owner="a:1")] == [mine]
    assert store.requeue(reason="queued again after a restart", owner="a:1") == 1
    assert store.get(mine).status == "queued" and store.get(theirs).status == "running"


def test_collector_removes_old_jobs_and_unreferenced_blobs_only(store):
    old_id, old_blob = _job(store, b"old model")
    new_id, new_blob = _job(store, b"new model")
    for _ in range(2):
        job_id = store.claim().id
        assert store.finish(job_id, "succeeded", artifacts={"model.tflite": store.put(job_id.encode())})
    (store.logs / f"{old_id}.log").write_text("log")
    _sql(store, "UPDATE jobs SET finished = '2020-01-01T00:00:00+00:00' WHERE id = ?", (old_id,))  # 40 days ago
    orphan = store.put(b"an upload that was refused")
    held = store.put(b"an upload being validated")
    stale = time.time() - 3600
    for path in store.blobs.iterdir():
        os.utime(path, (stale, stale))
    removed = store.collect(retain_seconds=30 * 86400, grace_seconds=600, keep={held})
    assert removed == {"jobs": 1, "blobs": 3}  # the old job's model and artifact, and the orphan
    assert store.get(old_id) is None and store.attempts_of(old_id) == [] and not (store.logs / f"{old_id}.log").exists()
    assert not store.blob(orphan).exists()
    assert store.get(new_id) is not None
    remaining = {p.name for p in store.blobs.iterdir()}
    assert remaining == {new_blob, store.get(new_id).artifacts["model.tflite"], held}
    # A fresh blob is spared for the grace period even when nothing refers to it yet.
    fresh = store.put(b"just uploaded")
    assert store.collect(retain_seconds=30 * 86400, keep={held})["blobs"] == 0 and store.blob(fresh).exists()
    assert json.loads(json.dumps(store.counts())) == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0,
                                                      "cancelled": 0}


def test_discard_spares_blobs_a_job_refers_to(store):
    _, shared = _job(store, b"model")
    refused = store.put(b"refused calib")
    assert store.discard([shared, refused]) == 1
    assert store.blob(shared).exists() and not store.blob(refused).exists()


def test_list_pages_newest_first_and_counts(store):
    ids = [_job(store, f"m{i}".encode())[0] for i in range(5)]
    page, total = store.list(limit=2, offset=1)
    assert total == 5 and [j.id for j in page] == ids[::-1][1:3]
    store.claim()
    assert store.list(status="running")[1] == 1 and store.counts()["queued"] == 4
    assert store.get(ids[0]).public()["inputs"] == {"model": "m.keras"} and "owner" not in store.get(ids[0]).public()


# --- SQLite ---


def test_a_sqlite_store_of_the_first_schema_is_migrated_in_place(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "jobs.sqlite") as db:  # as the first release wrote it
        db.executescript(MIGRATIONS[0])
        db.execute("INSERT INTO jobs (id, status, command, options, inputs, created) VALUES "
                   "('a' , 'running', 'convert', '{}', '{}', '2026-01-01T00:00:00+00:00')")
    store = open_store(data)
    with sqlite3.connect(data / "jobs.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.get("a").status == "running" and store.open_attempts() == []
    # A job of a server from before leases has no owner: any replica's restart queues it again.
    assert store.requeue(reason="queued again after a restart", owner="host:8080") == 1
    assert store.get("a").status == "queued"


# --- PostgreSQL ---


def test_postgres_tables_are_made_by_versioned_migrations_once(postgres, tmp_path):
    url = postgres.database()
    openers = [threading.Thread(target=lambda: open_store(tmp_path / "data", url).close()) for _ in range(3)]
    for thread in openers:  # replicas starting together: one migrates, the others wait for it
        thread.start()
    for thread in openers:
        thread.join()
    with psycopg.connect(url, autocommit=True) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM tfquant_migrations ORDER BY version")]
        assert versions == list(range(1, len(postgres_store.MIGRATIONS) + 1))
        assert postgres_store.migrate(db) == len(postgres_store.MIGRATIONS)
        db.execute("INSERT INTO tfquant_migrations (version) VALUES (%s)", (len(postgres_store.MIGRATIONS) + 1,))
    with pytest.raises(BackendError, match="expected schema version 1 or older, found 2 .written by a newer tfquant"):
        open_store(tmp_path / "data", url)


def test_an_unreachable_postgres_is_one_line_without_the_password(tmp_path):
    from serving import free_port

    url = f"postgresql://tfquant:hunter2@127.0.0.1:{free_port()}/jobs"
    with pytest.raises(BackendError) as caught:
        open_store(tmp_path, url)
    message = str(caught.value)
    assert message.startswith(f"--store postgresql://tfquant:***@127.0.0.1:{url.split(':')[3].split('/')[0]}/jobs: "
                              "expected a PostgreSQL server that accepts the connection, found ")
    assert "hunter2" not in message and "\n" not in message
