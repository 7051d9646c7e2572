"""The HTTP API (FastAPI): the same commands, option names and JSON as the `tfquant` command.

    POST   /v1/jobs                          multipart: model, calib / train / eval files, recipe (JSON)
    GET    /v1/jobs?limit=&offset=&status=   paged list
    GET    /v1/jobs/{id}                     status, progress, timestamps, error
    GET    /v1/jobs/{id}/artifacts/{name}    model.tflite, report.json, report.md, report.html, recipe.json
    DELETE /v1/jobs/{id}                     cancel (kills a running worker)
    GET    /healthz                          no token needed
    GET    /metrics                          Prometheus text format
"""

from __future__ import annotations

import contextlib
import hmac
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from .._version import __version__
from ..errors import TfquantError
from . import jobs
from .scheduler import Scheduler
from .store import FINAL, STATUSES, Store, TooLarge
from .worker import ARTIFACTS

DURATION_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 3600)
MEDIA = {".tflite": "application/octet-stream", ".json": "application/json", ".md": "text/markdown; charset=utf-8",
         ".html": "text/html; charset=utf-8"}


@dataclass(frozen=True)
class ServiceConfig:
    data_dir: Path
    token: Optional[str] = None
    workers: int = 2
    max_upload_mb: float = 512.0
    time_limit: float = 3600.0
    memory_mb: float = 8192.0
    allow_unsafe_models: bool = False
    threads: Optional[int] = None


def create_app(config: ServiceConfig) -> FastAPI:
    store = Store(config.data_dir)
    scheduler = Scheduler(store, workers=config.workers, time_limit=config.time_limit, memory_mb=config.memory_mb,
                          allow_unsafe_models=config.allow_unsafe_models, threads=config.threads)
    limit = int(config.max_upload_mb * 2**20)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        store.requeue_running()  # jobs that were running when the server stopped run again
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.stop)

    app = FastAPI(title="tfquant converter service", version=__version__, lifespan=lifespan)
    app.state.store, app.state.scheduler = store, scheduler

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if config.token and request.url.path != "/healthz":
            header = request.headers.get("authorization", "")
            supplied = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(supplied.encode(), config.token.encode()):
                return JSONResponse({"detail": "expected Authorization: Bearer <token>, found " +
                                     ("a wrong token" if supplied else "none")}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "version": __version__, "workers": config.workers, "running": len(scheduler.running)}

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            return error(413, f"upload: expected at most {config.max_upload_mb:g} MB, found {int(length) / 2**20:.1f} MB")
        try:
            form = await request.form(max_files=8, max_fields=8)
        except Exception as exc:  # malformed multipart
            return error(400, f"expected a multipart/form-data body, found {type(exc).__name__}: {exc}")
        try:
            command, options = jobs.parse_spec(str(form.get("recipe") or "{}"))
            files = {k: v for k, v in form.multi_items() if k != "recipe" and hasattr(v, "read")}
            jobs.check_inputs(command, set(files))
            inputs = {}
            for field_name, upload in files.items():
                suffix = jobs.suffix_for(field_name, upload.filename)
                digest = await run_in_threadpool(store.put, upload.file, limit=limit)
                inputs[field_name] = {"sha256": digest, "suffix": suffix, "name": str(upload.filename)[:200]}
            await run_in_threadpool(_validate, store, command, options, inputs, not config.allow_unsafe_models)
        except TooLarge:
            return error(413, f"upload: expected at most {config.max_upload_mb:g} MB per file, found more")
        except TfquantError as exc:
            return error(422, str(exc))
        finally:
            await form.close()
        job = store.create(command, options, inputs)
        return JSONResponse({"id": job.id, "status": job.status}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs")
    def list_jobs(limit: int = 50, offset: int = 0, status: Optional[str] = None):
        if not 1 <= limit <= 500 or offset < 0:
            return error(422, f"expected 1 <= limit <= 500 and offset >= 0, found limit={limit}, offset={offset}")
        if status is not None and status not in STATUSES:
            return error(422, f"unknown status {status!r}; expected one of: {', '.join(STATUSES)}")
        found, total = store.list(limit=limit, offset=offset, status=status)
        return {"jobs": [j.public() for j in found], "total": total, "limit": limit, "offset": offset}

    def lookup(job_id: str):
        if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
            return None
        return store.get(job_id)

    @app.get("/v1/jobs/{job_id}")
    def status(job_id: str):
        job = lookup(job_id)
        return error(404, f"no job {job_id!r}") if job is None else job.public()

    @app.get("/v1/jobs/{job_id}/artifacts/{name}")
    def artifact(job_id: str, name: str):
        job = lookup(job_id)
        if job is None:
            return error(404, f"no job {job_id!r}")
        if name not in ARTIFACTS:
            return error(404, f"unknown artifact {name!r}; expected one of: {', '.join(ARTIFACTS)}")
        if name not in job.artifacts:
            return error(404 if job.status in FINAL else 409, f"job {job_id} has no {name} (status {job.status})")
        path = store.blob(job.artifacts[name])
        return FileResponse(path, media_type=MEDIA[Path(name).suffix], filename=name)

    @app.delete("/v1/jobs/{job_id}")
    def cancel(job_id: str):
        job = lookup(job_id)
        if job is None:
            return error(404, f"no job {job_id!r}")
        if job.status in FINAL:
            return error(409, f"job {job_id} already {job.status}")
        store.finish(job_id, "cancelled", error="cancelled by request", only_if_running=False)
        scheduler.cancel(job_id)
        return store.get(job_id).public()

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        lines = ["# HELP tfquant_jobs Jobs in the store by status.", "# TYPE tfquant_jobs gauge"]
        lines += [f'tfquant_jobs{{status="{s}"}} {n}' for s, n in store.counts().items()]
        durations = store.durations()
        lines += ["# HELP tfquant_job_duration_seconds Seconds from start to finish of finished jobs.",
                  "# TYPE tfquant_job_duration_seconds histogram"]
        lines += [f'tfquant_job_duration_seconds_bucket{{le="{b}"}} {sum(d <= b for d in durations)}' for b in DURATION_BUCKETS]
        lines += [f'tfquant_job_duration_seconds_bucket{{le="+Inf"}} {len(durations)}',
                  f"tfquant_job_duration_seconds_sum {sum(durations):.3f}",
                  f"tfquant_job_duration_seconds_count {len(durations)}",
                  "# HELP tfquant_workers_running Worker processes running now.", "# TYPE tfquant_workers_running gauge",
                  f"tfquant_workers_running {len(scheduler.running)}"]
        return "\n".join(lines) + "\n"

    return app


_VALIDATING = threading.Lock()


def _validate(store: Store, command: str, options: dict, inputs: dict, safe_mode: bool) -> None:
    """Load the model and check the data in the server, one submission at a time: Keras model
    loading keeps global state and is not documented as thread-safe."""
    with _VALIDATING, tempfile.TemporaryDirectory(prefix="tfquant-check-") as tmp:
        paths = jobs.materialize(store, inputs, Path(tmp))
        try:
            jobs.validate_inputs(command, options, paths, safe_mode=safe_mode)
        except TfquantError as exc:
            raise type(exc)(jobs.client_message(str(exc), paths, inputs)) from None
