"""Worker processes that cannot outlive the server, and what the server needs to know about them.

A worker asks the kernel to kill it when the server thread that started it goes
(`PR_SET_PDEATHSIG`), so a `kill -9` of the server leaves no orphan running a job; it leads its
own process group, so that killing the group ends anything it started too. A PID alone does
not name a process for long (PIDs are reused), so a worker is identified by its PID and its
kernel start time; the server records both per attempt and, after a crash, kills only a
process whose pair matches.

The server's zygote (`zygote.py`) forks them ahead of need with TensorFlow already imported
(`fill`); the server talks to each over two pipes: a worker says `ready`, then gets one request
line per job or validation.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Optional

PR_SET_PDEATHSIG = 1
WORKER_NICENESS = 19  # workers yield the CPU to the API, so health and status stay fast
READY = b"ready\n"
STORE_ENVIRONMENT = "TFQUANT_STORE"  # the store's location (a URL may hold a password: never on argv)


@dataclass
class WorkerProcess:
    """A worker forked by the zygote and what the server knows of it."""

    role: str  # "job" or "validator"
    process: Any  # a `zygote.Forked`: pid, stdin, stdout, poll(), wait(), close()
    ticks: Optional[int]
    ready: bool = False
    job: Optional[tuple[str, int]] = None  # (job id, attempt) once handed a job
    validation: Any = None  # the scheduler's Validation being answered
    deadline: float = float("inf")
    served: int = 0
    buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def busy(self) -> bool:
        return self.job is not None or self.validation is not None


def folder_key(replica: str) -> str:
    """A replica's name (host:port) as a piece of a file name."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", replica)


def fill(procs: list[WorkerProcess], count: int, launcher, role: str, options: list[str]) -> None:
    """Fork workers of this role from the server's zygote until there are `count`; fewer while the
    zygote is not ready (the next poll forks the rest)."""
    while len(procs) < count:
        forked = launcher.fork(role, options)
        if forked is None:
            return
        procs.append(WorkerProcess(role, forked, start_ticks(forked.pid)))


def read_lines(procs: list[WorkerProcess]) -> list[tuple[WorkerProcess, bytes]]:
    """Mark workers that said `ready`; return every other complete line, without blocking."""
    alive = [p for p in procs if p.process.poll() is None]
    if not alive:
        return []
    readable, _, _ = select.select([p.process.stdout for p in alive], [], [], 0)
    lines = []
    for proc in alive:
        if proc.process.stdout not in readable:
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
            else:
                lines.append((proc, line))
    return lines


def send(proc: WorkerProcess, request: dict) -> bool:
    """Write one request line; a job worker gets one only, so its stdin is closed after it."""
    try:
        proc.process.stdin.write((json.dumps(request) + "\n").encode())
        proc.process.stdin.flush()
        if proc.role == "job":
            proc.process.stdin.close()
        return True
    except (BrokenPipeError, OSError):
        kill_group(proc.pid)
        return False


def close_pipes(proc: WorkerProcess) -> None:
    proc.process.close()


def settings_options(settings) -> list[str]:
    """The worker command line's options every worker process shares: interpreter threads and the
    upload expansion limit."""
    found = []
    if settings.threads:
        found += ["--threads", str(settings.threads)]
    if settings.limits.expanded_bytes:
        found += ["--expanded-bytes", str(settings.limits.expanded_bytes)]
    return found


def stop_all(procs: list, *, each=None) -> None:
    """End every worker: kill each process group, wait for each (up to 5 s), close its pipes, then
    call `each(proc)` if given."""
    for proc in procs:
        kill_group(proc.pid)
    for proc in procs:
        try:
            proc.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait
            pass
        close_pipes(proc)
        if each is not None:
            each(proc)


def over_limit(pid: int, deadline: float, limits) -> Optional[str]:
    """Why a worker must stop now (its time or memory limit), or None."""
    if time.monotonic() > deadline:
        return f"time limit of {limits.time_limit:g} s exceeded"
    rss = rss_mb(pid)
    if rss > limits.memory_mb:
        return f"memory limit of {limits.memory_mb:g} MB exceeded ({rss:.0f} MB resident)"
    return None


def death(code: int) -> str:
    """How a process ended, from its exit status, in the words a job's error uses."""
    if code >= 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name
    reason = f"was killed by {name}"
    if name == "SIGKILL":
        reason += " (killed from outside, or out of memory)"
    elif name in ("SIGSEGV", "SIGBUS", "SIGABRT"):
        reason += " (a crash in native code)"
    return reason


def start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing paren.
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has exited; only its exit status is left to collect
        return None
    return int(fields[19])


def alive(pid: Optional[int], ticks: Optional[int]) -> bool:
    """True if the process that started at `ticks` with this PID is still running."""
    return pid is not None and ticks is not None and start_ticks(pid) == ticks


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def kill_group(pid: int) -> None:
    """SIGKILL the process group a worker leads (the worker and anything it started)."""
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
            return
        except (ProcessLookupError, PermissionError):
            continue


def kill_stale(pid: Optional[int], ticks: Optional[int], *, timeout: float = 10.0) -> bool:
    """Kill a worker left alive from before a restart, if it is still that process; wait until it is gone."""
    if not alive(pid, ticks):
        return False
    kill_group(pid)
    deadline = time.monotonic() + timeout
    while alive(pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def die_with_parent(parent: int) -> None:
    """In a worker: be killed when the server goes, and run at a lower priority than the server.

    The parent check closes the race where the server died before the request was made.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:
        os._exit(3)
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # pragma: no cover
        pass
