"""One process per server that imports TensorFlow once and forks every worker from that state.

A worker used to be a fresh `python` that imported TensorFlow before it could take work: about
4 CPU-seconds per job, as much as converting a small model. The zygote pays that once: the server
starts `python -m tfquant.service.zygote DATA_DIR SERVER_PID`, the zygote imports what every job
needs (`worker.warm_up`, no model, no store), says `ready`, and then forks one child per request.
Each child is as isolated as a fresh process was (its own address space, session and process
group; a crash, a leak or a kill ends that child only), starts in milliseconds, and shares the
imported libraries' pages with the zygote until it writes to them.

The server (`Launcher`) sends a request as one datagram on a Unix socket, with three file
descriptors: the child's request pipe (its stdin), its protocol pipe (its stdout) and a status
pipe. The zygote writes the child's PID on the status pipe at once and its exit code when it
reaps it; `Forked` reads them there, so the supervisor treats a child as it would a
`subprocess.Popen`. The chain of parent-death signals holds as before: the zygote dies with the
server's supervisor thread, and each child with the zygote.

A child opens the store itself (no connection crosses the fork), reseeds Python's and NumPy's
random generators, names itself `tfq-job` or `tfq-validator` (its command line stays the
zygote's), and sends its stderr to its role's log in the data folder.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .processes import READY, STORE_ENVIRONMENT, death, die_with_parent, kill_group

log = logging.getLogger("tfquant.service")
MAX_BACKOFF = 30.0  # seconds between starts of a zygote that keeps dying before it is ready
REQUEST_BYTES = 1 << 16
NAMES = {"zygote": b"tfq-zygote", "job": b"tfq-job", "validator": b"tfq-validator"}
PR_SET_NAME = 15


class Forked:
    """A child of the zygote, with the part of `subprocess.Popen` the supervisor uses: `pid`,
    `stdin`, `stdout`, `poll()`, `wait()`."""

    def __init__(self, pid: int, stdin, stdout, status: int, buffer: bytes):
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: Optional[int] = None
        self._status, self._buffer = status, buffer
        self._parse()

    def _parse(self) -> None:
        if self.returncode is None and b"\n" in self._buffer:
            self.returncode = int(self._buffer.split(b"\n", 1)[0])

    def poll(self) -> Optional[int]:
        while self.returncode is None and self._status is not None:
            try:
                chunk = os.read(self._status, 64)
            except BlockingIOError:
                return None
            if not chunk:
                # The zygote went without reaping this child: its parent-death signal killed it.
                self.returncode = -signal.SIGKILL
                break
            self._buffer += chunk
            self._parse()
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            select.select([self._status], [], [], left)
        return self.returncode

    def close(self) -> None:
        for pipe in (self.stdin, self.stdout):
            try:
                pipe.close()
            except (OSError, ValueError):
                pass
        if self._status is not None:
            os.close(self._status)
            self._status = None


class Launcher:
    """The server's side: starts the zygote when first needed (and again if it died), forks workers."""

    def __init__(self, data_dir, store_location: str):
        self.data_dir, self.store_location = Path(data_dir), store_location
        self.process: Optional[subprocess.Popen] = None
        self._socket: Optional[socket.socket] = None
        self._ready, self._buffer = False, b""
        self._failures, self._not_before = 0, 0.0  # zygotes in a row that died before `ready`; when to retry
        self.problem: Optional[str] = None  # why no worker can start now (the last zygote's death), for /healthz

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "tfquant.service.zygote", str(self.data_dir), str(os.getpid()),
                   str(theirs.fileno())]
        with open(self.data_dir / "logs" / "zygote.log", "ab") as log_file:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
                                            pass_fds=(theirs.fileno(),), start_new_session=True, cwd=str(self.data_dir),
                                            env={**os.environ, STORE_ENVIRONMENT: self.store_location})
        theirs.close()
        os.set_blocking(self.process.stdout.fileno(), False)
        self._socket, self._ready, self._buffer = ours, False, b""

    def ready(self) -> bool:
        """True once the zygote has imported TensorFlow; starts it (again) when it is not running.

        A zygote that dies before it is ready (TensorFlow cannot be imported, say) is started again
        after a pause that doubles each time, up to `MAX_BACKOFF` seconds, with a warning naming its log.
        """
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            if not self._ready:
                self._failures += 1
                pause = min(MAX_BACKOFF, 2.0 ** (self._failures - 1))
                self._not_before = time.monotonic() + pause
                self.problem = (f"the worker zygote {death(code)} before it was ready (see "
                                f"{self.data_dir / 'logs' / 'zygote.log'})")
                log.warning("%s; starting it again in %g s", self.problem, pause)
            self.stop()
        if self.process is None:
            if time.monotonic() < self._not_before:
                return False
            self._start()
        if not self._ready:
            try:
                self._buffer += os.read(self.process.stdout.fileno(), 64) or b""
            except BlockingIOError:
                pass
            self._ready = READY in self._buffer
            if self._ready:
                self._failures, self.problem = 0, None
        return self._ready

    def fork(self, role: str, options: list[str]) -> Optional[Forked]:
        """A new worker of this role, or None while the zygote is not ready (or died just now)."""
        if not self.ready():
            return None
        request_r, request_w = os.pipe()
        protocol_r, protocol_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            message = json.dumps({"role": role, "options": options}).encode()
            socket.send_fds(self._socket, [message], [request_r, protocol_w, status_w])
        except OSError:
            for fd in (request_w, protocol_r, status_r):
                os.close(fd)
            self.stop()
            return None
        finally:  # the child's ends: the zygote holds its own copies now (or there is no child)
            for fd in (request_r, protocol_w, status_w):
                os.close(fd)
        buffer = b""
        deadline = time.monotonic() + 30.0
        while b"\n" not in buffer and time.monotonic() < deadline:
            if select.select([status_r], [], [], 1.0)[0]:
                chunk = os.read(status_r, 64)
                if not chunk:
                    break
                buffer += chunk
        if b"\n" not in buffer:  # the zygote died before it forked
            for fd in (request_w, protocol_r, status_r):
                os.close(fd)
            return None
        pid_line, rest = buffer.split(b"\n", 1)
        os.set_blocking(status_r, False)
        os.set_blocking(protocol_r, False)
        return Forked(int(pid_line), os.fdopen(request_w, "wb"), os.fdopen(protocol_r, "rb", buffering=0),
                      status_r, rest)

    def stop(self) -> None:
        """Kill the zygote (its children die with it) and forget it."""
        if self.process is not None:
            kill_group(self.process.pid)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait
                pass
            self.process.stdout.close()
        if self._socket is not None:
            self._socket.close()
        self.process, self._socket, self._ready = None, None, False


# --- the zygote process ---


def main(argv=None) -> int:
    data_dir, parent, fd = (argv or sys.argv[1:])[:3]
    die_with_parent(int(parent))
    _name(NAMES["zygote"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    server = socket.socket(fileno=int(fd))
    from .worker import warm_up

    warm_up()
    os.write(1, READY)
    store_location = os.environ.pop(STORE_ENVIRONMENT, None)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, int] = {}  # pid -> the write end of its status pipe
    zygote = os.getpid()
    while True:
        readable = select.select([server, wake_r], [], [])[0]
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 256):
                        break
                except BlockingIOError:
                    break
        _reap(children)
        if server not in readable:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(server, REQUEST_BYTES, 3)
        except OSError:
            return 0
        if not message:  # the server closed its end
            return 0
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            inherited = [server.fileno(), wake_r, wake_w, *children.values()]
            _child(request, fds, zygote=zygote, inherited=inherited, data_dir=Path(data_dir),
                   store_location=store_location)
        _write(fds[2], f"{pid}\n")
        os.close(fds[0])
        os.close(fds[1])
        children[pid] = fds[2]


def _write(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
    except OSError:  # the server no longer reads it
        pass


def _reap(children: dict[int, int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = children.pop(pid, None)
        if fd is not None:
            _write(fd, f"{os.waitstatus_to_exitcode(status)}\n")
            os.close(fd)


def _child(request: dict, fds: list[int], *, zygote: int, inherited: list[int], data_dir: Path,
           store_location: Optional[str]) -> None:
    """The forked worker: never returns into the zygote's loop."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in inherited:
            os.close(fd)
        os.setsid()
        die_with_parent(zygote)
        request_fd, protocol_fd, status_fd = fds
        os.close(status_fd)
        role = request["role"]
        log = os.open(data_dir / "logs" / f"{role}-workers.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        os.dup2(log, 1)  # the protocol has its own pipe: library chatter goes to the log
        os.close(log)
        _name(NAMES[role])
        _reseed()
        from .worker import serve_forked

        code = serve_forked(role, request["options"], data_dir, store_location,
                            requests=os.fdopen(request_fd, "r"), protocol=os.fdopen(protocol_fd, "wb", buffering=0))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever happens, this process must not return to the loop
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _name(name: bytes) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _reseed() -> None:
    """Forked children start with the zygote's generator states: give each its own."""
    import random

    random.seed()
    try:
        import numpy as np

        np.random.seed()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())
