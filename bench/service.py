"""The converter service under load: job throughput, and status-poll latency under 50 pollers.

Starts `tfquant serve` on a loopback port with a fresh data folder, submits `jobs` conversions of
the digits CNN at once, and while they run, 50 threads poll job status for a bounded time.
"""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

POLLERS = 50


def run(model: Path, calib: np.ndarray, *, jobs: int = 8, workers: int = 2, poll_seconds: float = 20.0) -> dict:
    import httpx

    from tfquant.client import Client

    with tempfile.TemporaryDirectory(prefix="tfquant-bench-service-") as tmp:
        calib_path = Path(tmp) / "calib.npz"
        np.savez(calib_path, x=calib)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-c", "from tfquant.cli import run; run()", "serve", "--port", str(port),
                                   "--data-dir", str(Path(tmp) / "data"), "--workers", str(workers)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"{url}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            client = Client(url)
            started = time.perf_counter()
            ids = [client.submit(model, calib=calib_path) for _ in range(jobs)]
            latencies: list[float] = []
            lock = threading.Lock()
            stop_at = time.monotonic() + poll_seconds

            def poll(index: int) -> None:
                with httpx.Client(base_url=url, timeout=10) as http:
                    while time.monotonic() < stop_at:  # bounded in time
                        t0 = time.perf_counter()
                        http.get(f"/v1/jobs/{ids[index % len(ids)]}")
                        with lock:
                            latencies.append(time.perf_counter() - t0)
                        time.sleep(0.05)

            threads = [threading.Thread(target=poll, args=(i,)) for i in range(POLLERS)]
            for thread in threads:
                thread.start()
            states = [client.wait(job, timeout=900, poll=1.0, progress=False) for job in ids]
            elapsed = time.perf_counter() - started
            for thread in threads:
                thread.join()
            succeeded = sum(s["status"] == "succeeded" for s in states)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    ms = sorted(1000 * v for v in latencies)
    return {
        "jobs": jobs, "workers": workers, "succeeded": succeeded, "seconds": elapsed,
        "jobs_per_minute": 60 * jobs / elapsed, "pollers": POLLERS, "polls": len(ms),
        "poll_ms": {"p50": statistics.median(ms), "p99": ms[int(0.99 * (len(ms) - 1))], "max": ms[-1]},
    }
