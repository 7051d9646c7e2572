"""The supervisor: one thread that owns every worker of the server and this replica's claims.

It keeps `validators` validator processes forked ahead of need by the server's zygote
(`zygote.py`: TensorFlow imported once) and passes submissions to them; it claims a queued job
from the store whenever its executor (`executor.py`: local processes by default, Ray actors with
`--executor ray`) has a worker ready, and turns a worker's death into the job's failure with the
reason, or into another attempt (at most `retries`). It renews the leases of the jobs it runs,
kills a worker whose job it no longer holds (cancelled through another replica, or its lease
lost), and queues again the jobs of any replica whose lease has passed.

At start it kills any worker still alive from this replica's earlier life (matched by host, PID
and start time) before their jobs are queued again; at stop it ends every worker and queues their
jobs again. Every few minutes it collects finished jobs past the retention and blobs no job
refers to.

Starting every process from this one long-lived thread matters: the zygote's parent-death signal
fires when the thread that started it exits, and the workers die with the zygote.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import processes
from .executor import Ended, Executor, WorkerSettings
from .local_executor import LocalExecutor
from .ray_executor import RayExecutor
from .store import FINAL, Store

log = logging.getLogger("tfquant.service")
POLL_SECONDS = 0.1
COLLECT_SECONDS = 600.0
VALIDATOR_REQUESTS = 200  # a validator is replaced after this many submissions
RENEW_SECONDS = 2.0  # at most; a quarter of the lease when that is shorter

EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


@dataclass
class Validation:
    request: dict
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Scheduler(threading.Thread):
    def __init__(self, store: Store, executor: Executor, *, settings: WorkerSettings, validators: int = 1,
                 retries: int = 0, lease_seconds: float = 30.0, retain_seconds: float = 30 * 86400.0,
                 on_finished: Optional[Callable[[str], None]] = None):
        super().__init__(name="tfquant-supervisor", daemon=True)
        self.store = store
        self.executor = executor
        self.settings = settings
        self.validators = validators
        self.retries = retries
        self.lease_seconds = lease_seconds
        self.retain_seconds = retain_seconds
        self.on_finished = on_finished
        self.host = socket.gethostname()
        self.launcher = executor.launcher  # the validators are forked by the executor's zygote too
        self._pending: collections.Counter[str] = collections.Counter()  # blobs of submissions in flight
        self._procs: list[processes.WorkerProcess] = []  # the validators
        self._queue: collections.deque[Validation] = collections.deque()
        self._lock = threading.RLock()
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._next_collect = 0.0
        self._next_renew = 0.0

    # --- what the API calls ---

    @property
    def running(self) -> dict[str, int]:
        """Job id -> worker PID for every job this replica runs now."""
        with self._lock:
            return self.executor.running()

    @property
    def problem(self) -> Optional[str]:
        """Why this replica cannot start workers now, or None."""
        return self.launcher.problem

    @property
    def idle(self) -> int:
        """Workers of this replica ready for a job now: it claims one as soon as a job is queued."""
        with self._lock:
            return self.executor.free()

    def begin(self) -> None:
        """Recover from an earlier run, then start supervising."""
        self.recover()
        self.start()

    def validate(self, request: dict) -> concurrent.futures.Future:
        """Queue a submission for a validator; the future gets `{"ok": True}` or `{"ok": False, "message": ...}`."""
        item = Validation(request)
        with self._lock:
            if self._halt.is_set():
                item.future.set_result(_refused("the server is stopping"))
            else:
                self._queue.append(item)
        self._wake.set()
        return item.future

    def hold(self, digest: str) -> None:
        """Keep a blob from the collector while its submission is being validated."""
        with self._lock:
            self._pending[digest] += 1

    def release(self, digest: str) -> None:
        with self._lock:
            self._pending[digest] -= 1
            if self._pending[digest] <= 0:
                del self._pending[digest]

    def held(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self.executor.cancel(job_id)

    def stop(self) -> None:
        """Stop supervising; end every worker; their jobs run again (here at the next start, or elsewhere)."""
        self._halt.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout=5)
        with self._lock:
            self.executor.stop()
            processes.stop_all(self._procs, each=_refuse_validation)
            self._procs.clear()
            self.launcher.stop()
            while self._queue:
                self._queue.popleft().future.set_result(_refused("the server is stopping"))
        self.store.requeue(reason="queued again after the server stopped", owner=self.settings.replica)

    def recover(self) -> None:
        """Kill workers that outlived this replica's earlier life, queue their jobs again, sweep temp folders.

        Only this replica's own jobs (same host and port) are queued again at once: those of other
        replicas are theirs until their lease passes.
        """
        for attempt in self.store.open_attempts(owner=self.settings.replica):
            if attempt.node in (None, self.host) and processes.kill_stale(attempt.pid, attempt.start_ticks):
                log.warning("killed worker %s of job %s left from before a restart", attempt.pid, attempt.job_id)
        self.store.requeue(reason="queued again after a restart", owner=self.settings.replica)
        self._sweep()

    def _sweep(self) -> None:
        """Delete temp folders no live worker uses: a job's while it does not run as that attempt, and
        this replica's validators'. Other replicas' validators may share the data folder."""
        mine = f"validate-{processes.folder_key(self.settings.replica)}-"
        for entry in self.store.tmp.iterdir():
            parts = entry.name.split("-")
            if parts[0] == "job" and len(parts) >= 4:
                job = self.store.get(parts[1])
                if job is not None and job.status == "running" and str(job.attempts) == parts[2]:
                    continue
            elif parts[0] == "validate" and not entry.name.startswith(mine):
                continue
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    # --- the loop ---

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                with self._lock:
                    self._supervise_validators()
                    for ended in self.executor.poll():
                        self._ended(ended)
                    if time.monotonic() >= self._next_renew:
                        self._leases()
                    self._assign()
                if time.monotonic() >= self._next_collect:
                    self._collect()
            except Exception:  # keep supervising whatever one poll hit
                log.exception("supervisor poll failed")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _assign(self) -> None:
        while self.executor.free() > 0:
            job = self.store.claim(owner=self.settings.replica, lease_seconds=self.lease_seconds)
            if job is None:
                return
            if not self.executor.launch(job):
                self.store.requeue([job.id], reason="queued again: its worker died before it started",
                                   owner=self.settings.replica)
                return  # the next poll reaps that worker and starts another

    def _ended(self, ended: Ended) -> None:
        if ended.retry:
            status = self.store.fail_attempt(ended.job_id, ended.attempt, ended.reason, retries=self.retries)
            if status == "queued":
                log.warning("job %s: %s; queued again", ended.job_id, ended.reason)
        else:
            self.store.finish(ended.job_id, "failed", error=ended.reason, attempt=ended.attempt)
        if self.on_finished is not None:
            self.on_finished(ended.job_id)

    def _leases(self) -> None:
        """Renew this replica's leases; stop the jobs it lost; queue again those of replicas gone silent."""
        self._next_renew = time.monotonic() + min(RENEW_SECONDS, self.lease_seconds / 4)
        held = self.store.renew(self.settings.replica, self.lease_seconds)
        for job_id in set(self.executor.running()) - held:
            job = self.store.get(job_id)
            if job is None or job.status not in FINAL or job.status == "cancelled":
                log.warning("job %s is no longer this replica's (%s): stopping its worker", job_id,
                            "gone" if job is None else job.status)
                self.executor.cancel(job_id)
        for attempt in self.store.expire():
            log.warning("job %s queued again: the lease of replica %s expired", attempt.job_id, attempt.owner)
            if attempt.node == self.host:
                processes.kill_stale(attempt.pid, attempt.start_ticks)

    def _supervise_validators(self) -> None:
        self._reap_validators()
        for proc, line in processes.read_lines(self._procs):
            if proc.validation is None:
                continue
            proc.validation.future.set_result(json.loads(line))
            proc.validation, proc.deadline = None, float("inf")
            proc.served += 1
            if proc.served >= VALIDATOR_REQUESTS:
                processes.kill_group(proc.pid)
        self._watch_validators()
        processes.fill(self._procs, self.validators, self.launcher, "validator", self._validator_options())
        for proc in self._procs:
            if not self._queue or not proc.ready or proc.busy or proc.process.poll() is not None:
                continue
            item = self._queue.popleft()
            if not processes.send(proc, item.request):
                item.future.set_result(_refused("the validating process died; try again"))
                continue
            proc.validation, proc.deadline = item, time.monotonic() + self.settings.limits.time_limit

    def _validator_options(self) -> list[str]:
        return ["--replica", self.settings.replica] + processes.settings_options(self.settings)

    def _watch_validators(self) -> None:
        limits = self.settings.limits
        for proc in self._procs:
            if proc.validation is None or proc.process.poll() is not None:
                continue
            reason = processes.over_limit(proc.pid, proc.deadline, limits)
            if reason is not None:
                proc.validation.future.set_result(_refused(f"validation stopped: {reason}"))
                proc.validation = None
                processes.kill_group(proc.pid)

    def _reap_validators(self) -> None:
        for proc in list(self._procs):
            code = proc.process.poll()
            if code is None:
                continue
            self._procs.remove(proc)
            processes.close_pipes(proc)
            if proc.validation is not None:
                proc.validation.future.set_result(_refused(f"the validating process {processes.death(code)}"))

    def _collect(self) -> None:
        self._next_collect = time.monotonic() + COLLECT_SECONDS
        removed = self.store.collect(retain_seconds=self.retain_seconds, keep=self.held())
        if any(removed.values()):
            log.info("collected %d finished jobs and %d unreferenced blobs", removed["jobs"], removed["blobs"])


def _refuse_validation(proc) -> None:
    if proc.validation is not None:
        proc.validation.future.set_result(_refused("the server stopped while validating"))


def _refused(message: str) -> dict:
    return {"ok": False, "error": "unavailable", "message": message}
