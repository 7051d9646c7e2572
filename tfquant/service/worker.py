"""The processes that touch uploads: job workers and validators, forked by the zygote (`zygote.py`).

The server never loads a model or an array itself. Its zygote imports TensorFlow once and forks
these ahead of need, so that TensorFlow is already imported when work arrives:

- a **job worker** writes `ready` on its protocol pipe, reads one request line
  (`{"job": ID, "attempt": N}`), runs that job with its output in the job's log, records the
  result for its own attempt only, and exits. One process per job: a crash, a leak or a kill
  ends one job and nothing else.
- a **validator** answers request lines (`{"command", "options", "inputs", "safe_mode"}`) with
  one JSON line each: `{"ok": true}` or the one-line error the command would give. It loads
  models in safe mode only and is replaced after a number of requests or a crash.

Both die with the zygote, which dies with the server (`processes.die_with_parent`), and run under
the server's time and memory limits. Each opens the server's store itself. With `--executor ray`,
`run_job` runs in a Ray actor instead (`ray_executor.py`): the same function, so the same
messages and files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import traceback
from pathlib import Path

ARTIFACTS = ("model.tflite", "report.json", "report.md", "report.html", "recipe.json")


class _Progress(logging.Handler):
    """Turns the pipeline's log lines into the job's stage and a rising progress fraction."""

    def __init__(self, store, job_id: str, attempt: int, rename):
        super().__init__(logging.INFO)
        self.store, self.job_id, self.attempt, self.rename, self.steps = store, job_id, attempt, rename, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.steps += 1
        stage = self.rename(record.getMessage())[:200]
        self.store.progress(self.job_id, min(0.9, 0.1 + 0.1 * self.steps), stage, attempt=self.attempt)


def warm_up() -> None:
    """Import what every job needs, so that the import is paid before the job is handed over."""
    from .. import pipeline  # noqa: F401  (TensorFlow, tf_keras, the converter)


def run_job(store, job_id: str, attempt: int, *, safe_mode: bool, threads, expanded_bytes=None) -> None:
    from ..errors import GateError, TfquantError, one_line
    from ..report import write_report_files
    from ..spec import recipe_file
    from . import jobs

    job = store.get(job_id)
    if job is None or job.status != "running" or job.attempts != attempt:
        return
    paths: dict = {}

    def rename(text: str) -> str:
        return jobs.client_message(text, paths, job.inputs)

    logger = logging.getLogger("tfquant")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Progress(store, job.id, attempt, rename))
    finish = lambda status, **kw: store.finish(job.id, status, attempt=attempt, **kw)  # noqa: E731
    # Named by job and attempt: a replica starting sweeps the folders of attempts that no longer run.
    with tempfile.TemporaryDirectory(prefix=f"job-{job_id}-{attempt}-", dir=store.tmp) as tmp:
        try:
            paths = jobs.materialize(store, job.inputs, Path(tmp), limit=expanded_bytes)
            result = jobs.run(job.command, job.options, paths, safe_mode=safe_mode, num_threads=threads)
        except GateError as exc:
            artifacts = {}
            if exc.result is not None:
                report = jobs.public_report(exc.result.report, paths, job.inputs)
                artifacts = {p.name: store.put(d) for p, d in write_report_files(report, Path(".")).items()}
            finish("failed", error=rename(str(exc)), artifacts=artifacts)
            return
        except TfquantError as exc:
            finish("failed", error=rename(str(exc)))
            return
        except MemoryError:
            finish("failed", error="out of memory in the worker")
            return
        except Exception as exc:  # the job fails with its reason; the server carries on
            traceback.print_exc()
            finish("failed", error=f"internal error: {type(exc).__name__}: {rename(one_line(exc))[:300]}")
            return
    report = jobs.public_report(result.report, paths, job.inputs)
    artifacts = {p.name: store.put(d) for p, d in write_report_files(report, Path(".")).items()}
    artifacts["model.tflite"] = store.put(result.tflite)
    artifacts["recipe.json"] = store.put(recipe_file(report))
    finish("succeeded", artifacts=artifacts)


def validate(store, request: dict, *, folder_prefix: str = "validate-", expanded_bytes=None) -> dict:
    """Load the model and every data file as the job would; the answer line for the server."""
    from ..errors import TfquantError
    from . import jobs

    inputs = request["inputs"]
    with tempfile.TemporaryDirectory(prefix=folder_prefix, dir=store.tmp) as tmp:
        paths: dict = {}
        try:
            paths = jobs.materialize(store, inputs, Path(tmp), limit=expanded_bytes)
            jobs.validate_inputs(request["command"], request["options"], paths, safe_mode=request["safe_mode"])
        except TfquantError as exc:
            return {"ok": False, "error": type(exc).__name__, "message": jobs.client_message(str(exc), paths, inputs)}
        finally:
            _forget_models()
    return {"ok": True}


def log_to(store, job_id: str) -> None:
    """Send this process's stdout and stderr (Python's and native code's) to the job's log."""
    log = os.open(store.logs / f"{job_id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def _forget_models() -> None:
    """Free what Keras keeps between loads (layer name counters, graphs) in a long-lived validator."""
    try:
        from .._keras import keras

        keras.backend.clear_session()
    except Exception:  # noqa: BLE001 - best effort; the process is recycled anyway
        pass


def serve_forked(role: str, options: list[str], data_dir: Path, store_location, *, requests, protocol) -> int:
    """A child of the zygote (`zygote.py`), TensorFlow already imported: say `ready`, then answer
    validation requests until the server closes `requests`, or run the one job it sends."""
    parser = argparse.ArgumentParser(prog=f"tfquant worker {role}")
    parser.add_argument("--allow-unsafe-models", action="store_true")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--expanded-bytes", type=int, help="what an uploaded archive may unpack to")
    parser.add_argument("--replica", default="", help="the server's name (host:port), in a validator's temp folders")
    args = parser.parse_args(options)

    from ..errors import naming
    from .processes import READY, folder_key
    from .stores import open_store

    store = open_store(data_dir, store_location)
    protocol.write(READY)
    with naming("service"):
        if role == "validator":
            prefix = f"validate-{folder_key(args.replica)}-"
            for line in requests:
                try:
                    answer = validate(store, json.loads(line), folder_prefix=prefix, expanded_bytes=args.expanded_bytes)
                except Exception as exc:  # noqa: BLE001 - an answer for every request, whatever happened
                    traceback.print_exc()
                    answer = {"ok": False, "error": "internal", "message": f"internal error: {type(exc).__name__}"}
                protocol.write((json.dumps(answer) + "\n").encode())
            return 0
        line = requests.readline()
        if not line:
            return 0
        request = json.loads(line)
        log_to(store, request["job"])
        run_job(store, request["job"], request["attempt"], safe_mode=not args.allow_unsafe_models,
                threads=args.threads, expanded_bytes=args.expanded_bytes)
    return 0
