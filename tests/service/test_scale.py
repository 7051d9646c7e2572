"""Scaling out, for real: a Ray cluster (`ray start --head`) and a PostgreSQL server on this machine,
API replicas sharing one store, and the same conversions as everywhere else.

The replicas of the first tests share a store and a data folder: two run jobs on Ray, one on
local processes. Their leases are short (5 s), so that the death of one shows within a test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving import TOKEN, Server, free_port, wait_for

from tfquant.cli import main, parse_args
from tfquant.client import Client
from tfquant.spec import ConvertSpec
from tfquant.service.stores import open_store

ROOT = Path(__file__).resolve().parents[2]
LEASE = 5.0
# The job the tests run, its bytes known in advance: full int8, without the parts that only add time
# (the per-tensor diagnosis, the latency runs, the choice of range estimator).
SPEC = ConvertSpec(calib_samples=100, ranges="minmax", diagnose=False, bench_runs=1)


@pytest.fixture(scope="module")
def ray_env() -> dict:
    """What a Ray cluster of this machine and its drivers share: loopback addresses, one token, no usage report."""
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def ray_head(ray_env):
    """`ray start --head --block` with two CPUs; stopping that process stops the cluster."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="tfq-ray-")  # short: Ray's socket paths must fit in 107 bytes
    log = open(Path(temp) / "head.log", "wb")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                             "--temp-dir", temp], env=ray_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"Ray runtime started" in (Path(temp) / "head.log").read_bytes() or head.poll() is not None,
                 timeout=60)
        assert head.poll() is None, (Path(temp) / "head.log").read_text()[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        head.wait(timeout=60)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def expected(files) -> bytes:
    """The job's file as the Python API makes it in this process."""
    import tfquant

    return tfquant.quantize(files["model"], files["calib"], spec=SPEC).tflite


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, files, postgres, ray_head, ray_env):
    """Three replicas sharing a PostgreSQL store and a data folder: two on Ray, one on local processes."""
    url = postgres.database()
    data = tmp_path_factory.mktemp("replicas") / "data"
    shared = ("--store", url, "--workers", "1", "--lease-seconds", str(LEASE), "--memory-mb", "2000")
    ray = ("--executor", "ray", "--ray-address", ray_head)
    started: list[Server] = []

    def start(extra: tuple) -> Server:
        server = Server(data, files["token"], *shared, *extra, env=ray_env)
        started.append(server)
        return server

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            servers = list(pool.map(start, (ray, ray, ())))
        yield {"servers": servers, "store": open_store(data, url)}
    finally:
        for server in started:
            if server.process.poll() is None:
                server.stop()


def _owner(server: Server) -> str:
    return f"{os.uname().nodename}:{server.port}"


JOBS = 9  # three a replica: each takes some once its worker is ready; bench/scale.py measures volume


def test_jobs_through_replicas_sharing_postgres_run_once_each_with_the_same_bytes(replicas, files, expected, tmp_path):
    servers, store = replicas["servers"], replicas["store"]
    clients = [Client(s.url, TOKEN) for s in servers]
    # Every replica's worker ready first (a Ray actor imports TensorFlow as it starts): a replica
    # still starting would leave the jobs to the others, and this test counts who ran them.
    for server in servers:
        wait_for(lambda url=server.url: httpx.get(f"{url}/healthz", timeout=5).json()["idle"] == 1, timeout=180)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda i: clients[i % 2].submit(files["model"], calib=files["calib"], **SPEC.to_dict()),
                            range(JOBS)))
    # Any replica answers for every job, whichever took it.
    states = [clients[(i + 1) % 3].wait(job, timeout=300, poll=0.3) for i, job in enumerate(ids)]
    elapsed = time.monotonic() - started
    assert len(set(ids)) == JOBS and [s["status"] for s in states] == ["succeeded"] * JOBS, states
    print(f"\n{JOBS} jobs through 3 replicas in {elapsed:.1f} s")
    owners = set()
    for job in ids:
        (attempt,) = store.attempts_of(job)  # none lost, none run twice
        assert attempt["outcome"] == "succeeded" and attempt["pid"]
        owners.add(attempt["owner"])
    assert owners == {_owner(s) for s in servers}  # both executors ran some
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": JOBS, "failed": 0, "cancelled": 0}
    for i, job in enumerate(ids):
        assert clients[i % 3].download(job, tmp_path / f"{job}.tflite").read_bytes() == expected
    for client in clients:
        client.close()


def test_a_job_cancelled_through_another_replica_stops_where_it_runs(replicas, files):
    servers, store = replicas["servers"], replicas["store"]
    with Client(servers[0].url, TOKEN) as client:
        job = client.submit(files["model"], command="prune", train=files["train"], epochs=40, sparsity=0.5)
    running = wait_for(lambda: (lambda j: j if j.status == "running" and j.pid else None)(store.get(job)))
    other = next(s for s in servers if _owner(s) != running.owner)
    with Client(other.url, TOKEN) as client:
        assert client.cancel(job)["status"] == "cancelled"
    cancelled = time.monotonic()
    wait_for(lambda: not _alive(running.pid), timeout=10)
    assert time.monotonic() - cancelled < LEASE  # the replica running it finds out at its next renewal
    assert [a["outcome"] for a in store.attempts_of(job)] == ["cancelled"]
    assert store.get(job).status == "cancelled"


def test_kill_9_of_a_replica_leaves_its_jobs_to_another_within_the_lease(replicas, files):
    servers, store = replicas["servers"], replicas["store"]
    with Client(servers[0].url, TOKEN) as client:
        job = client.submit(files["model"], command="prune", train=files["train"], epochs=2, sparsity=0.5)
    running = wait_for(lambda: (lambda j: j if j.status == "running" and j.pid else None)(store.get(job)))
    victim = next(s for s in servers if _owner(s) == running.owner)
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not _alive(running.pid), timeout=10)  # its worker went with it
    # A survivor queues the job again once the lease has passed. When one of them claims it then
    # depends on when a worker of its own is free (a worker restarted by the test before imports
    # TensorFlow first), so only the release is timed.
    wait_for(lambda: store.get(running.id).attempts > running.attempts or store.get(running.id).status == "queued",
             timeout=4 * LEASE)
    released = time.monotonic() - killed
    print(f"\njob released {released:.1f} s after kill -9 of its replica (lease {LEASE:g} s)")
    assert released < LEASE + 3  # the lease, one renewal period and a poll
    survivor = next(s for s in servers if s.process.poll() is None)
    with Client(survivor.url, TOKEN) as client:
        assert client.wait(job, timeout=300, poll=0.3)["status"] == "succeeded"
    attempts = store.attempts_of(job)
    assert [a["outcome"] for a in attempts] == ["expired", "succeeded"]
    assert attempts[0]["owner"] == running.owner and attempts[1]["owner"] != running.owner
    assert attempts[0]["error"] == f"queued again: the lease of replica {running.owner} expired"
    assert attempts[0]["finished"] <= attempts[1]["started"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_local_ray_gives_the_same_bytes_and_retries_a_killed_worker(tmp_path, files, expected, ray_env):
    """Without --ray-address the server starts its own Ray on this machine; here with the default SQLite store."""
    server = Server(tmp_path / "data", files["token"], "--executor", "ray", "--workers", "1", "--memory-mb", "2000",
                    "--retries", "1", env=ray_env)
    store = open_store(tmp_path / "data")
    try:
        with Client(server.url, TOKEN) as client:
            job = client.submit(files["model"], calib=files["calib"], **SPEC.to_dict())
            assert client.wait(job, timeout=300, poll=0.3)["status"] == "succeeded"
            assert client.download(job, tmp_path / "ray.tflite").read_bytes() == expected
            slow = client.submit(files["model"], command="prune", train=files["train"], epochs=1, sparsity=0.5)
            first = wait_for(lambda: (lambda j: j if j.status == "running" and j.pid else None)(store.get(slow)))
            time.sleep(1.0)
            os.kill(first.pid, signal.SIGKILL)
            state = client.wait(slow, timeout=300, poll=0.3)
    finally:
        assert server.stop() == 0
    attempts = store.attempts_of(slow)
    assert state["status"] == "succeeded" and state["attempts"] == 2
    assert [a["outcome"] for a in attempts] == ["failed", "succeeded"]
    assert attempts[0]["error"] == (f"the Ray worker process {first.pid} on {os.uname().nodename} died: Worker "
                                    "unexpectedly exits with a connection error code 2. End of file. (killed from "
                                    "outside, out of memory, or a crash in native code)")
    assert attempts[0]["finished"] <= attempts[1]["started"] and attempts[1]["pid"] != first.pid


def test_an_unreachable_store_or_cluster_stops_serve_with_one_line(tmp_path, capsys):
    for option in (["--store", f"postgresql://tfquant@127.0.0.1:{free_port()}/jobs"],
                   ["--executor", "ray", "--ray-address", f"127.0.0.1:{free_port()}"]):
        code = main(parse_args(["serve", "--port", str(free_port()), "--data-dir", str(tmp_path), *option]))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"tfquant serve: error: {option[-2]} {option[-1]}: expected "), err
