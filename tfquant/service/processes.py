"""Worker processes that cannot outlive the server, and what the server needs to know about them.

A worker asks the kernel to kill it when the server thread that started it goes
(`PR_SET_PDEATHSIG`), so a `kill -9` of the server leaves no orphan running a job; it leads its
own process group, so that killing the group ends anything it started too. A PID alone does
not name a process for long (PIDs are reused), so a worker is identified by its PID and its
kernel start time; the server records both per attempt and, after a crash, kills only a
process whose pair matches.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Optional

PR_SET_PDEATHSIG = 1
WORKER_NICENESS = 19  # workers yield the CPU to the API, so health and status stay fast


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
