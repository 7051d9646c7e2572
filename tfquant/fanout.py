"""Independent measurements of one conversion, run side by side (`parallel` > 1).

The ladder's int8 candidates and the per-op sensitivity sweep of the diagnostics are many
measurements of one calibration, each independent of the others. `fan_out` runs them `parallel`
at a time and returns their results in the order of the items, so a caller that decides from
them decides exactly as the serial run does. What every item needs (the calibration's bytes, the
evaluation data) is `shared`, sent once to each worker process or put once in Ray's object store,
never with each item:

- in a job that runs on Ray (`tfquant serve --executor ray`), as Ray tasks, which the cluster
  places wherever it has a free CPU, while the job's own process measures too;
- anywhere else, in worker processes started for the sweep. They are forked from
  multiprocessing's fork server, a fresh interpreter that imports TensorFlow once and never runs
  it (`_sweep_preload`), not from this process: TensorFlow's threads here do not survive a fork.
  Later sweeps of this process fork from the same server, so no worker imports TensorFlow itself.

The function, `shared` and the items travel by pickle: a module-level function and plain data.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence, TypeVar

Item = TypeVar("Item")
Shared = TypeVar("Shared")
Result = TypeVar("Result")

log = logging.getLogger(__name__)


def fan_out(function: Callable[[Shared, Item], Result], shared: Shared, items: Sequence[Item], *,
            parallel: int = 1) -> list[Result]:
    """`[function(shared, item) for item in items]`, `parallel` at a time; results in the items' order."""
    items = list(items)
    if parallel <= 1 or len(items) <= 1:
        return [function(shared, item) for item in items]
    if on_ray():
        return _on_ray(function, shared, items, parallel)
    return _on_processes(function, shared, items, parallel)


def on_ray() -> bool:
    """Whether this process is connected to a Ray cluster (a job run by the Ray executor)."""
    ray = sys.modules.get("ray")  # never imported here for the question alone
    return ray is not None and ray.is_initialized()


STALL_SECONDS = 60.0  # no Ray task done for this long and no CPU free: the rest runs here


def _on_ray(function, shared, items: list, parallel: int) -> list:
    """Up to `parallel - 1` items as Ray tasks of one CPU each, the others here, in the caller's process.

    A job on Ray holds its actor's CPUs while it waits, and Ray does not lend them to the tasks it
    waits for: on a cluster whose CPUs are all held by such jobs, the tasks would never start. So
    this process works through the items too (the sweep always moves on), and tasks that make no
    progress while no CPU is free are cancelled and measured here.
    """
    import time

    import ray

    task = ray.remote(num_cpus=1, max_retries=1)(function)
    shared_ref = ray.put(shared)  # once; each task gets the object, not a copy in its arguments
    results: dict[int, object] = {}
    queue = list(range(len(items)))
    pending: dict = {}  # Ray object ref -> item index

    def collect(timeout: float) -> int:
        if not pending:
            return 0
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
        return len(done)

    remote = 0
    while queue:
        while len(queue) > 1 and len(pending) < parallel - 1:
            index = queue.pop()  # the tasks take the last items, this process the first
            pending[task.remote(shared_ref, items[index])] = index
            remote += 1
        index = queue.pop(0)
        results[index] = function(shared, items[index])
        collect(0)
    stalled = time.monotonic()
    while pending:
        if collect(1.0):
            stalled = time.monotonic()
        elif time.monotonic() - stalled > STALL_SECONDS and ray.available_resources().get("CPU", 0) < 1:
            log.info("no CPU free in the Ray cluster for %d measurement(s): measured in the job's process",
                     len(pending))
            for ref, index in list(pending.items()):
                ray.cancel(ref, force=True)
                results[index] = function(shared, items[index])
            pending.clear()
    log.info("%d measurements, %d of them as Ray tasks, up to %d at a time", len(items), remote, parallel)
    return [results[index] for index in range(len(items))]


def _on_processes(function, shared, items: list, parallel: int) -> list:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = min(parallel, len(items))
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tfquant._sweep_preload"])  # no effect once this process's fork server runs
    else:  # pragma: no cover - Windows: each worker imports TensorFlow itself
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_start_worker, initargs=(function, shared)) as pool:
        results = list(pool.map(_call, items))
    log.info("%d measurements in %d worker processes", len(items), workers)
    return results


_WORKER: tuple = ()  # in a sweep worker: (function, shared), sent once when it starts


def _start_worker(function, shared) -> None:
    """A sweep worker: TensorFlow's and the interpreter's notices stay out of the user's terminal."""
    import os

    global _WORKER
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    _WORKER = (function, shared)


def _call(item):
    function, shared = _WORKER
    return function(shared, item)
