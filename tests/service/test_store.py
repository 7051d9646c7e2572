"""The job store on its own: migrations, attempts, garbage collection."""

from __future__ import annotations

import json
import os
import sqlite3
import time

from tfquant.service.store import MIGRATIONS, Store


def _job(store: Store, payload: bytes, artifact: bytes = b"") -> tuple[str, str]:
    digest = store.put(payload)
    job = store.create("convert", {}, {"model": {"sha256": digest, "suffix": ".keras", "name": "m.keras"}})
    return job.id, digest


def test_a_store_of_the_first_schema_is_migrated_in_place(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "jobs.sqlite") as db:  # as the first release wrote it
        db.executescript(MIGRATIONS[0])
        db.execute("INSERT INTO jobs (id, status, command, options, inputs, created) VALUES "
                   "('a' , 'running', 'convert', '{}', '{}', '2026-01-01T00:00:00+00:00')")
    store = Store(data)
    with sqlite3.connect(data / "jobs.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.get("a").status == "running" and store.open_attempts() == []
    assert store.requeue(reason="queued again after a restart") == 1 and store.get("a").status == "queued"


def test_a_worker_records_only_its_own_attempt(tmp_path):
    store = Store(tmp_path)
    job_id, _ = _job(store, b"model")
    first = store.claim()
    assert first.id == job_id
    store.set_worker(job_id, first.attempts, 1234, 99)
    assert [(a.pid, a.start_ticks) for a in store.open_attempts()] == [(1234, 99)]
    assert store.requeue([job_id], reason="queued again") == 1
    second = store.claim()
    assert second.attempts == 2
    # The first worker, had it survived, cannot finish the job that now runs as attempt 2.
    assert store.finish(job_id, "succeeded", attempt=1) is False
    assert store.finish(job_id, "succeeded", attempt=2) is True
    assert [a["outcome"] for a in store.attempts_of(job_id)] == ["interrupted", "succeeded"]


def test_collector_removes_old_jobs_and_unreferenced_blobs_only(tmp_path):
    store = Store(tmp_path)
    old_id, old_blob = _job(store, b"old model")
    new_id, new_blob = _job(store, b"new model")
    for _ in range(2):
        job_id = store.claim().id
        assert store.finish(job_id, "succeeded", artifacts={"model.tflite": store.put(job_id.encode())})
    (store.logs / f"{old_id}.log").write_text("log")
    with sqlite3.connect(store.path) as db:  # the old job finished 40 days ago
        db.execute("UPDATE jobs SET finished = '2020-01-01T00:00:00+00:00' WHERE id = ?", (old_id,))
    orphan = store.put(b"an upload that was refused")
    held = store.put(b"an upload being validated")
    stale = time.time() - 3600
    for path in store.blobs.iterdir():
        os.utime(path, (stale, stale))
    removed = store.collect(retain_seconds=30 * 86400, grace_seconds=600, keep={held})
    assert removed == {"jobs": 1, "blobs": 3}  # the old job's model and artifact, and the orphan
    assert store.get(old_id) is None and not (store.logs / f"{old_id}.log").exists()
    assert store.get(new_id) is not None
    remaining = {p.name for p in store.blobs.iterdir()}
    assert remaining == {new_blob, store.get(new_id).artifacts["model.tflite"], held}
    # A fresh blob is spared for the grace period even when nothing refers to it yet.
    fresh = store.put(b"just uploaded")
    assert store.collect(retain_seconds=30 * 86400, keep={held})["blobs"] == 0 and store.blob(fresh).exists()
    assert json.loads(json.dumps(store.counts())) == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0,
                                                      "cancelled": 0}


def test_discard_spares_blobs_a_job_refers_to(tmp_path):
    store = Store(tmp_path)
    _, shared = _job(store, b"model")
    refused = store.put(b"refused calib")
    assert store.discard([shared, refused]) == 1
    assert store.blob(shared).exists() and not store.blob(refused).exists()
