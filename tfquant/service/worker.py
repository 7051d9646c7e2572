"""One job in one process: `python -m tfquant.service.worker DATA_DIR JOB_ID [--allow-unsafe-models]`.

The scheduler starts it, watches its time and memory, and marks the job failed if it dies;
this process records success, a clear failure (the same one-line message the command gives)
and its progress.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
from pathlib import Path

ARTIFACTS = ("model.tflite", "report.json", "report.md", "report.html", "recipe.json")


class _Progress(logging.Handler):
    """Turns the pipeline's log lines into the job's stage and a rising progress fraction."""

    def __init__(self, store, job_id: str):
        super().__init__(logging.INFO)
        self.store, self.job_id, self.steps = store, job_id, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.steps += 1
        self.store.progress(self.job_id, min(0.9, 0.1 + 0.1 * self.steps), record.getMessage()[:200])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("job_id")
    parser.add_argument("--allow-unsafe-models", action="store_true")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)

    from .store import Store

    store = Store(args.data_dir)
    job = store.get(args.job_id)
    if job is None or job.status != "running":
        return 0
    logger = logging.getLogger("tfquant")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Progress(store, job.id))
    store.progress(job.id, 0.05, "loading TensorFlow")

    from ..errors import GateError, TfquantError
    from ..report import write_report_files
    from . import jobs

    with tempfile.TemporaryDirectory(prefix="tfquant-job-") as tmp:
        paths: dict = {}
        try:
            paths = jobs.materialize(store, job.inputs, Path(tmp))
            result = jobs.run(job.command, job.options, paths, safe_mode=not args.allow_unsafe_models,
                              num_threads=args.threads)
        except GateError as exc:
            artifacts = _store_reports(store, exc.result, write_report_files) if exc.result is not None else {}
            store.finish(job.id, "failed", error=jobs.client_message(str(exc), paths, job.inputs), artifacts=artifacts)
            return 0
        except TfquantError as exc:
            store.finish(job.id, "failed", error=jobs.client_message(str(exc), paths, job.inputs))
            return 0
        except MemoryError:
            store.finish(job.id, "failed", error="out of memory in the worker")
            return 0
        except Exception as exc:  # the job fails with its reason; the server carries on
            traceback.print_exc()
            store.finish(job.id, "failed", error=f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            return 0
    artifacts = _store_reports(store, result, write_report_files)
    artifacts["model.tflite"] = store.put(result.tflite)
    import json

    artifacts["recipe.json"] = store.put((json.dumps(result.report.recipe.to_dict(), indent=2) + "\n").encode())
    store.finish(job.id, "succeeded", artifacts=artifacts)
    return 0


def _store_reports(store, result, render) -> dict[str, str]:
    return {path.name: store.put(data) for path, data in render(result.report, Path(".")).items()}


if __name__ == "__main__":
    sys.exit(main())
