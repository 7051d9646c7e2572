"""The converter service, started for real on a loopback port, driven over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tfquant.cli import main, parse_args
from tfquant.client import Client
from tfquant.errors import ServiceError
from tfquant.service.stores import open_store

from serving import TOKEN, Server, wait_for, worker_processes

def test_token_is_required_except_for_healthz(server):
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    response = httpx.get(f"{server.url}/v1/jobs")
    assert response.status_code == 401 and response.json()["detail"] == "expected Authorization: Bearer <token>, found none"
    wrong = httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "found a wrong token" in wrong.json()["detail"]
    assert httpx.get(f"{server.url}/metrics").status_code == 401


def test_one_spec_gives_the_same_bytes_through_the_service_the_command_and_the_api(client, files, tmp_path, capsys):
    """The options of a job, its recipe.json replayed by the command, and the same spec in Python: one file."""
    import tfquant
    from tfquant.spec import ConvertSpec

    spec = ConvertSpec(calib_samples=120, ranges="minmax", max_drop=0.01)
    job = client.submit(files["model"], calib=files["calib"], eval=files["eval"], **spec.to_dict())
    state = client.wait(job, timeout=180, poll=0.3)
    assert state["status"] == "succeeded", state
    assert state["options"]["calib_samples"] == 120 and state["options"]["ranges"] == "minmax"
    assert state["progress"] == 1.0 and state["started"] and state["finished"]
    assert set(state["artifacts"]) == {"model.tflite", "report.json", "report.md", "report.html", "recipe.json"}
    served = client.download(job, tmp_path / "served.tflite").read_bytes()
    recipe = client.download(job, tmp_path / "recipe.json", artifact="recipe.json")
    assert json.loads(recipe.read_text())["calib_samples"] == 120
    code = main(parse_args(["convert", str(files["model"]), "--calib", str(files["calib"]), "--eval", str(files["eval"]),
                            "--max-drop", "0.01", "--recipe", str(recipe), "-o", str(tmp_path / "cli" / "m.tflite"),
                            "-q"]))
    capsys.readouterr()
    assert code == 0
    assert served == (tmp_path / "cli" / "m.tflite").read_bytes()
    result = tfquant.quantize(files["model"], files["calib"], eval_data=files["eval"], spec=spec, bench_runs=2)
    assert served == result.tflite
    report_text = client.download(job, tmp_path / "report.json", artifact="report.json").read_text()
    report = json.loads(report_text)
    assert report["quantized"]["fully_integer"] is True and report["accuracy_drop"] <= 0.01
    assert report["spec"]["command"] == "convert" and report["spec"]["calib_samples"] == 120
    # The client's own file names, never the server's folders.
    assert report["model"] == "digits.keras"
    assert "tfquant-data" not in report_text and "/tmp" not in report_text and "job-" not in report_text
    with pytest.raises(ServiceError, match="404: unknown artifact '../../etc/passwd'|404"):
        client.download(job, tmp_path / "x", artifact="../../etc/passwd")


def test_upload_over_the_limit_is_413(server, files, tmp_path):
    big = tmp_path / "big.npz"
    np.savez(big, x=np.zeros((20000, 8, 8, 1), np.float32))  # ~5 MB > 4 MB
    with open(files["model"], "rb") as model, open(big, "rb") as calib:
        response = httpx.post(f"{server.url}/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                              files={"model": ("m.keras", model), "calib": ("big.npz", calib)}, timeout=60)
    assert response.status_code == 413
    assert "expected at most 4 MB" in response.json()["detail"]


def test_corrupt_model_is_422_with_the_command_message(client, files, tmp_path):
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"\x00not a zip" * 100)
    with pytest.raises(ServiceError) as caught:
        client.submit(corrupt, calib=files["calib"])
    assert caught.value.status == 422
    assert "corrupt.keras: expected a .keras zip archive, found 1000 bytes that are not a zip archive" in str(caught.value)


def test_a_float_tflite_upload_converts_as_the_api_does_and_others_are_422(client, files, tmp_path):
    """A float32 .tflite file (another converter's, or the float file tfquant writes) is a model the command and
    the API take: the service takes it too. What is not one is refused at submission, with the command's line."""
    import tfquant
    from tfquant.spec import ConvertSpec

    spec = ConvertSpec(calib_samples=120, ranges="minmax", diagnose=False, bench_runs=1)
    keras_result = tfquant.quantize(files["model"], files["calib"], spec=spec)
    float_file = tmp_path / "digits_f32.tflite"
    float_file.write_bytes(keras_result.float_tflite)
    job = client.submit(float_file, calib=files["calib"], eval=files["eval"], **spec.to_dict())
    state = client.wait(job, timeout=180, poll=0.3)
    assert state["status"] == "succeeded", state
    served = client.download(job, tmp_path / "served.tflite").read_bytes()
    assert served == tfquant.quantize(float_file, files["calib"], spec=spec).tflite
    report = json.loads(client.download(job, tmp_path / "report.json", artifact="report.json").read_text())
    assert report["model"] == "digits_f32.tflite" and report["quantized"]["fully_integer"] is True
    assert abs(report["accuracy_drop"]) <= 0.01

    int8_file = tmp_path / "digits_int8.tflite"
    int8_file.write_bytes(served)
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(keras_result.float_tflite[:len(keras_result.float_tflite) // 2])  # its identifier intact
    not_tflite = tmp_path / "digits.tflite"
    not_tflite.write_bytes(files["model"].read_bytes())  # a .keras zip under another name
    for path, options, message in [
        (not_tflite, {}, "digits.tflite: expected a TFLite flatbuffer (identifier 'TFL3'), found "),
        (damaged, {}, "damaged.tflite: expected a file the interpreter can run, found The model is not a valid Flatbuffer buffer"),
        (int8_file, {}, "digits_int8.tflite: expected a float32 .tflite file to quantize, found int8 tensors"),
        (float_file, {"command": "qat", "epochs": 1},
         "digits_f32.tflite: expected a Keras model (.keras, .h5) or SavedModel for tfquant qat"),
    ]:
        with pytest.raises(ServiceError) as caught:
            client.submit(path, calib=files["calib"], train=files["train"] if options else None, **options)
        assert caught.value.status == 422 and message in str(caught.value), (path.name, str(caught.value))


def test_lambda_model_is_422(client, files, tmp_path):
    from tfquant._keras import keras

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2)(inputs))))
    path = tmp_path / "lambda.h5"
    model.save(path)
    with pytest.raises(ServiceError) as caught:
        client.submit(path, calib=files["calib"])
    assert caught.value.status == 422 and "lambda.h5: expected a model without code, found a Lambda layer" in str(caught.value)


@pytest.mark.parametrize("recipe, message", [
    ({"mode": "int4"}, "recipe: mode: unknown value 'int4'"),
    ({"bits": 4}, "recipe: unknown option(s) bits for convert"),
    ({"max_drop": 0.01}, "convert job: max_drop needs the eval file"),
    ({"fallback": "auto"}, "convert job: fallback auto needs the eval file: the ladder measures every candidate"),
    ({"command": "qat"}, "recipe: qat needs 'epochs'"),
])
def test_bad_options_are_422(client, files, recipe, message):
    with pytest.raises(ServiceError) as caught:
        client.submit(files["model"], calib=files["calib"], **recipe)
    assert caught.value.status == 422 and message in str(caught.value)


def test_kill_9_of_a_worker_fails_only_its_job(server, client, files):
    store = open_store(server.data_dir)
    slow = client.submit(files["model"], command="prune", train=files["train"], calib=files["calib"], epochs=40, sparsity=0.5)
    pid = wait_for(lambda: (store.get(slow).pid if store.get(slow).status == "running" else None))
    time.sleep(1.0)
    health = httpx.get(f"{server.url}/healthz").json()
    assert (health["workers"], health["running"]) == (2, 1) and health["idle"] <= 1
    os.kill(pid, signal.SIGKILL)
    state = client.wait(slow, timeout=60, poll=0.2)
    assert state["status"] == "failed"
    assert state["error"].startswith("the worker process was killed by SIGKILL")
    # The dead worker is replaced: both are ready for a job again.
    health = wait_for(lambda: (lambda h: h if h["idle"] == 2 else None)(httpx.get(f"{server.url}/healthz").json()))
    assert (health["status"], health["running"]) == ("ok", 0)
    after = client.submit(files["model"], calib=files["calib"], mode="dynamic")
    assert client.wait(after, timeout=180, poll=0.3)["status"] == "succeeded"


def test_workers_are_forks_of_one_zygote_which_is_started_again_when_it_dies(tmp_path, files):
    data = tmp_path / "data"
    server = Server(data, files["token"], "--workers", "1")
    try:
        [(zygote, parent)] = wait_for(lambda: worker_processes(data, "zygote"))
        assert parent == server.pid
        store = open_store(data)
        with Client(server.url, TOKEN) as client:
            first = client.submit(files["model"], calib=files["calib"], mode="dynamic")
            assert client.wait(first, timeout=120, poll=0.2)["status"] == "succeeded"
            slow = client.submit(files["model"], command="prune", train=files["train"], epochs=40, sparsity=0.5)
            pid = wait_for(lambda: (store.get(slow).pid if store.get(slow).status == "running" else None))
            # Each job in a process of its own, forked from the zygote.
            assert pid != store.get(first).pid and (pid, zygote) in worker_processes(data, "job")
            os.kill(zygote, signal.SIGKILL)
            state = client.wait(slow, timeout=60, poll=0.2)
            assert state["status"] == "failed" and state["error"].startswith("the worker process was killed by SIGKILL")
            [(again, parent)] = wait_for(lambda: worker_processes(data, "zygote"))
            assert again != zygote and parent == server.pid
            after = client.submit(files["model"], calib=files["calib"], mode="dynamic")
            assert client.wait(after, timeout=120, poll=0.3)["status"] == "succeeded"
            assert store.get(after).pid != pid
    finally:
        server.stop()


def test_a_jobs_sweep_runs_in_processes_forked_for_it_and_gives_the_serial_file(server, client, mismatched, laddered,
                                                                             train_npz, test_npz, tmp_path):
    """`parallel` in a job: the worker, itself forked from the zygote, measures the ladder's candidates in
    sweep workers of its own (forked from a fork server it starts), and the job's file is the serial one."""
    serial, _ = laddered
    job = client.submit(mismatched, calib=train_npz, eval=test_npz, max_drop=0.01, fallback="auto", bench_runs=2,
                        split_joins=False, parallel=2)
    assert client.wait(job, timeout=300, poll=0.3)["status"] == "succeeded"
    assert client.download(job, tmp_path / "job.tflite").read_bytes() == serial.tflite
    log = (server.data_dir / "logs" / f"{job}.log").read_text()
    assert re.search(r"\d+ measurements in 2 worker processes", log), log[-2000:]


def test_cancel_kills_a_running_worker(server, client, files):
    store = open_store(server.data_dir)
    slow = client.submit(files["model"], command="prune", train=files["train"], epochs=40, sparsity=0.5)
    pid = wait_for(lambda: (store.get(slow).pid if store.get(slow).status == "running" else None))
    assert client.cancel(slow)["status"] == "cancelled"
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2])
    assert client.status(slow)["status"] == "cancelled"
    with pytest.raises(ServiceError, match="409: job .* already cancelled"):
        client.cancel(slow)


def test_concurrent_submissions_all_succeed_and_are_counted(server, client, files):
    from prometheus_client.parser import text_string_to_metric_families

    def metrics() -> dict:
        text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    succeeded = (("status", "succeeded"),)
    counted = [("tfquant_jobs_submitted_total", ()), ("tfquant_jobs_finished_total", succeeded),
               ("tfquant_job_duration_seconds_count", succeeded)]
    before = metrics()  # the shared server has run other tests' jobs
    jobs = 4  # twice the server's workers: two wait in the queue
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        ids = list(pool.map(lambda _: client.submit(files["model"], calib=files["calib"], mode="float16"), range(jobs)))
    assert len(set(ids)) == jobs
    states = [client.wait(job, timeout=400, poll=0.5) for job in ids]
    assert [s["status"] for s in states] == ["succeeded"] * jobs
    listed = {j["id"] for j in client.list(limit=500)["jobs"]}
    assert set(ids) <= listed
    # A job is counted when the server reaps its worker, which exits after recording its result: a moment
    # after the job's status reads succeeded.
    wait_for(lambda: all(metrics().get(key, 0) >= before.get(key, 0) + jobs for key in counted), timeout=60)
    samples = metrics()
    assert samples[("tfquant_jobs", (("status", "queued"),))] == 0
    assert samples[("tfquant_queue_length", ())] == 0
    grown = {key: samples[key] - before.get(key, 0) for key in counted}
    # Submissions are counted as they are answered; a job another test left may still end meanwhile.
    assert grown[counted[0]] == jobs and min(grown.values()) >= jobs, grown


def test_a_saved_model_folder_is_sent_as_the_zip_the_service_takes(client, files, model_files, tmp_path):
    """`tfquant jobs submit FOLDER` zips a SavedModel folder as the service takes it (the command converts the
    folder itself); a missing file or a data folder is one line before anything is sent, not a traceback."""
    import tfquant
    from tfquant.errors import DataError, ModelLoadError
    from tfquant.spec import ConvertSpec

    spec = ConvertSpec(calib_samples=120, ranges="minmax", diagnose=False, bench_runs=1)
    job = client.submit(model_files["saved_model"], calib=files["calib"], **spec.to_dict())
    state = client.wait(job, timeout=180, poll=0.3)
    assert state["status"] == "succeeded", state
    served = client.download(job, tmp_path / "served.tflite").read_bytes()
    assert served == tfquant.quantize(model_files["saved_model"], files["calib"], spec=spec).tflite
    with pytest.raises(ModelLoadError, match=r"nothere.h5: expected a .keras, .h5 or float32 .tflite file, or a "
                                             r"SavedModel folder, found no such file$"):
        client.submit(tmp_path / "nothere.h5", calib=files["calib"])
    with pytest.raises(DataError, match=r": expected an .npz, .npy or .csv file \(the service takes no image folder: "
                                        r"save the images as an .npz\), found a folder$"):
        client.submit(files["model"], calib=tmp_path)
