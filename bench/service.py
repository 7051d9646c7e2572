"""The converter service under load: status-poll latency while two conversions run, and job throughput.

Starts `tfquant serve --workers 2` on a loopback port with a fresh data folder, submits `jobs`
conversions of the digits CNN at once, and while they run, 50 concurrent pollers (one asyncio
client each, in this process) ask for job status, each every 0.5 s as `Client.wait` does. Only
the polls answered while the store shows two jobs running count. Bounded: the run stops when
the jobs end or after `timeout` seconds.

    python bench/service.py          # writes bench/service.json and the README's service table
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

POLLERS = 50
POLL_SECONDS = 0.5
TARGET_P99_MS = 50.0


def _start(data: Path, workers: int) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", "from tfquant.cli import run; run()", "serve", "--port", str(port),
                               "--data-dir", str(data), "--workers", str(workers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def _running_windows(store_path: Path, stop: threading.Event, windows: list) -> None:
    """Record (start, end) monotonic intervals during which the store shows two jobs running."""
    import sqlite3

    opened = None
    while not stop.is_set():
        with sqlite3.connect(store_path, timeout=5) as db:
            running = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[0]
        now = time.monotonic()
        if running >= 2 and opened is None:
            opened = now
        elif running < 2 and opened is not None:
            windows.append((opened, now))
            opened = None
        time.sleep(0.05)
    if opened is not None:
        windows.append((opened, time.monotonic()))


async def _poll(url: str, ids: list[str], until: threading.Event, samples: list) -> None:
    """50 keep-alive connections speaking plain HTTP/1.1: a lean client, so that what is timed is the
    server and not a heavy client library sharing the same two cores."""
    host, port = url.split("//")[1].split(":")

    async def one(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        request = f"GET /v1/jobs/{ids[index % len(ids)]} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        await asyncio.sleep(POLL_SECONDS * index / POLLERS)  # spread the pollers over the interval
        try:
            while not until.is_set():
                started = time.monotonic()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                samples.append((started, time.monotonic() - started, int(head.split(b" ")[1])))
                await asyncio.sleep(POLL_SECONDS)
        finally:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(POLLERS)))


def run(model: Path, calib: np.ndarray, *, jobs: int = 8, workers: int = 2, timeout: float = 600.0) -> dict:
    from tfquant.client import Client

    with tempfile.TemporaryDirectory(prefix="tfquant-bench-service-") as tmp:
        calib_path = Path(tmp) / "calib.npz"
        np.savez(calib_path, x=calib)
        server, url = _start(Path(tmp) / "data", workers)
        try:
            client = Client(url)
            started = time.perf_counter()
            ids = [client.submit(model, calib=calib_path) for _ in range(jobs)]
            done, stop_windows = threading.Event(), threading.Event()
            windows: list = []
            samples: list = []
            watcher = threading.Thread(target=_running_windows, args=(Path(tmp) / "data" / "jobs.sqlite",
                                                                       stop_windows, windows))
            watcher.start()
            poller = threading.Thread(target=lambda: asyncio.run(_poll(url, ids, done, samples)))
            poller.start()
            states = [client.wait(job, timeout=timeout, poll=1.0, progress=False) for job in ids]
            elapsed = time.perf_counter() - started
            done.set()
            stop_windows.set()
            poller.join()
            watcher.join()
            succeeded = sum(s["status"] == "succeeded" for s in states)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    during = sorted(1000 * latency for at, latency, code in samples
                    if code == 200 and any(a <= at <= b for a, b in windows))
    if not during:
        raise RuntimeError("no poll was answered while two conversions ran")
    return {
        "jobs": jobs, "workers": workers, "succeeded": succeeded, "seconds": round(elapsed, 2),
        "jobs_per_minute": round(60 * jobs / elapsed, 2), "pollers": POLLERS, "poll_interval_s": POLL_SECONDS,
        "polls_while_two_ran": len(during), "seconds_two_ran": round(sum(b - a for a, b in windows), 1),
        "poll_ms": {"p50": round(statistics.median(during), 2), "p90": round(during[int(0.90 * (len(during) - 1))], 2),
                    "p99": round(during[int(0.99 * (len(during) - 1))], 2), "max": round(during[-1], 2)},
        "target_p99_ms": TARGET_P99_MS,
    }


def markdown(result: dict, environment: dict) -> str:
    ms = result["poll_ms"]
    verdict = "met" if ms["p99"] <= result["target_p99_ms"] else "MISSED"
    return (
        f"Measured {environment['date']} on {environment['cpu']} ({environment['cores']} cores) with `bench/service.py`: "
        f"`tfquant serve --workers {result['workers']}`, {result['jobs']} digits-CNN conversions submitted at once, "
        f"{result['pollers']} concurrent pollers (keep-alive HTTP/1.1 connections) each asking for a job's status every {result['poll_interval_s']:g} s.\n\n"
        "| while two conversions ran | polls | p50 ms | p90 ms | p99 ms | max ms |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |\n"
        f"| `GET /v1/jobs/{{id}}` over {result['seconds_two_ran']:.0f} s | {result['polls_while_two_ran']:,} | "
        f"{ms['p50']:.1f} | {ms['p90']:.1f} | {ms['p99']:.1f} | {ms['max']:.1f} |\n\n"
        f"{verdict}: status-poll p99 {ms['p99']:.1f} ms (target ≤ {result['target_p99_ms']:g} ms). "
        f"{result['succeeded']}/{result['jobs']} jobs succeeded in {result['seconds']:.1f} s "
        f"({result['jobs_per_minute']:.1f} jobs/min, each job in a worker process of its own, forked ahead of need from the zygote).\n"
    )


def main() -> None:
    from bench.models import service_digits_cnn
    from bench.publish import publish
    from bench.run import environment

    with tempfile.TemporaryDirectory(prefix="tfquant-bench-model-") as tmp:
        path, x = service_digits_cnn(Path(tmp))
        result = run(path, x[:300])
    env = environment()
    table = markdown(result, env)
    publish("service", {"environment": env, **result}, table, marker="service-bench")
    print(table)


if __name__ == "__main__":
    main()
