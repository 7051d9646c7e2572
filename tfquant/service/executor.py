"""Where a claimed job runs: the seam between the supervisor and the workers.

The supervisor (`scheduler.py`) claims a job from the store only when its executor has a worker
ready, hands it over, and learns when the worker is done. Two executors implement this:

- `local_executor.LocalExecutor` (the default): worker processes of this host, started ahead of
  need, one process per job;
- `ray_executor.RayExecutor` (`--executor ray`): the same worker function in Ray actors placed by
  Ray on any node of a cluster, with the job's CPU and memory as Ray resources.

Both run `worker.run_job`, which records the job's progress, result and artifacts in the store
itself, so a job's messages and files do not depend on where it ran. An executor reports only
what the worker could not: that it died, or was stopped at a limit.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

from .store import Job, Store


@dataclass(frozen=True)
class Limits:
    time_limit: float = 3600.0
    memory_mb: float = 8192.0
    expanded_bytes: Optional[int] = None


@dataclass(frozen=True)
class WorkerSettings:
    """What every job worker of a server gets, whichever executor starts it."""

    workers: int = 2
    limits: Limits = Limits()
    allow_unsafe_models: bool = False
    threads: Optional[int] = None
    replica: str = ""  # the owner name of this server's claims (host:port)
    address: Optional[str] = None  # the cluster to run on (Ray); None: this machine


@dataclass(frozen=True)
class Ended:
    """A job whose worker is gone, and the job's error if the worker did not record a result.

    `retry` says whether the job could succeed on another worker (the process or its node died)
    or not (a limit was exceeded). A worker that recorded its result made `reason` moot: the store
    keeps the first final state of an attempt.
    """

    job_id: str
    attempt: int
    reason: str
    retry: bool = False


class Executor(ABC):
    def __init__(self, store: Store, settings: WorkerSettings, launcher):
        self.store, self.settings = store, settings
        self.host = socket.gethostname()
        self.launcher = launcher  # the server's zygote (`zygote.Launcher`): it forks this host's worker processes

    @abstractmethod
    def free(self) -> int:
        """Workers ready for a job now (started ahead of need, idle)."""

    @abstractmethod
    def launch(self, job: Job) -> bool:
        """Hand a claimed job to a ready worker; False if that worker died before it took the job."""

    @abstractmethod
    def poll(self) -> list[Ended]:
        """Watch the workers (limits, deaths), start new ones ahead of need; returns jobs whose worker ended."""

    @abstractmethod
    def running(self) -> dict[str, int]:
        """Job id -> worker PID for every job running now."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Kill the worker of this job, if this executor runs it."""

    @abstractmethod
    def stop(self) -> None:
        """Kill every worker."""
