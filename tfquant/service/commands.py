"""The service's commands: `tfquant serve` (the HTTP converter service) and `tfquant jobs` (its client).

`tfquant.cli` parses them and runs them as it runs every command; the service's own modules are
imported only when one runs, so the command stays light for the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from ..errors import RecipeError


def _token(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise RecipeError(f"{path}: expected a readable token file, found {exc.strerror}") from None
    if not token:
        raise RecipeError(f"{path}: expected a token, found an empty file")
    return token


def serve(ns: argparse.Namespace) -> int:
    try:
        from .app import ServiceConfig, create_app
        from .server import bind, serve
    except ImportError as exc:
        raise RecipeError(f"tfquant serve needs the service extra: pip install 'tfquant[service]' ({exc})") from None
    import socket

    if ns.ray_address and ns.executor != "ray":
        raise RecipeError(f"--ray-address: expected with --executor ray, found --executor {ns.executor}")
    config = ServiceConfig(data_dir=ns.data_dir, token=_token(ns.token_file), workers=ns.workers,
                           validators=ns.validators, max_upload_mb=ns.max_upload_mb, time_limit=ns.time_limit,
                           memory_mb=ns.memory_mb, allow_unsafe_models=ns.allow_unsafe_models,
                           retain_days=ns.retain_days, store=ns.store, executor=ns.executor,
                           ray_address=ns.ray_address, retries=ns.retries, lease_seconds=ns.lease_seconds,
                           replica=f"{socket.gethostname()}:{ns.port}")
    # The port first: a second server on the same port must fail before it recovers "its" jobs.
    listening = bind(ns.host, ns.port)
    try:
        app = create_app(config)
    except BaseException:
        listening.close()
        raise
    print(f"tfquant service on http://{ns.host}:{ns.port} (API docs at /docs), data in {ns.data_dir}", file=sys.stderr)
    _log_lines(verbose=ns.verbose)
    serve(app, listening)
    return 0


def _log_lines(*, verbose: bool) -> None:
    """The server's warnings (a worker killed at a limit, a job queued again, a zygote that cannot start)
    as time-stamped lines on stderr, whether or not stderr is a terminal: a server's log is where they are
    read. With -v, its info lines too."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("tfquant serve")
    handler.setFormatter(logging.Formatter("%(asctime)s tfquant serve: %(levelname)s: %(message)s"))
    logger = logging.getLogger("tfquant.service")
    for old in [h for h in logger.handlers if h.get_name() == "tfquant serve"]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def jobs(ns: argparse.Namespace) -> int:
    import os

    from ..client import Client

    url = ns.url or os.environ.get("TFQUANT_URL", "http://127.0.0.1:8080")
    if ns.action not in ("list", "ready") and not ns.target:
        raise RecipeError(f"jobs {ns.action}: expected {'MODEL' if ns.action == 'submit' else 'JOB_ID'}, found none")
    with Client(url, _token(ns.token_file)) as client:
        if ns.action == "ready":
            health = client.ready(timeout=ns.timeout)
            detail = f": {health['detail']}" if health.get("detail") else ""
            print(json.dumps(health) if ns.json else f"{url}: {health['status']}{detail}, tfquant {health['version']}, "
                                                      f"{health['workers']} workers, {health.get('idle', '?')} idle")
            return 0
        if ns.action == "submit":
            try:
                options = json.loads(ns.options)
            except ValueError as exc:
                raise RecipeError(f"--options: expected a JSON object, found invalid JSON ({exc})") from None
            job_id = client.submit(ns.target, command=ns.job_command, calib=ns.calib, eval=ns.eval_data,
                                   train=ns.train, **options)
            if not ns.wait:
                print(json.dumps({"id": job_id, "status": "queued"}) if ns.json else job_id)
                return 0
            return _job_result(ns, client, client.wait(job_id, progress=None if not ns.quiet else False))
        if ns.action == "wait":
            return _job_result(ns, client, client.wait(ns.target, progress=None if not ns.quiet else False))
        if ns.action == "download":
            if ns.output is None:
                raise RecipeError("jobs download: expected -o OUT, found none")
            print(client.download(ns.target, ns.output, artifact=ns.artifact, overwrite=ns.overwrite))
            return 0
        result = {"status": client.status, "cancel": client.cancel}.get(ns.action)
        payload = result(ns.target) if result else client.list()
        if ns.json or ns.action != "list":
            print(json.dumps(payload, indent=2))
        else:
            for job in payload["jobs"]:
                print(f"{job['id']}  {job['status']:9}  {job['command']:7}  {job['created']}  {job.get('error') or ''}")
        return 0


def _job_result(ns: argparse.Namespace, client, state: dict) -> int:
    from ..errors import ServiceError

    if ns.output is not None and state["status"] == "succeeded":
        client.download(state["id"], ns.output, artifact=ns.artifact, overwrite=ns.overwrite)
    print(json.dumps(state, indent=2) if ns.json else f"{state['id']}  {state['status']}  {state.get('error') or ''}".rstrip())
    if state["status"] != "succeeded":
        raise ServiceError(f"job {state['id']}: expected succeeded, found {state['status']}: {state.get('error')}")
    return 0
