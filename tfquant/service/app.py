"""The HTTP API (FastAPI): the same commands, option names and JSON as the `tfquant` command.

    POST   /v1/jobs                          multipart: model, calib / train / eval files, recipe (JSON)
    GET    /v1/jobs?limit=&offset=&status=   paged list
    GET    /v1/jobs/{id}                     status, progress, timestamps, error
    GET    /v1/jobs/{id}/artifacts/{name}    model.tflite, report.json, report.md, report.html, recipe.json
    DELETE /v1/jobs/{id}                     cancel (kills a running worker)
    GET    /healthz                          no token needed
    GET    /metrics                          Prometheus text format

Replicas of this server may share one store (`--store postgresql://...`): each runs the jobs it
claims on its executor (local processes, or Ray with `--executor ray`) and answers for every job.

The server process never deserializes an upload and never imports TensorFlow. A submission is
streamed to disk under the size limits, checked by its headers (zip directories, `.npy`
headers), and then loaded by a validator process under the job limits; only then is the job
queued. Health and status read the store and nothing else, so they answer while validations
and conversions run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import TfquantError
from . import jobs, uploads
from .executor import Limits, WorkerSettings
from .metrics import CONTENT_TYPE, Metrics
from .scheduler import EXECUTORS, Scheduler
from .store import FINAL, STATUSES
from .stores import open_store
from .worker import ARTIFACTS
from .zygote import Launcher

log = logging.getLogger("tfquant.service")
MEDIA = {".tflite": "application/octet-stream", ".json": "application/json", ".md": "text/markdown; charset=utf-8",
         ".html": "text/html; charset=utf-8"}
MAX_OFFSET = 2**31 - 1
DRAIN_SECONDS = 30.0  # after a 413, how long the rest of a body is read and thrown away


@dataclass(frozen=True)
class ServiceConfig:
    data_dir: Path
    token: Optional[str] = None
    workers: int = 2
    validators: int = 1
    max_upload_mb: float = 512.0
    time_limit: float = 3600.0
    memory_mb: float = 8192.0
    allow_unsafe_models: bool = False
    threads: Optional[int] = None
    retain_days: float = 30.0
    store: Optional[str] = None  # a path or postgresql://...; None: jobs.sqlite in data_dir
    executor: str = "local"  # or "ray"
    ray_address: Optional[str] = None  # None with "ray": a local Ray on this machine
    retries: int = 0  # more attempts for a job whose worker (process or node) died
    lease_seconds: float = 30.0  # a dead replica's jobs go to another after this
    replica: str = ""  # this server's name in the store (host:port); host:pid when empty


class Problem(BaseModel):
    detail: str


class JobRef(BaseModel):
    id: str
    status: str


class JobState(BaseModel):
    id: str
    status: str
    command: str
    options: dict[str, Any]
    inputs: dict[str, str]
    artifacts: list[str]
    progress: float
    stage: str
    error: Optional[str] = None
    created: str
    started: Optional[str] = None
    finished: Optional[str] = None
    attempts: int


class JobList(BaseModel):
    jobs: list[JobState]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: str  # "ok", or "degraded" when no worker can start (`detail` says why)
    version: str
    workers: int
    running: int
    idle: int  # workers started ahead of need (TensorFlow imported) and waiting for a job
    detail: Optional[str] = None


def _problems(*codes: int) -> dict:
    return {code: {"model": Problem} for code in (401, *codes)}


def _submit_body() -> dict:
    """The multipart body of POST /v1/jobs; its `recipe` field holds the options of a command, whose
    schemas (one per command, built from `tfquant.spec`) are in the document's components."""
    from ..spec import SPECS

    refs = [{"$ref": f"#/components/schemas/{cls.__name__}"} for cls in SPECS.values()]
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {
                "type": "object",
                "required": ["model"],
                "properties": {
                    "model": {"type": "string", "format": "binary", "description": ".keras, .h5, a SavedModel .zip or a float32 .tflite"},
                    **{name: {"type": "string", "format": "binary", "description": ".npz, .npy or .csv"}
                       for name in ("calib", "eval", "train")},
                    "recipe": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"oneOf": refs},
                               "description": 'JSON: {"command": "convert" | "qat" | "prune", ...options}; the options '
                                              "of each command are its schema: " + ", ".join(SPECS[c].__name__
                                                                                             for c in SPECS)},
                },
            }}},
        },
    }


def _with_spec_schemas(app: FastAPI) -> Callable[[], dict]:
    """app.openapi that adds the options' schemas (`tfquant.spec.json_schema`) to FastAPI's document."""
    from fastapi.openapi.utils import get_openapi

    from ..spec import SPECS, json_schema

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for cls in SPECS.values():
                schemas[cls.__name__] = json_schema(cls)
            app.openapi_schema = document
        return app.openapi_schema

    return openapi


def create_app(config: ServiceConfig) -> FastAPI:
    """The app, its store open and its executor connected: an unreachable store or cluster raises
    `BackendError` here, before the server listens."""
    store = open_store(config.data_dir, config.store)
    limits = uploads.Limits.from_mb(config.max_upload_mb)
    settings = WorkerSettings(
        workers=config.workers, allow_unsafe_models=config.allow_unsafe_models, threads=config.threads,
        limits=Limits(time_limit=config.time_limit, memory_mb=config.memory_mb, expanded_bytes=limits.expanded_bytes),
        replica=config.replica or f"{socket.gethostname()}:{os.getpid()}", address=config.ray_address)
    metrics_box: dict[str, Metrics] = {}
    executor = EXECUTORS[config.executor](store, settings, Launcher(store.dir, store.location))
    scheduler = Scheduler(
        store, executor, settings=settings, validators=config.validators,
        retries=config.retries, lease_seconds=config.lease_seconds, retain_seconds=config.retain_days * 86400.0,
        on_finished=lambda job_id: metrics_box["m"].job_finished(job_id),
    )
    metrics = metrics_box["m"] = Metrics(store, lambda: len(scheduler.running))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        scheduler.begin()
        yield
        await run_in_threadpool(scheduler.stop)
        store.close()

    app = FastAPI(title="tfquant converter service", version=__version__, lifespan=lifespan)
    app.state.store, app.state.scheduler, app.state.metrics = store, scheduler, metrics

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        found = first.get("input")
        return error(422, f"{where}: expected {first.get('msg', 'a valid value').lower()}, found {str(found)[:60]!r}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return error(500, f"internal error: {type(exc).__name__}")

    app.add_middleware(_BearerToken, token=config.token)
    app.openapi = _with_spec_schemas(app)

    # Health and status are async on purpose: they read the store in the event loop itself, so no
    # thread-pool hop (and no wait behind a busy pool) stands between a poller and its answer.
    @app.get("/healthz", response_model=Health)
    async def healthz():
        problem = scheduler.problem
        return {"status": "degraded" if problem else "ok", "version": __version__, "workers": config.workers,
                "running": len(scheduler.running), "idle": scheduler.idle, "detail": problem}

    @app.post("/v1/jobs", status_code=202, response_model=JobRef, openapi_extra=_submit_body(),
              responses=_problems(400, 413, 422, 503))
    async def submit(request: Request):
        try:
            form = await uploads.receive(request.headers.get("content-type", ""), request.stream(), store.blobs, limits)
        except uploads.TooLarge as exc:
            metrics.refused_bytes.inc(exc.refused_bytes)
            metrics.refused.labels("413").inc()
            await _drain(request)
            return error(413, str(exc))
        except uploads.BadRequest as exc:
            metrics.refused.labels("400").inc()
            return error(400, str(exc))
        adopted: list[str] = []
        accepted = False
        try:
            command, options = jobs.parse_spec(form.fields.get("recipe") or "{}")
            unknown = sorted(set(form.fields) - {"recipe"})
            if unknown:
                raise uploads.BadRequest(f"expected the text field 'recipe' only, found {', '.join(map(repr, unknown))}")
            jobs.check_inputs(command, set(form.files), options)
            inputs = {}
            for field_name, upload in form.files.items():
                suffix = jobs.suffix_for(field_name, upload.filename)
                await run_in_threadpool(uploads.check_headers, upload.path, suffix, upload.filename, limits)
                digest = store.adopt(upload.path, upload.sha256)
                adopted.append(digest)
                scheduler.hold(digest)
                inputs[field_name] = {"sha256": digest, "suffix": suffix, "name": upload.filename}
            started = time.perf_counter()
            answer = await asyncio.wait_for(asyncio.wrap_future(scheduler.validate(
                {"command": command, "options": options, "inputs": inputs,
                 "safe_mode": not config.allow_unsafe_models})), timeout=config.time_limit + 30)
            metrics.validation.observe(time.perf_counter() - started)
            if not answer["ok"]:
                status = 503 if answer.get("error") == "unavailable" else 422
                metrics.refused.labels(str(status)).inc()
                return error(status, answer["message"])
            job = store.create(command, options, inputs)
            accepted = True
        except uploads.TooLarge as exc:
            metrics.refused_bytes.inc(exc.refused_bytes)
            metrics.refused.labels("413").inc()
            return error(413, str(exc))
        except uploads.BadRequest as exc:
            metrics.refused.labels("400").inc()
            return error(400, str(exc))
        except TfquantError as exc:
            metrics.refused.labels("422").inc()
            return error(422, str(exc))
        except asyncio.TimeoutError:
            metrics.refused.labels("503").inc()
            return error(503, "validation did not finish in time; try again")
        finally:
            form.discard()  # whatever was not adopted
            for digest in adopted:
                scheduler.release(digest)
            if adopted and not accepted:  # a refused upload is not kept
                await run_in_threadpool(store.discard, adopted, keep=scheduler.held())
        metrics.submitted.inc()
        return JSONResponse({"id": job.id, "status": job.status}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs", response_model=JobList, responses=_problems(422))
    def list_jobs(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                  status: Optional[str] = None):
        if status is not None and status not in STATUSES:
            return error(422, f"unknown status {status!r}; expected one of: {', '.join(STATUSES)}")
        found, total = store.list(limit=limit, offset=offset, status=status)
        return {"jobs": [j.public() for j in found], "total": total, "limit": limit, "offset": offset}

    def lookup(job_id: str):
        if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
            return None
        return store.get(job_id)

    @app.get("/v1/jobs/{job_id}", response_model=JobState, responses=_problems(404))
    async def status(job_id: str):
        job = lookup(job_id)
        return error(404, f"no job {job_id[:64]!r}") if job is None else job.public()

    artifact_media = {media: {} for media in MEDIA.values()}

    @app.get("/v1/jobs/{job_id}/artifacts/{name}", response_class=Response,
             responses={200: {"content": artifact_media}, **_problems(404, 409)})
    def artifact(job_id: str, name: str):
        job = lookup(job_id)
        if job is None:
            return error(404, f"no job {job_id[:64]!r}")
        if name not in ARTIFACTS:
            return error(404, f"unknown artifact {name[:64]!r}; expected one of: {', '.join(ARTIFACTS)}")
        if name not in job.artifacts:
            return error(404 if job.status in FINAL else 409, f"job {job_id} has no {name} (status {job.status})")
        path = store.blob(job.artifacts[name])
        if not path.is_file():
            return error(404, f"job {job_id}: {name} is no longer stored")
        return FileResponse(path, media_type=MEDIA[Path(name).suffix], filename=name)

    @app.delete("/v1/jobs/{job_id}", response_model=JobState, responses=_problems(404, 409))
    def cancel(job_id: str):
        job = lookup(job_id)
        if job is None:
            return error(404, f"no job {job_id[:64]!r}")
        if job.status in FINAL:
            return error(409, f"job {job_id} already {job.status}")
        if store.finish(job_id, "cancelled", error="cancelled by request", only_if_running=False):
            metrics.job_finished(job_id)
        scheduler.cancel(job_id)
        return store.get(job_id).public()

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}, **_problems()})
    def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


class _BearerToken:
    """Pure ASGI middleware: every path but /healthz needs `Authorization: Bearer <token>`."""

    def __init__(self, app, token: Optional[str]):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if self.token and scope["type"] == "http" and scope["path"] != "/healthz":
            header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
            supplied = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(supplied.encode(), self.token.encode()):
                response = JSONResponse({"detail": "expected Authorization: Bearer <token>, found " +
                                         ("a wrong token" if supplied else "none")}, status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _drain(request: Request) -> None:
    """Read and drop the rest of a refused body, so that the client gets its 413 instead of a reset."""
    deadline = time.monotonic() + DRAIN_SECONDS
    with contextlib.suppress(Exception):
        async for _ in request.stream():
            if time.monotonic() > deadline:
                break
