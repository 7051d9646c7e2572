"""Fixtures of the service tests: the digits model and data as uploads, and a running server."""

from __future__ import annotations

import numpy as np
import pytest
from serving import TOKEN, Server

from tfquant.client import Client


@pytest.fixture(scope="session")
def files(tmp_path_factory, digits_model, digits):
    folder = tmp_path_factory.mktemp("service-files")
    paths = {"model": folder / "digits.keras", "calib": folder / "calib.npz", "eval": folder / "eval.npz",
             "train": folder / "train.npz"}
    digits_model.save(paths["model"])
    np.savez(paths["calib"], x=digits["x"][:300])
    np.savez(paths["eval"], x=digits["x_test"], y=digits["y_test"])
    np.savez(paths["train"], x=digits["x"], y=digits["y"])
    (folder / "token").write_text(TOKEN + "\n")
    paths["token"] = folder / "token"
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory, files):
    running = Server(tmp_path_factory.mktemp("service") / "data", files["token"], "--workers", "2",
                     tmp_dir=tmp_path_factory.mktemp("service-tmp"))
    yield running
    running.stop()


@pytest.fixture()
def client(server):
    with Client(server.url, TOKEN) as c:
        yield c


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of this test session (see postgres.py)."""
    from postgres import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()
