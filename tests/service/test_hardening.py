"""The service as an attacker and an operator try it: uploaded code, crashes and stops, bombs, odd requests."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import zipfile
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest
from bombs import npz_bomb, zip_bomb
from serving import AUTH, TOKEN, Server, wait_for, worker_processes

from tfquant.cli import main, parse_args
from tfquant.client import Client
from tfquant.errors import ServiceError
from tfquant.service.stores import open_store


def compact_lambda_h5(folder: Path) -> tuple[Path, Path]:
    """A tf_keras .h5 whose Lambda writes a marker file when run, its config rewritten as compact JSON."""
    from tfquant._keras import keras

    marker = folder / "lambda-ran"
    body = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), t)[1]")  # noqa: S307
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Lambda(body, name="payload")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x)))
    path = folder / "compact.h5"
    model.save(path)
    marker.unlink()  # building the model ran it here, in the test, on purpose
    with h5py.File(path, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        handle.attrs["model_config"] = json.dumps(config, separators=(",", ":"))
    assert b'"class_name":"Lambda"' in h5py.File(path, "r").attrs["model_config"].encode()
    return path, marker


def test_compact_json_lambda_never_runs(server, client, files, tmp_path, capsys):
    path, marker = compact_lambda_h5(tmp_path)
    with pytest.raises(ServiceError) as caught:
        client.submit(path, calib=files["calib"])
    assert caught.value.status == 422
    assert "compact.h5: expected a model without code, found a Lambda layer 'payload'" in str(caught.value)
    code = main(parse_args(["convert", str(path), "--calib", str(files["calib"]), "-o", str(tmp_path / "out.tflite")]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "found a Lambda layer 'payload'" in err[0]
    assert not marker.exists() and not (tmp_path / "out.tflite").exists()
    # The server validated the file without loading it: no TensorFlow in its address space.
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "tensorflow" not in maps and "h5py" not in maps
    assert server.peak_rss_mb() < 200


def test_kill_9_of_the_server_orphans_nothing_and_runs_every_job_once(tmp_path, files):
    data = tmp_path / "data"
    first = Server(data, files["token"], "--workers", "2")
    # Jobs of a few seconds each (a digits conversion takes about one in a forked worker; a one-epoch
    # prune, wrapping, training, stripping and converting, about four): two must still be running when
    # the server is killed.
    with Client(first.url, TOKEN) as client:
        ids = [client.submit(files["model"], command="prune", train=files["train"], epochs=1, sparsity=0.5)
               for _ in range(4)]
    store = open_store(data)
    wait_for(lambda: sum(store.get(j).status == "running" and store.get(j).pid is not None for j in ids) == 2)
    first.stop(signal.SIGKILL)
    time.sleep(3)
    assert all(worker_processes(data, role) == [] for role in ("zygote", "job", "validator"))
    assert sorted(store.get(j).status for j in ids) == ["queued", "queued", "running", "running"]

    most = [0]
    stop = threading.Event()

    def workers() -> set:
        # A worker's own child carries its command line from fork to exec: a library running `uname -p`
        # as TensorFlow is imported, which at the workers' niceness can wait long on a busy machine
        # before its exec. Only the zygote's children are job processes.
        found = worker_processes(data, "job")
        return {p for p in found if p[1] not in {pid for pid, _ in found}}

    def sample():
        # A scan of /proc is no snapshot: a worker that exits after its job and the one started in its
        # place can both be read in one scan. Counted are the processes two scans in a row both saw.
        seen = workers()
        while not stop.is_set():
            now = workers()
            most[0] = max(most[0], len(seen & now))
            seen = now
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    # Restarted as the same replica (host and port), it takes its own jobs back at once.
    second = Server(data, files["token"], "--workers", "2", port=first.port)
    try:
        with Client(second.url, TOKEN) as client:
            final = [client.wait(job, timeout=300, poll=0.3)["status"] for job in ids]
    finally:
        stop.set()
        sampler.join()
        second.stop()
    assert final == ["succeeded"] * 4
    assert most[0] <= 2
    for job in ids:
        attempts = store.attempts_of(job)
        assert [a["outcome"] for a in attempts].count("succeeded") == 1
        for earlier, later in zip(attempts, attempts[1:]):  # never two runs of one job at a time
            assert earlier["outcome"] == "interrupted" and earlier["finished"] <= later["started"]


def test_a_zygote_that_cannot_import_tensorflow_is_started_again_after_growing_pauses(tmp_path, files):
    """A broken install must not make the server start a process every poll: each start of a zygote that
    dies before it is ready waits twice as long as the last, and the server says why and where to look."""
    broken = tmp_path / "broken"
    (broken / "tensorflow").mkdir(parents=True)
    (broken / "tensorflow" / "__init__.py").write_text("raise ImportError('this tensorflow is broken')\n")
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken), os.environ.get("PYTHONPATH", "")])}
    server = Server(data, files["token"], "--workers", "1", env=env)
    try:
        pauses = wait_for(lambda: (lambda found: found if len(found) >= 3 else None)(
            re.findall(r"the worker zygote exited with code 1 before it was ready \(see (\S+)\); starting it "
                       r"again in (\d+) s", Path(server.log.name).read_text())), timeout=60)
        health = httpx.get(f"{server.url}/healthz").json()
    finally:
        assert server.stop() == 0
    assert [int(p) for _, p in pauses[:3]] == [1, 2, 4]
    assert pauses[0][0] == str(data / "logs" / "zygote.log")
    assert "ImportError: this tensorflow is broken" in (data / "logs" / "zygote.log").read_text()
    assert (health["status"], health["idle"]) == ("degraded", 0)
    assert health["detail"] == f"the worker zygote exited with code 1 before it was ready (see {pauses[0][0]})"


def test_sigterm_exits_0_within_10_s_and_the_job_finishes_after_restart(tmp_path, files):
    data = tmp_path / "data"
    first = Server(data, files["token"], "--workers", "1")
    with Client(first.url, TOKEN) as client:
        job = client.submit(files["model"], command="prune", train=files["train"], epochs=3, sparsity=0.5)
    store = open_store(data)
    wait_for(lambda: store.get(job).status == "running" and store.get(job).pid)
    started = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert all(worker_processes(data, role) == [] for role in ("zygote", "job", "validator"))
    assert store.get(job).status == "queued"
    second = Server(data, files["token"], "--workers", "1")
    try:
        with Client(second.url, TOKEN) as client:
            state = client.wait(job, timeout=300, poll=0.3)
    finally:
        assert second.stop(signal.SIGINT) == 0
    assert state["status"] == "succeeded" and state["attempts"] == 2
    assert [a["outcome"] for a in store.attempts_of(job)] == ["interrupted", "succeeded"]


def _watch_disk(folders: list[Path], stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        total = 0
        for folder in folders:
            for path in folder.rglob("*"):
                try:
                    total += path.stat().st_size if path.is_file() else 0
                except OSError:
                    pass
        peak[0] = max(peak[0], total)
        time.sleep(0.02)


def test_bombs_are_refused_before_they_expand(server, files, tmp_path):
    npz = npz_bomb(tmp_path / "bomb.npz", 3 << 30)  # 3 MB that unpack to 3 GB of float32
    saved = zip_bomb(tmp_path / "bomb.zip", int(1.5 * 2**30))  # 1.5 MB that unpack to 1.5 GB
    assert npz.stat().st_size < 4 << 20 and saved.stat().st_size < 4 << 20
    stop, peak = threading.Event(), [0]
    # Where an upload could be spooled: the data folder and the server's temporary folder (its TMPDIR).
    watched = [server.data_dir, server.tmp_dir]
    watcher = threading.Thread(target=_watch_disk, args=(watched, stop, peak))
    before = sum(p.stat().st_size for folder in watched for p in folder.rglob("*") if p.is_file())
    watcher.start()
    try:
        with open(files["model"], "rb") as model, open(npz, "rb") as calib:
            first = httpx.post(f"{server.url}/v1/jobs", headers=AUTH, timeout=60,
                               files={"model": ("digits.keras", model), "calib": ("bomb.npz", calib)})
        with open(saved, "rb") as model, open(files["calib"], "rb") as calib:
            second = httpx.post(f"{server.url}/v1/jobs", headers=AUTH, timeout=60,
                                files={"model": ("bomb.zip", model), "calib": ("calib.npz", calib)})
    finally:
        stop.set()
        watcher.join()
    assert first.status_code == 413
    assert first.json()["detail"] == "upload 'bomb.npz': expected contents of at most 16 MB when unpacked, found 3072.0 MB or more"
    assert second.status_code == 413
    assert second.json()["detail"].startswith("upload 'bomb.zip': expected contents of at most 16 MB when unpacked")
    assert server.peak_rss_mb() < 1024
    assert peak[0] - before < 300 << 20
    assert not list((server.data_dir / "blobs").glob(".upload-*"))


def test_chunked_upload_over_the_limit_is_413_and_not_spooled(server, tmp_path):
    boundary = "tfquant-test-boundary"
    sent = [0]

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; filename=\"big.keras\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        chunk = bytes(1 << 20)
        for _ in range(64):  # 64 MB against a 4 MB limit, with no Content-Length
            sent[0] += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_disk, args=([server.data_dir / "blobs"], stop, peak))
    before = sum(p.stat().st_size for p in (server.data_dir / "blobs").iterdir())
    watcher.start()
    try:
        response = httpx.post(f"{server.url}/v1/jobs", content=body(), timeout=60,
                              headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    finally:
        stop.set()
        watcher.join()
    assert response.status_code == 413
    assert response.json()["detail"] == "upload 'big.keras': expected at most 4 MB per file, found more"
    assert peak[0] - before <= (4 << 20) + (1 << 20)  # at most the limit and the chunk that crossed it
    assert not list((server.data_dir / "blobs").glob(".upload-*"))


def test_malformed_requests_are_4xx_with_one_line(server, client, files, tmp_path, model_files):
    # A SavedModel zip whose member data was damaged after the CRC was written.
    good = tmp_path / "saved.zip"
    shutil.make_archive(str(good.with_suffix("")), "zip", model_files["saved_model"].parent, model_files["saved_model"].name)
    damaged = tmp_path / "damaged.zip"
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        member = max(archive.infolist(), key=lambda m: m.compress_size)
        offset = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra) + member.compress_size // 2
    data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ServiceError) as caught:
        client.submit(damaged, calib=files["calib"])
    assert caught.value.status == 422
    assert "damaged.zip: expected a SavedModel folder as a .zip archive, found a damaged archive" in str(caught.value)

    # A zip member in a compression method other than stored or deflated.
    odd = tmp_path / "odd.zip"
    with zipfile.ZipFile(odd, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("model/saved_model.pb", b"\x08\x01" * 100)
    with pytest.raises(ServiceError) as caught:
        client.submit(odd, calib=files["calib"])
    assert caught.value.status == 422 and "found compression method 12 in 'model/saved_model.pb'" in str(caught.value)

    for query in ("offset=1e20", "offset=100000000000000000000", "limit=0", "limit=abc", "status=done"):
        response = httpx.get(f"{server.url}/v1/jobs?{query}", headers=AUTH)
        assert response.status_code == 422, query
        assert isinstance(response.json()["detail"], str) and "\n" not in response.json()["detail"]
    assert httpx.post(f"{server.url}/v1/jobs", headers=AUTH, content=b"x").status_code == 400
    cut = httpx.post(f"{server.url}/v1/jobs", content=b"--b\r\nContent-Disposition: form-data; name=\"model\"; "
                     b"filename=\"m.keras\"\r\n\r\nabc", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"})
    assert cut.status_code == 400 and "cut short" in cut.json()["detail"]
    assert httpx.get(f"{server.url}/v1/jobs/{'0' * 32}/artifacts/model.tflite", headers=AUTH).status_code == 404


def test_refused_uploads_are_deleted(server, client, files, tmp_path):
    blobs = server.data_dir / "blobs"
    before = {p.name for p in blobs.iterdir()}
    bad = tmp_path / "labels.npz"
    np.savez(bad, x=np.zeros((5, 8, 8), np.float32) + 0.123)  # wrong rank: refused by the validator
    with pytest.raises(ServiceError) as caught:
        client.submit(files["model"], calib=bad)
    assert caught.value.status == 422 and "labels.npz: expected shape (N, 8, 8, 1)" in str(caught.value)
    after = {p.name for p in blobs.iterdir()}
    assert after - before == set()  # the new calib blob went; the model blob stays only if a job holds it


def test_stale_temp_folders_are_swept_at_start(tmp_path, files):
    data = tmp_path / "data"
    open_store(data)
    stale = data / "tmp" / "job-deadbeef-xyz"
    stale.mkdir(parents=True)
    (stale / "calib.npz").write_bytes(b"x" * 1000)
    server = Server(data, files["token"], "--workers", "1")
    try:
        assert not stale.exists()
        assert httpx.get(f"{server.url}/healthz", timeout=5).json()["status"] == "ok"
    finally:
        server.stop()


def test_health_and_status_answer_while_validators_are_busy(server, client, files):
    submissions = [threading.Thread(target=lambda: client.submit(files["model"], calib=files["calib"], eval=files["eval"]))
                   for _ in range(8)]
    for thread in submissions:
        thread.start()
    try:
        # The validator works through the eight one at a time; health and status do not wait for it.
        for _ in range(10):
            assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
            assert httpx.get(f"{server.url}/v1/jobs?limit=1", headers=AUTH, timeout=2).status_code == 200
    finally:
        for thread in submissions:
            thread.join()
