"""Sweeps side by side (`parallel`): the ladder's k search and the per-op sensitivity sweep decide as the
serial run does, in worker processes and as Ray tasks."""

from __future__ import annotations

import itertools
import random

import pytest

import tfquant
from tfquant.ladder import _search_k
from tfquant.types import Candidate, Recipe


def _candidate(k: int, accepted: bool) -> Candidate:
    return Candidate(name=f"k={k}", recipe=Recipe(), accuracy=None, drop=None, tflite_bytes=1, fully_integer=True,
                     float_ops=k, ops=10, latency_p50_ms=1.0, seconds=0.0, accepted=accepted)


def _search(accepts: dict[int, bool], k_max: int, width: int) -> tuple[Candidate | None, list[int], set[int]]:
    """The search's answer, the k values it decided on (in order), and every k it measured."""
    decided, measured = [], set()

    def try_k(k):
        decided.append(k)
        measured.add(k)
        return _candidate(k, accepts[k])

    def ahead(ks):
        assert len(ks) <= width
        measured.update(ks)

    found = _search_k(try_k, k_max, ahead=ahead if width > 1 else None, width=width)
    return found, decided, measured


@pytest.mark.parametrize("width", [2, 3, 4, 8])
def test_the_k_search_decides_as_the_serial_search_for_any_acceptance(width):
    """Acceptance need not grow with k (keeping one more op float can make things worse): every pattern
    of small k_max, and random ones of larger, give the serial answer through the same decisions."""
    rng = random.Random(width)
    patterns = [(k_max, dict(zip(range(1, k_max + 1), bits)))
                for k_max in range(1, 7) for bits in itertools.product([False, True], repeat=k_max)]
    patterns += [(k_max, {k: rng.random() < 0.3 for k in range(1, k_max + 1)}) for k_max in (17, 33, 64) for _ in range(40)]
    for k_max, accepts in patterns:
        serial, serial_path, _ = _search(accepts, k_max, 1)
        fanned, fanned_path, measured = _search(accepts, k_max, width)
        assert (fanned and fanned.name) == (serial and serial.name), (k_max, accepts)
        assert fanned_path == serial_path
        assert set(serial_path) <= measured


def test_a_parallel_ladder_chooses_the_serial_file(laddered, mismatched, train_npz, test_npz):
    serial, _ = laddered
    fanned = tfquant.quantize(mismatched, train_npz, eval_data=test_npz, max_drop=0.01, fallback="auto", bench_runs=2,
                              split_joins=False, parallel=3)
    assert fanned.tflite == serial.tflite
    assert [(c.name, c.accuracy, c.accepted, c.tflite_bytes) for c in fanned.report.ladder] == \
        [(c.name, c.accuracy, c.accepted, c.tflite_bytes) for c in serial.report.ladder]
    assert fanned.report.recipe == serial.report.recipe
    # The sweep measured every suspect the serial run did, to the same error.
    assert [(e.tensor, e.output_error) for e in fanned.report.diagnostics] == \
        [(e.tensor, e.output_error) for e in serial.report.diagnostics]
    assert sum(e.output_error is not None for e in fanned.report.diagnostics) >= 2


@pytest.fixture(scope="module")
def serial_diagnosis(mismatched, train_npz):
    """The sensitivity sweep run serially, in this process: what every fanned-out sweep must give."""
    return tfquant.diagnose(mismatched, train_npz, split_joins=False)


def test_the_sensitivity_sweep_as_ray_tasks_gives_the_serial_numbers(serial_diagnosis, mismatched, train_npz):
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        from tfquant.fanout import on_ray

        assert on_ray()
        fanned = tfquant.diagnose(mismatched, train_npz, split_joins=False, parallel=2)
    finally:
        ray.shutdown()
    measured = [(e.tensor, e.output_error) for e in serial_diagnosis.errors if e.output_error is not None]
    assert len(measured) >= 2
    assert [(e.tensor, e.output_error) for e in fanned.errors] == \
        [(e.tensor, e.output_error) for e in serial_diagnosis.errors]


def test_the_command_sweeps_in_worker_processes(serial_diagnosis, mismatched, train_npz, tmp_path):
    """`python -m tfquant diagnose --parallel 2`, as a user runs it: worker processes spawned from the
    command's watched child give the serial numbers, and stderr stays empty with --json."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "tfquant", "diagnose", str(mismatched), "--calib", str(train_npz),
                           "--no-split-joins", "--parallel", "2", "--json"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    measured = [(e.tensor, e.output_error) for e in serial_diagnosis.errors]
    assert sum(error is not None for _, error in measured) >= 2
    assert [(e["tensor"], e["output_error"]) for e in json.loads(done.stdout)["errors"]] == measured
