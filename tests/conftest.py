"""Shared fixtures: the shipped digits data and small seeded models trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

# One TensorFlow thread per test process (before TensorFlow is imported; the commands the tests start
# inherit it): `make test` runs one worker per core, and two workers each spinning two threads cost
# about a sixth more time than they save.
for _variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np
import pytest

import tfquant
from checks import counted
from tfquant import zoo
from tfquant._keras import keras

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

# The order in which `make test` (with --no-loadscope-reorder) hands test files to its workers: the
# longest first, so that no worker is left alone with a long file at the end, and those that start
# servers, Ray or PostgreSQL and their child processes (marked *) apart, so that they compete for the
# cores as little as possible (the scaling tests took 104 s alone and up to 260 s beside the README's
# own Ray and PostgreSQL block). xdist's own order (most tests first) left the service files, which have
# few tests each, to run side by side at the end. Every other file follows in collection order.
FIRST = ["test_readme.py*", "optimize/test_qat.py", "test_models.py", "test_zoo_qat.py", "test_zoo.py",
         "service/test_hardening.py*", "test_legalize.py", "test_recurrent.py", "service/test_scale.py*",
         "test_pipeline.py", "test_report_html.py", "service/test_service.py*", "test_int16x8.py",
         "optimize/test_cluster.py", "test_fanout.py*", "service/test_zoo_jobs.py*"]


def pytest_collection_modifyitems(config, items):
    rank = {name.rstrip("*"): i for i, name in enumerate(FIRST)}
    tests = ROOT / "tests"
    missing = [name for name in rank if not (tests / name).is_file()]
    if missing:  # a renamed or removed file would silently lose its place
        raise pytest.UsageError(f"tests/conftest.py FIRST names no such test file: {', '.join(missing)}")
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(FIRST)))  # stable


@pytest.fixture(scope="session")
def digits():
    with np.load(DATA / "digits_train.npz") as train, np.load(DATA / "digits_test.npz") as test:
        return {"x": train["x"], "y": train["y"], "x_test": test["x"], "y_test": test["y"]}


@pytest.fixture(scope="session")
def train_npz() -> Path:
    return DATA / "digits_train.npz"


@pytest.fixture(scope="session")
def test_npz() -> Path:
    return DATA / "digits_test.npz"


@pytest.fixture(scope="session")
def digits_model(digits) -> keras.Model:
    model = zoo.digits_cnn(seed=0)
    zoo.fit_classifier(model, digits["x"], digits["y"], epochs=6, seed=0)
    return model


@pytest.fixture(scope="session")
def rows_gru(digits) -> keras.Model:
    """A GRU over the digits' 8 rows of 8 pixels (tf_keras), unrolled over 8 steps when exported."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8), name="rows")
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.GRU(16)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(digits["x"][..., 0], digits["y"], epochs=6, verbose=0)
    return model


@pytest.fixture(scope="session")
def model_files(digits_model, tmp_path_factory) -> dict[str, Path]:
    """The trained digits CNN saved in every format tfquant reads."""
    folder = tmp_path_factory.mktemp("models")
    paths = {"keras": folder / "digits.keras", "h5": folder / "digits.h5", "saved_model": folder / "digits_savedmodel"}
    digits_model.save(paths["keras"])
    digits_model.save(paths["h5"])
    digits_model.save(paths["saved_model"], save_format="tf")
    return paths


@pytest.fixture(scope="session")
def int8_result(model_files, train_npz, test_npz):
    import tfquant

    return tfquant.quantize(model_files["keras"], train_npz, eval_data=test_npz, bench_runs=10)


@pytest.fixture(scope="session")
def tflite_files(int8_result, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tflite")
    paths = {"int8": folder / "digits_int8.tflite", "float32": folder / "digits_float32.tflite"}
    paths["int8"].write_bytes(int8_result.tflite)
    paths["float32"].write_bytes(int8_result.float_tflite)
    return paths


@pytest.fixture(scope="session")
def mismatched(digits, tmp_path_factory):
    """A concatenation of a 0..1 branch with a 0..~2000 branch: full int8 loses the small one."""
    model = zoo.mismatched_concat()
    zoo.fit_classifier(model, digits["x"], digits["y"], epochs=20)
    path = tmp_path_factory.mktemp("mismatched") / "mismatched.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def plain_mismatched(mismatched, train_npz, test_npz):
    """Converted with its join as it is: what int8 does to a mismatched concatenation."""
    return tfquant.quantize(mismatched, train_npz, eval_data=test_npz, bench_runs=2, split_joins=False)


@pytest.fixture(scope="session")
def laddered(mismatched, train_npz, test_npz):
    with counted() as calls:
        result = tfquant.quantize(mismatched, train_npz, eval_data=test_npz, max_drop=0.01, fallback="auto", bench_runs=2,
                                  split_joins=False)
    return result, calls


@pytest.fixture(scope="session")
def pruned(digits_model, train_npz, test_npz, tmp_path_factory):
    logs = tmp_path_factory.mktemp("tensorboard")
    from tfquant.optimize.prune import prune

    result = prune(digits_model, train_npz, sparsity=0.8, epochs=4, eval_data=test_npz, bench_runs=2, log_dir=str(logs))
    return result, logs
