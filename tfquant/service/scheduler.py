"""The supervisor: one thread that owns every worker process of the server.

It keeps `workers` job workers and `validators` validators started ahead of need (TensorFlow
already imported), hands each queued job to a ready job worker (one process per job, never more
than `workers` at once), passes submissions to validators, holds both to the time and memory
limits, and turns a worker's death into its job's failure with the reason. At start it kills any
worker still alive from before a crash (matched by PID and start time) before the job is queued
again; at stop it ends every worker and queues their jobs again. Every few minutes it collects
finished jobs past the retention and blobs no job refers to.

Starting every process from this one long-lived thread matters: a worker's parent-death signal
fires when the thread that started it exits.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import processes
from .store import Store
from .worker import READY

log = logging.getLogger("tfquant.service")
POLL_SECONDS = 0.1
COLLECT_SECONDS = 600.0
VALIDATOR_REQUESTS = 200  # a validator is replaced after this many submissions


@dataclass
class Limits:
    time_limit: float = 3600.0
    memory_mb: float = 8192.0
    expanded_bytes: Optional[int] = None


@dataclass
class _Process:
    role: str  # "job" or "validator"
    process: subprocess.Popen
    ticks: Optional[int]
    log_path: str
    ready: bool = False
    job: Optional[tuple[str, int]] = None  # (job id, attempt) once handed a job
    validation: Optional["Validation"] = None
    deadline: float = float("inf")
    served: int = 0
    buffer: bytes = b""

    @property
    def busy(self) -> bool:
        return self.job is not None or self.validation is not None


@dataclass
class Validation:
    request: dict
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Scheduler(threading.Thread):
    def __init__(self, store: Store, *, workers: int = 2, validators: int = 1, limits: Limits = Limits(),
                 allow_unsafe_models: bool = False, threads: Optional[int] = None,
                 retain_seconds: float = 30 * 86400.0, on_finished: Optional[Callable[[str], None]] = None):
        super().__init__(name="tfquant-supervisor", daemon=True)
        self.store = store
        self.workers = workers
        self.validators = validators
        self.limits = limits
        self.allow_unsafe_models = allow_unsafe_models
        self.threads = threads
        self.retain_seconds = retain_seconds
        self.on_finished = on_finished
        self._pending: collections.Counter[str] = collections.Counter()  # blobs of submissions in flight
        self._procs: list[_Process] = []
        self._queue: collections.deque[Validation] = collections.deque()
        self._lock = threading.RLock()
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._next_collect = 0.0

    # --- what the API calls ---

    @property
    def running(self) -> dict[str, int]:
        """Job id -> worker PID for every job running now."""
        with self._lock:
            return {p.job[0]: p.process.pid for p in self._procs if p.job is not None}

    def begin(self) -> None:
        """Recover from an earlier run, then start supervising."""
        self.recover()
        self.start()

    def validate(self, request: dict) -> concurrent.futures.Future:
        """Queue a submission for a validator; the future gets `{"ok": True}` or `{"ok": False, "message": ...}`."""
        item = Validation(request)
        with self._lock:
            if self._halt.is_set():
                item.future.set_result({"ok": False, "error": "unavailable", "message": "the server is stopping"})
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
            for proc in self._procs:
                if proc.job is not None and proc.job[0] == job_id:
                    processes.kill_group(proc.process.pid)

    def stop(self) -> None:
        """Stop supervising; end every worker; their jobs run again at the next start."""
        self._halt.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout=5)
        with self._lock:
            for proc in self._procs:
                processes.kill_group(proc.process.pid)
            for proc in self._procs:
                try:
                    proc.process.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait
                    pass
                if proc.validation is not None:
                    proc.validation.future.set_result(_refused("the server stopped while validating"))
            self._procs.clear()
            while self._queue:
                self._queue.popleft().future.set_result(_refused("the server is stopping"))
        self.store.requeue(reason="queued again after the server stopped")

    def recover(self) -> None:
        """Kill workers that outlived an earlier server, queue their jobs again, sweep their temp folders."""
        for attempt in self.store.open_attempts():
            if processes.kill_stale(attempt.pid, attempt.start_ticks):
                log.warning("killed worker %s of job %s left from before a restart", attempt.pid, attempt.job_id)
        self.store.requeue(reason="queued again after a restart")
        for stale in self.store.tmp.iterdir():
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)

    # --- the loop ---

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                with self._lock:
                    self._reap()
                    self._read()
                    self._watch()
                    self._spawn()
                    self._assign()
                if time.monotonic() >= self._next_collect:
                    self._collect()
            except Exception:  # keep supervising whatever one poll hit
                log.exception("supervisor poll failed")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _spawn(self) -> None:
        for role, wanted in (("job", self.workers), ("validator", self.validators)):
            while sum(p.role == role for p in self._procs) < wanted:
                self._procs.append(self._start(role))

    def _start(self, role: str) -> _Process:
        command = [sys.executable, "-m", "tfquant.service.worker", role, str(self.store.dir), str(os.getpid())]
        if self.allow_unsafe_models and role == "job":
            command.append("--allow-unsafe-models")
        if self.threads:
            command += ["--threads", str(self.threads)]
        if self.limits.expanded_bytes:
            command += ["--expanded-bytes", str(self.limits.expanded_bytes)]
        log_path = str(self.store.logs / f"{role}-workers.log")
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                       start_new_session=True, cwd=str(self.store.dir))
        os.set_blocking(process.stdout.fileno(), False)
        return _Process(role, process, processes.start_ticks(process.pid), log_path)

    def _read(self) -> None:
        """Collect `ready` lines and validators' answers without blocking."""
        readable = [p for p in self._procs if p.process.poll() is None]
        if not readable:
            return
        ready, _, _ = select.select([p.process.stdout for p in readable], [], [], 0)
        for proc in readable:
            if proc.process.stdout not in ready:
                continue
            try:
                chunk = os.read(proc.process.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                continue
            proc.buffer += chunk
            while b"\n" in proc.buffer:
                line, proc.buffer = proc.buffer.split(b"\n", 1)
                if line + b"\n" == READY:
                    proc.ready = True
                elif proc.validation is not None:
                    proc.validation.future.set_result(json.loads(line))
                    proc.validation, proc.deadline = None, float("inf")
                    proc.served += 1
                    if proc.served >= VALIDATOR_REQUESTS:
                        processes.kill_group(proc.process.pid)

    def _assign(self) -> None:
        for proc in self._procs:
            if not proc.ready or proc.busy or proc.process.poll() is not None:
                continue
            if proc.role == "validator":
                if not self._queue:
                    continue
                item = self._queue.popleft()
                if not self._send(proc, item.request):
                    item.future.set_result(_refused("the validating process died; try again"))
                    continue
                proc.validation, proc.deadline = item, time.monotonic() + self.limits.time_limit
                continue
            job = self.store.claim()
            if job is None:
                continue
            proc.job = (job.id, job.attempts)
            self.store.set_worker(job.id, job.attempts, proc.process.pid, proc.ticks)
            proc.deadline = time.monotonic() + self.limits.time_limit
            if not self._send(proc, {"job": job.id, "attempt": job.attempts}):
                self.store.requeue([job.id], reason="queued again: its worker died before it started")
                proc.job = None

    @staticmethod
    def _send(proc: _Process, request: dict) -> bool:
        try:
            proc.process.stdin.write((json.dumps(request) + "\n").encode())
            proc.process.stdin.flush()
            if proc.role == "job":
                proc.process.stdin.close()
            return True
        except (BrokenPipeError, OSError):
            processes.kill_group(proc.process.pid)
            return False

    def _watch(self) -> None:
        for proc in self._procs:
            if not proc.busy or proc.process.poll() is not None:
                continue
            reason = None
            if time.monotonic() > proc.deadline:
                reason = f"time limit of {self.limits.time_limit:g} s exceeded"
            else:
                rss = processes.rss_mb(proc.process.pid)
                if rss > self.limits.memory_mb:
                    reason = f"memory limit of {self.limits.memory_mb:g} MB exceeded ({rss:.0f} MB resident)"
            if reason is None:
                continue
            if proc.job is not None:
                self.store.finish(proc.job[0], "failed", error=reason, attempt=proc.job[1])
            else:
                proc.validation.future.set_result(_refused(f"validation stopped: {reason}"))
                proc.validation = None
            processes.kill_group(proc.process.pid)

    def _reap(self) -> None:
        for proc in list(self._procs):
            code = proc.process.poll()
            if code is None:
                continue
            self._procs.remove(proc)
            for pipe in (proc.process.stdin, proc.process.stdout):
                try:
                    pipe.close()
                except (OSError, ValueError):
                    pass
            if proc.validation is not None:
                proc.validation.future.set_result(_refused(f"the validating process {_death(code)}"))
            if proc.job is None:
                continue
            job_id, attempt = proc.job
            # A worker that exits 0 has recorded its result, unless something went wrong before that.
            reason = "the worker exited without recording a result" if code == 0 else f"the worker process {_death(code)}"
            self.store.finish(job_id, "failed", error=reason, attempt=attempt)
            if self.on_finished is not None:
                self.on_finished(job_id)

    def _collect(self) -> None:
        self._next_collect = time.monotonic() + COLLECT_SECONDS
        removed = self.store.collect(retain_seconds=self.retain_seconds, keep=self.held())
        if any(removed.values()):
            log.info("collected %d finished jobs and %d unreferenced blobs", removed["jobs"], removed["blobs"])


def _death(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name
    reason = f"was killed by {name}"
    if name == "SIGKILL":
        reason += " (killed from outside, or out of memory)"
    elif name in ("SIGSEGV", "SIGBUS", "SIGABRT"):
        reason += " (a crash in native code)"
    return reason


def _refused(message: str) -> dict:
    return {"ok": False, "error": "unavailable", "message": message}
