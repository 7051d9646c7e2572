"""The default executor: job workers as processes of this host, one process per job.

`workers` processes are kept forked ahead of need by the server's zygote (TensorFlow already
imported); each takes one job and exits, so a crash, a leak or a kill ends one job and nothing
else. There are never more job processes than `workers`. The supervisor thread calls every method:
it starts the zygote, whose parent-death signal fires when that thread exits (the workers die with
the zygote), so that thread must live as long as the server.
"""

from __future__ import annotations

import time

from . import processes
from .executor import Ended, Executor
from .store import Job


class LocalExecutor(Executor):
    def __init__(self, store, settings, launcher):
        super().__init__(store, settings, launcher)
        self._procs: list[processes.WorkerProcess] = []

    def options(self) -> list[str]:
        """The worker command line's options for this server's settings."""
        unsafe = ["--allow-unsafe-models"] if self.settings.allow_unsafe_models else []
        return unsafe + processes.settings_options(self.settings)

    def free(self) -> int:
        return len(self._idle())

    def _idle(self) -> list[processes.WorkerProcess]:
        return [p for p in self._procs if p.ready and not p.busy and p.process.poll() is None]

    def launch(self, job: Job) -> bool:
        proc = self._idle()[0]
        proc.job = (job.id, job.attempts)
        self.store.set_worker(job.id, job.attempts, proc.pid, proc.ticks, node=self.host)
        proc.deadline = time.monotonic() + self.settings.limits.time_limit
        if processes.send(proc, {"job": job.id, "attempt": job.attempts}):
            return True
        proc.job = None
        return False

    def poll(self) -> list[Ended]:
        ended = self._reap()
        processes.read_lines(self._procs)  # a job worker's only line is `ready`
        ended += self._watch()
        processes.fill(self._procs, self.settings.workers, self.launcher, "job", self.options())
        return ended

    def _reap(self) -> list[Ended]:
        ended = []
        for proc in list(self._procs):
            code = proc.process.poll()
            if code is None:
                continue
            self._procs.remove(proc)
            processes.close_pipes(proc)
            if proc.job is None:
                continue
            # A worker that exits 0 has recorded its result, unless something went wrong before that.
            if code == 0:
                ended.append(Ended(*proc.job, reason="the worker exited without recording a result"))
            else:
                ended.append(Ended(*proc.job, reason=f"the worker process {processes.death(code)}", retry=True))
        return ended

    def _watch(self) -> list[Ended]:
        limits, ended = self.settings.limits, []
        for proc in self._procs:
            if proc.job is None or proc.process.poll() is not None:
                continue
            reason = processes.over_limit(proc.pid, proc.deadline, limits)
            if reason is not None:
                ended.append(Ended(*proc.job, reason=reason))
                proc.job = None  # handled here: its death is not the job's failure too
                processes.kill_group(proc.pid)
        return ended

    def running(self) -> dict[str, int]:
        return {p.job[0]: p.pid for p in self._procs if p.job is not None}

    def cancel(self, job_id: str) -> None:
        for proc in self._procs:
            if proc.job is not None and proc.job[0] == job_id:
                processes.kill_group(proc.pid)

    def stop(self) -> None:
        processes.stop_all(self._procs)
        self._procs.clear()
