"""Models of every kind through the converter service: the same fully integer, in-budget files as the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from zoo_cache import trained

from tfquant.client import Client

from serving import TOKEN, Server


@pytest.fixture(scope="module")
def server(tmp_path_factory, files):
    """A server that takes the larger zoo models (the shared one caps uploads at 4 MB)."""
    running = Server(tmp_path_factory.mktemp("zoo-service") / "data", files["token"], "--workers", "2", upload_mb="64")
    yield running
    running.stop()


# One of each kind of input, output and upload: token ids (the Transformer), two inputs, two outputs, a
# table as CSV, an embedding, a 13 MB CNN (past the shared server's cap) and a tf_keras recurrent model.
# tests/test_zoo.py converts every kind in both Keras versions through the same pipeline.
KINDS = [("transformer", 3), ("two_inputs", 3), ("two_outputs", 3), ("tabular_regression", 3), ("l2_embedding", 3),
         ("mobilenet_v3_small", 3), ("stacked_lstm", 2)]


def _as_csv(npz, target):
    """A table of one (N, F) input and its labels, as a spreadsheet would save it."""
    with np.load(npz) as data:
        (name,) = [k for k in data.files if k != "y"]
        labels = [data["y"].reshape(len(data["y"]), -1)] if "y" in data.files else []
        columns = np.concatenate([data[name], *labels], axis=1)
        header = [f"{name}_{i}" for i in range(data[name].shape[1])] + ["y"] * len(labels)
    np.savetxt(target, columns, delimiter=",", header=",".join(header), comments="", fmt="%.9g")
    return target


def test_every_kind_converts_through_the_service(server, tmp_path):
    models = {f"{name}-k{version}": trained(name, version) for name, version in KINDS}
    data = {key: (m.calib, m.test) for key, m in models.items()}
    data["tabular_regression-k3"] = tuple(_as_csv(path, tmp_path / f"{part}.csv")  # the table as CSV uploads
                                          for part, path in zip(("calib", "test"), data["tabular_regression-k3"]))
    with Client(server.url, TOKEN) as client:
        # The file and its budgets are what is checked: no per-tensor diagnosis, one latency run.
        jobs = {key: client.submit(m.path, calib=data[key][0], eval=data[key][1], max_drop=0.01, diagnose=False,
                                   bench_runs=1)
                for key, m in models.items()}
        states = {key: client.wait(job, timeout=600, poll=0.5) for key, job in jobs.items()}
        failed = {key: s["error"] for key, s in states.items() if s["status"] != "succeeded"}
        assert failed == {}
        for key, job in jobs.items():
            report = json.loads(client.download(job, tmp_path / f"{key}.json", artifact="report.json").read_text())
            assert report["quantized"]["fully_integer"] is True, key
            assert all(o["within_budget"] for o in report["outputs"]), (key, report["outputs"])
            assert report["model"] == "model.keras"
    tasks = {key: {o["task"] for o in json.loads((tmp_path / f"{key}.json").read_text())["outputs"]} for key in jobs}
    assert tasks["two_outputs-k3"] == {"classification", "regression"}
    assert tasks["l2_embedding-k3"] == {"embedding"} and tasks["tabular_regression-k3"] == {"regression"}
    tabular = json.loads((tmp_path / "tabular_regression-k3.json").read_text())
    assert tabular["eval_samples"] == 359 and tabular["outputs"][0]["float"]["r2"] > 0.85
