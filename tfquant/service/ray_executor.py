"""The executor for more than one machine: jobs in Ray actors (`--executor ray`, `tfquant[ray]`).

Ray, not tfquant, decides where a job runs: each of the `workers` slots is an actor that asks for
the job's CPU (`threads`, else 1) and memory (`--memory-mb`) as Ray resources, so Ray places it
on a node with room, or keeps it pending until one has. Like the local executor, a slot is
started ahead of need (TensorFlow imported in `__init__`), runs one job and is then killed and
replaced: a crash, a leak or a kill ends one job. The actor runs `worker.run_job`, the function a
local worker runs, which reads the inputs from and writes the artifacts to the data folder and
records everything in the store: so `--data-dir` must be a path every node mounts and `--store`
a database every node reaches (PostgreSQL, when there is more than one node).

Limits and deaths, as the local executor has them: the time limit is kept here (the actor is
killed at the deadline), the memory limit by the actor itself (it watches its own resident
memory; Ray's `memory` resource only places the actor). Cancel is `ray.kill`, which kills the
process. An actor whose process or node dies fails its job with Ray's reason, or gives it
another attempt under `--retries`. Actors belong to this server's Ray driver, so Ray kills them
when the server goes, `kill -9` included.

Without `--ray-address`, `ray.init()` starts a local Ray on this machine (loopback only).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import BackendError, naming, one_line, problem
from . import processes, worker
from .executor import Ended, Executor
from .store import Job
from .stores import open_store

log = logging.getLogger("tfquant.service")
START_BACKOFF_SECONDS = 5.0  # after an actor failed to start, before the next one is asked for
WATCH_SECONDS = 0.1


class JobActor:
    """One slot: a Ray worker process that imports TensorFlow, then runs one job."""

    def __init__(self, data_dir: str, store_location: str, *, safe_mode: bool, threads: Optional[int],
                 expanded_bytes: Optional[int], memory_mb: float):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            os.nice(processes.WORKER_NICENESS)  # on a node that also serves the API, the API comes first
        except OSError:  # pragma: no cover
            pass
        self.store = open_store(data_dir, store_location)
        self.safe_mode, self.threads, self.expanded_bytes, self.memory_mb = safe_mode, threads, expanded_bytes, memory_mb
        worker.warm_up()

    def ready(self) -> tuple[int, Optional[int], str]:
        """(PID, kernel start time, host): what the store records of the attempt's worker."""
        return os.getpid(), processes.start_ticks(os.getpid()), socket.gethostname()

    def run(self, job_id: str, attempt: int) -> None:
        worker.log_to(self.store, job_id)
        threading.Thread(target=self._watch_memory, args=(job_id, attempt), daemon=True).start()
        with naming("service"):
            worker.run_job(self.store, job_id, attempt, safe_mode=self.safe_mode, threads=self.threads,
                           expanded_bytes=self.expanded_bytes)

    def _watch_memory(self, job_id: str, attempt: int) -> None:
        while True:
            rss = processes.rss_mb(os.getpid())
            if rss > self.memory_mb:
                self.store.finish(job_id, "failed", attempt=attempt,
                                  error=f"memory limit of {self.memory_mb:g} MB exceeded ({rss:.0f} MB resident)")
                os._exit(1)
            time.sleep(WATCH_SECONDS)


@dataclass
class _Slot:
    actor: Any
    starting: Any  # the ObjectRef of `ready()` until it answers
    worker: Optional[tuple[int, Optional[int], str]] = None
    job: Optional[tuple[str, int]] = None
    running: Any = None  # the ObjectRef of `run()`
    deadline: float = float("inf")


class RayExecutor(Executor):
    def __init__(self, store, settings, launcher):
        super().__init__(store, settings, launcher)
        try:
            import ray
        except ImportError as exc:
            raise BackendError(f"--executor ray needs the ray extra: pip install 'tfquant[ray]' ({exc})") from None
        self.ray = ray
        _connect(ray, settings.address)
        limits = settings.limits
        self._actor = ray.remote(JobActor).options(
            num_cpus=settings.threads or 1, memory=int(limits.memory_mb * 2**20), max_restarts=0, max_task_retries=0)
        self._arguments = dict(data_dir=str(store.dir), store_location=store.location,
                               safe_mode=not settings.allow_unsafe_models, threads=settings.threads,
                               expanded_bytes=limits.expanded_bytes, memory_mb=limits.memory_mb)
        self._slots: list[_Slot] = []
        self._not_before = 0.0

    def free(self) -> int:
        return sum(s.worker is not None and s.job is None for s in self._slots)

    def launch(self, job: Job) -> bool:
        slot = next(s for s in self._slots if s.worker is not None and s.job is None)
        pid, ticks, node = slot.worker
        slot.job = (job.id, job.attempts)
        self.store.set_worker(job.id, job.attempts, pid, ticks, node=node)
        slot.deadline = time.monotonic() + self.settings.limits.time_limit
        slot.running = slot.actor.run.remote(job.id, job.attempts)
        return True

    def poll(self) -> list[Ended]:
        ray = self.ray
        for slot in [s for s in self._slots if s.worker is None]:
            if not ray.wait([slot.starting], timeout=0)[0]:
                continue  # still importing, or waiting for Ray to find room for it
            try:
                slot.worker = ray.get(slot.starting)
            except ray.exceptions.RayError as exc:
                log.error("a Ray worker failed to start: %s", _detail(exc))
                self._drop(slot)
                self._not_before = time.monotonic() + START_BACKOFF_SECONDS
        ended = []
        busy = [s for s in self._slots if s.job is not None]
        done = set(ray.wait([s.running for s in busy], num_returns=len(busy), timeout=0)[0]) if busy else set()
        for slot in busy:
            if slot.running in done:
                ended.append(self._result(slot))
            elif time.monotonic() > slot.deadline:
                ended.append(Ended(*slot.job, reason=f"time limit of {self.settings.limits.time_limit:g} s exceeded"))
            else:
                continue
            self._drop(slot)
        while len(self._slots) < self.settings.workers and time.monotonic() >= self._not_before:
            actor = self._actor.remote(**self._arguments)
            self._slots.append(_Slot(actor, actor.ready.remote()))
        return ended

    def _result(self, slot: _Slot) -> Ended:
        ray = self.ray
        try:
            ray.get(slot.running)
        except ray.exceptions.RayActorError as exc:
            pid, _, node = slot.worker
            return Ended(*slot.job, reason=f"the Ray worker process {pid} on {node} died: {_detail(exc)}", retry=True)
        except ray.exceptions.RayError as exc:
            return Ended(*slot.job, reason=f"internal error in the Ray worker: {_detail(exc)}")
        # `run` returned, so the worker recorded the result (unless the job was no longer its own).
        return Ended(*slot.job, reason="the worker exited without recording a result")

    def _drop(self, slot: _Slot) -> None:
        self.ray.kill(slot.actor, no_restart=True)
        self._slots.remove(slot)

    def running(self) -> dict[str, int]:
        return {s.job[0]: s.worker[0] for s in self._slots if s.job is not None}

    def cancel(self, job_id: str) -> None:
        for slot in self._slots:
            if slot.job is not None and slot.job[0] == job_id:
                self.ray.kill(slot.actor, no_restart=True)  # ends the process: Ray's forced cancel of an actor

    def stop(self) -> None:
        for slot in self._slots:
            self.ray.kill(slot.actor, no_restart=True)
        self._slots.clear()
        self.ray.shutdown()


def _connect(ray, address: Optional[str]) -> None:
    """Join the cluster at `address`, or start a local Ray on loopback; a one-line error otherwise."""
    where = f"--ray-address {address}" if address else "a local Ray (ray.init)"
    if address and address.count(":") == 1 and "://" not in address:
        host, port = address.split(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise BackendError(problem(where, "a running Ray cluster (ray start --head)",
                                       f"{type(exc).__name__}: {exc}")) from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a service does not report its usage anywhere
    if not address:
        # A Ray that no other machine joins: its processes talk over loopback, not the host's address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        # "local": a new Ray of this server's own, never a cluster that `ray start` left on this machine.
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 ignore_reinit_error=True)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        raise BackendError(problem(where, "a Ray cluster to join", _detail(exc))) from None


def _detail(exc: BaseException) -> str:
    """Ray's reason on one line: the exit detail of a dead worker if it gives one, without Ray's
    list of possible causes (a killed worker's is "exits with a connection error ... End of file")."""
    text = one_line(exc)
    for marker in ("Worker exit detail: ", "The actor is dead because "):
        if marker in text:
            text = text[text.index(marker) + len(marker):]
            break
    text = text.split(" Some common causes")[0]
    if "connection error" in text and "End of file" in text:
        text += " (killed from outside, out of memory, or a crash in native code)"
    return text[:300]
