"""Runs queued jobs, each in its own worker process, within a time and a memory limit.

A worker that crashes (segfault, out of memory, kill -9) fails only its own job, with a reason;
the server and the other jobs carry on.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .store import Store

log = logging.getLogger("tfquant.service")
POLL_SECONDS = 0.2


@dataclass
class _Running:
    process: subprocess.Popen
    deadline: float
    log_file: object


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the worker leads its own session: its children go too
    except ProcessLookupError:
        pass


class Scheduler(threading.Thread):
    def __init__(self, store: Store, *, workers: int = 2, time_limit: float = 3600.0, memory_mb: float = 8192.0,
                 allow_unsafe_models: bool = False, threads: Optional[int] = None):
        super().__init__(name="tfquant-scheduler", daemon=True)
        self.store = store
        self.workers = workers
        self.time_limit = time_limit
        self.memory_mb = memory_mb
        self.allow_unsafe_models = allow_unsafe_models
        self.threads = threads
        self.running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._reap()
                    self._watch()
                    self._start()
            except Exception:  # keep scheduling whatever one poll hit
                log.exception("scheduler poll failed")
            self._stop.wait(POLL_SECONDS)

    def _start(self) -> None:
        while len(self.running) < self.workers:
            job = self.store.claim()
            if job is None:
                return
            command = [sys.executable, "-m", "tfquant.service.worker", str(self.store.dir), job.id]
            if self.allow_unsafe_models:
                command.append("--allow-unsafe-models")
            if self.threads:
                command += ["--threads", str(self.threads)]
            log_file = open(self.store.dir / "logs" / f"{job.id}.log", "ab")
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, cwd=str(self.store.dir))
            self.store.set_pid(job.id, process.pid)
            self.running[job.id] = _Running(process, time.monotonic() + self.time_limit, log_file)

    def _reap(self) -> None:
        for job_id, entry in list(self.running.items()):
            code = entry.process.poll()
            if code is None:
                continue
            del self.running[job_id]
            entry.log_file.close()
            if code == 0:
                # A worker that exits 0 has recorded its result, unless it died before starting.
                self.store.finish(job_id, "failed", error="the worker exited without recording a result")
                continue
            if code < 0:
                name = signal.Signals(-code).name
                reason = f"the worker process was killed by {name}"
                if name == "SIGKILL":
                    reason += " (killed from outside, or out of memory)"
                elif name in ("SIGSEGV", "SIGBUS", "SIGABRT"):
                    reason += " (a crash in native code)"
            else:
                reason = f"the worker process exited with code {code}; see logs/{job_id}.log in the data folder"
            self.store.finish(job_id, "failed", error=reason)

    def _watch(self) -> None:
        for job_id, entry in list(self.running.items()):
            if time.monotonic() > entry.deadline:
                self.store.finish(job_id, "failed", error=f"time limit of {self.time_limit:g} s exceeded")
                _kill(entry.process)
                continue
            rss = _rss_mb(entry.process.pid)
            if rss > self.memory_mb:
                self.store.finish(job_id, "failed",
                                  error=f"memory limit of {self.memory_mb:g} MB exceeded ({rss:.0f} MB resident)")
                _kill(entry.process)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            entry = self.running.get(job_id)
            if entry is not None:
                _kill(entry.process)

    def stop(self) -> None:
        """Stop scheduling; end running workers; their jobs run again at the next start."""
        self._stop.set()
        self.join(timeout=5)
        with self._lock:
            for entry in self.running.values():
                _kill(entry.process)
                entry.process.wait(timeout=10)
                entry.log_file.close()
            self.running.clear()
        self.store.requeue_running()

