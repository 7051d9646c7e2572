"""The converter service, started for real on loopback ports: a server handle and helpers for its tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`tfquant serve` in a subprocess; stop() sends SIGTERM (a graceful stop), stop(SIGKILL) kills it.
    Given `tmp_dir`, its temporary files (and its workers') go there (TMPDIR). Not for a server that starts
    a local Ray: Ray's socket paths under TMPDIR must stay within 107 bytes."""

    def __init__(self, data_dir: Path, token_file: Path, *extra: str, upload_mb: str = "4", port: int = 0,
                 env: dict | None = None, tmp_dir: Path | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data_dir.parent / f"server-{self.port}.log", "ab")
        self.tmp_dir = tmp_dir
        env = os.environ if env is None else env
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from tfquant.cli import run; run()", "serve", "--port", str(self.port),
             "--data-dir", str(data_dir), "--token-file", str(token_file), "--max-upload-mb", upload_mb,
             "--time-limit", "300", *extra], stdout=self.log, stderr=subprocess.STDOUT,
            env=env if tmp_dir is None else {**env, "TMPDIR": str(tmp_dir)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.process.poll() is not None:
                break
        self.process.kill()
        self.process.wait()
        self.log.close()
        raise RuntimeError(f"server did not start: {Path(self.log.name).read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss_mb(self) -> float:
        """The server process's resident-memory high-water mark (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self, sig=signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        self.log.close()
        return code


def worker_processes(data_dir: Path, role: str = "job") -> list[tuple[int, int]]:
    """(pid, parent pid) of every live process of this role (`zygote`, or `job` and `validator`:
    the zygote's forks, which keep its command line and take their own name) of the server on
    `data_dir`, on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if (b"tfquant.service.zygote" in argv and argv[argv.index(b"tfquant.service.zygote") + 1:][:1] == [
                str(data_dir).encode()] and name == f"tfq-{role}" and fields[0] != "Z"):
            found.append((int(entry.name), int(fields[1])))
    return found


def wait_for(predicate, timeout=120.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")
