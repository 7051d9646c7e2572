"""The `tfquant` command: `parse_args(argv)` -> `main(ns) -> int`; `run()` is the console entry point.

Exit codes: 0 done; 1 a gate failed (`--max-drop`, `--strict`); 2 bad usage or bad input.
Errors are one line on stderr. Nothing is written on failure. Never prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from ._version import __version__
from .errors import GateError, RecipeError, TfquantError

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def wrap(func):
        _COMMANDS[name] = func
        return func

    return wrap


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage stays in --help)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _image_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
        if height < 1 or width < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 96x96, found {text!r}") from None
    return height, width


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.01, found {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (0.01 = one point), found {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number above 0, found {text}")
    return value


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, type=Path, help="the .tflite file to write")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--json", action="store_true", help="print report.json to stdout")
    p.add_argument("--threads", type=_positive, help="interpreter threads (default: every core)")
    p.add_argument("--allow-unsafe-models", action="store_true", help="load models that hold code (Lambda layers)")
    p.add_argument("--max-drop", type=_fraction, help="exit 1 if the accuracy drop exceeds this fraction")
    p.add_argument("--strict", action="store_true", help="exit 1 if any op besides the IO adapters is float")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    from .types import IOType

    p.add_argument("model", help=".keras, .h5 or SavedModel folder (Keras 2 / tf_keras)")
    p.add_argument("--train", required=True, help="labelled training data")
    p.add_argument("--calib", help="calibration data for integer IO (default: the training data)")
    p.add_argument("--eval", dest="eval_data", help="labelled evaluation data")
    p.add_argument("--epochs", type=_positive, required=True)
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--io", choices=[t.value for t in IOType if t is not IOType.INT16], help="default: int8")
    p.add_argument("--calib-samples", type=_positive, default=200)
    _add_output_options(p)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image folders")
    group.add_argument("--image-size", type=_image_size, metavar="HxW", help="resize images (default: the model's input size)")
    group.add_argument("--scale", type=float, default=1 / 255, help="pixel multiplier (default: 1/255)")


def build_parser() -> argparse.ArgumentParser:
    from .types import QUANTIZERS, IOType, Mode

    parser = _Parser(prog="tfquant", description="Keras model -> verified fully integer .tflite file")
    parser.add_argument("--version", action="version", version=f"tfquant {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("convert", parents=[common], help="convert a Keras model and verify the file on the interpreter")
    p.add_argument("model", help=".keras, .h5 or SavedModel folder")
    p.add_argument("--calib", help="calibration data: .npz, .npy or an image folder")
    p.add_argument("--eval", dest="eval_data", help="labelled evaluation data (adds accuracy and agreement)")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="default: int8")
    p.add_argument("--io", choices=[t.value for t in IOType], help="input/output dtype (default: the mode's own)")
    p.add_argument("--calib-samples", type=_positive, help="representative samples (default: 200)")
    p.add_argument("--fallback", choices=["off", "auto"], default="off",
                   help="auto: try int8, int8 with the worst ops in float, int16x8, dynamic, float16, float32 "
                        "until the drop is within --max-drop")
    p.add_argument("--quantizer", choices=list(QUANTIZERS),
                   help="converter: TFLiteConverter's quantizer (default); litert: LiteRT Quantizer (int8 only)")
    p.add_argument("--recipe", type=Path, help="replay a recipe JSON file (from a report)")
    p.add_argument("--task", action="append", metavar="OUTPUT=TASK",
                   help="classification, regression or embedding for an output (default: detected)")
    p.add_argument("--input-shape", action="append", metavar="INPUT=D1,D2",
                   help="the shape of one sample of an input whose dims the model leaves open")
    p.add_argument("--no-diagnose", dest="diagnose", action="store_false",
                   help="skip the per-tensor error ranking (faster on large models)")
    _add_output_options(p)
    _add_data_options(p)

    p = sub.add_parser("qat", parents=[common], help="quantization-aware fine-tuning, then full int8")
    _add_training_options(p)
    p.add_argument("--lr", type=_positive_float, default=1e-4, help="Adam learning rate (default: 1e-4)")
    p.add_argument("--keep-best", action="store_true", help="keep the plain PTQ file when QAT ends below it")

    p = sub.add_parser("prune", parents=[common], help="magnitude pruning while fine-tuning, then full int8")
    _add_training_options(p)
    p.add_argument("--sparsity", type=_fraction, required=True, help="final fraction of zero weights, e.g. 0.8")
    p.add_argument("--schedule", choices=["polynomial", "constant"], default="polynomial")
    p.add_argument("--block", choices=["2:4"], help="structured 2-of-4 sparsity")
    p.add_argument("--then", choices=["ptq", "qat"], default="ptq", help="qat: sparsity-preserving QAT")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--log-dir", help="TensorBoard pruning summaries")

    p = sub.add_parser("diagnose", parents=[common], help="find the tensors and ops where int8 loses accuracy")
    p.add_argument("model", help=".keras, .h5 or SavedModel folder")
    p.add_argument("--calib", required=True, help="calibration data")
    p.add_argument("--eval", dest="eval_data", help="labelled data: debug samples come from it, and both accuracies")
    p.add_argument("--calib-samples", type=_positive, default=200)
    p.add_argument("--samples", type=_positive, default=64, help="samples the debugger runs (default: 64)")
    p.add_argument("--threshold", type=float, default=16.0, help="range ratio the lint warns above (default: 16)")
    p.add_argument("--top", type=_positive, default=15, help="tensors to list (default: 15)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--allow-unsafe-models", action="store_true")

    p = sub.add_parser("serve", parents=[common], help="run the converter service (HTTP jobs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--data-dir", type=Path, default=Path("tfquant-data"), help="jobs, uploads and artifacts")
    p.add_argument("--workers", type=_positive, default=2, help="jobs run at once, each in its own process")
    p.add_argument("--token-file", type=Path, help="require Authorization: Bearer <the file's token>")
    p.add_argument("--validators", type=_positive, default=1, help="processes that check submissions (default: 1)")
    p.add_argument("--max-upload-mb", type=_positive_float, default=512.0,
                   help="per uploaded file; a body may hold twice this, an archive may unpack to four times it")
    p.add_argument("--time-limit", type=_positive_float, default=3600.0, help="seconds per job and per validation")
    p.add_argument("--memory-mb", type=_positive_float, default=8192.0, help="resident memory per job and per validation")
    p.add_argument("--retain-days", type=_positive_float, default=30.0,
                   help="finished jobs and their files are deleted after this many days (default: 30)")
    p.add_argument("--allow-unsafe-models", action="store_true", help="load models holding code (Lambda layers)")

    p = sub.add_parser("jobs", parents=[common], help="submit to and follow a converter service")
    p.add_argument("action", choices=["submit", "status", "wait", "download", "list", "cancel"])
    p.add_argument("target", nargs="?", help="MODEL for submit, JOB_ID otherwise")
    p.add_argument("--url", default=None, help="service address (default: $TFQUANT_URL or http://127.0.0.1:8080)")
    p.add_argument("--token-file", type=Path)
    p.add_argument("--job-command", dest="job_command", choices=["convert", "qat", "prune"], default="convert")
    p.add_argument("--calib")
    p.add_argument("--eval", dest="eval_data")
    p.add_argument("--train")
    p.add_argument("--options", default="{}", help='more options as JSON, e.g. \'{"mode": "int8", "max_drop": 0.01}\'')
    p.add_argument("--wait", action="store_true", help="submit: wait for the job to finish")
    p.add_argument("--artifact", default="model.tflite")
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", parents=[common], help="ops, dtypes and quantization of a .tflite file")
    p.add_argument("tflite", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 unless the file is fully integer")

    p = sub.add_parser("eval", parents=[common], help="accuracy of a .tflite file on labelled data")
    p.add_argument("tflite", type=Path)
    p.add_argument("--eval", dest="eval_data", required=True)
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--threads", type=_positive)
    p.add_argument("--json", action="store_true")
    _add_data_options(p)

    p = sub.add_parser("bench", parents=[common], help="latency of a .tflite file on the interpreter")
    p.add_argument("tflite", type=Path)
    p.add_argument("--runs", type=_positive, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=_positive)
    p.add_argument("--compare", type=Path, help="a second file, measured interleaved in the same run")
    p.add_argument("--json", action="store_true")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check the command line; every mistake that needs no model is reported here, at once."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    problem = _usage_problem(ns)
    if problem:
        parser.exit(2, f"tfquant {ns.command}: error: {problem} (see tfquant {ns.command} --help)\n")
    return ns


def _usage_problem(ns: argparse.Namespace) -> Optional[str]:
    """Option combinations that cannot work, found before TensorFlow is imported."""
    if getattr(ns, "fallback", "off") == "auto" and getattr(ns, "max_drop", None) is None:
        return "--fallback auto needs --max-drop: the budget the ladder climbs to"
    if getattr(ns, "max_drop", None) is not None and not getattr(ns, "eval_data", None):
        return "--max-drop needs --eval: the drop is measured on evaluation data"
    if ns.command == "prune" and ns.sparsity in (0, 1):
        return f"--sparsity: expected a fraction between 0 and 1 (exclusive), found {ns.sparsity:g}"
    if ns.command == "convert" and ns.recipe is None and not ns.calib and (ns.mode or "int8") in ("int8", "int16x8"):
        return f"--mode {ns.mode or 'int8'} needs calibration data: pass --calib DATA"
    return None


def main(ns: argparse.Namespace) -> int:
    """Run a parsed command; return its exit code. Never raises a `TfquantError`."""
    _log_to_stderr(quiet=ns.quiet)
    try:
        return _COMMANDS[ns.command](ns)
    except GateError as exc:
        result = exc.result
        if getattr(ns, "json", False) and result is not None:
            print(json.dumps(result.report.to_dict(), indent=2))
        print(f"tfquant {ns.command}: failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except TfquantError as exc:
        print(f"tfquant {ns.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


class _CommandHandler(logging.StreamHandler):
    """Progress lines on stderr; one per process, re-bound to the current stderr on every call."""

    def emit(self, record: logging.LogRecord) -> None:
        from .isolate import record_stage

        record_stage(record.getMessage())
        super().emit(record)


def _log_to_stderr(*, quiet: bool) -> None:
    logger = logging.getLogger("tfquant")
    for handler in [h for h in logger.handlers if isinstance(h, _CommandHandler)]:
        logger.removeHandler(handler)
    handler = _CommandHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tfquant: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


# Commands whose work runs TensorFlow's native code: the console runs them in a watched child.
ISOLATED = ("convert", "qat", "prune", "diagnose")


def run() -> None:  # pragma: no cover - console entry point
    from . import isolate

    argv = sys.argv[1:]
    ns = parse_args(argv)
    if ns.command in ISOLATED and not isolate.in_child():
        outputs = _output_paths(ns.output) if getattr(ns, "output", None) else []
        sys.exit(isolate.run_isolated(ns.command, argv, model=getattr(ns, "model", None), outputs=outputs))
    isolate.start_child()
    sys.exit(main(ns))


def _output_paths(output: Path) -> list[Path]:
    """Every file a converting command writes: the model, its reports and recipe.json (last)."""
    from .report import report_paths

    return [output, *report_paths(output.parent), output.parent / "recipe.json"]


def _images(ns: argparse.Namespace):
    from .data import ImageOptions

    return ImageOptions(size=ns.image_size, scale=ns.scale)


def _load_recipe(ns: argparse.Namespace):
    from .types import Recipe

    if ns.recipe is None:
        return Recipe(mode=ns.mode or "int8", io=ns.io, calib_samples=ns.calib_samples or 200,
                      quantizer=ns.quantizer or "converter")
    clashes = [f"--{k.replace('_', '-')}" for k in ("mode", "io", "calib_samples", "quantizer")
               if getattr(ns, k) is not None]
    if clashes:
        raise RecipeError(f"{ns.recipe}: the recipe already sets {', '.join(clashes)}; pass one or the other")
    try:
        data = json.loads(ns.recipe.read_text())
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{ns.recipe}: expected a recipe JSON file, found {type(exc).__name__}: {exc}") from None
    data = data.get("recipe", data)  # a whole report.json replays its recipe
    try:
        return Recipe.from_dict(data)
    except RecipeError as exc:
        raise RecipeError(f"{ns.recipe}: {exc}") from None


def _outputs(ns: argparse.Namespace) -> list[Path]:
    """Every file the command will write, checked before minutes of work, not after."""
    from .files import check_targets

    outputs = _output_paths(ns.output)
    check_targets(outputs, overwrite=ns.overwrite)
    return outputs


def _finish(ns: argparse.Namespace, result, outputs: list[Path]) -> int:
    from .report import to_text

    recipe = (json.dumps(result.report.recipe.to_dict(), indent=2) + "\n").encode()
    result.save(ns.output, overwrite=ns.overwrite, reports=True, extra={outputs[-1]: recipe})
    if ns.json:
        print(json.dumps(result.report.to_dict(), indent=2))
    elif not ns.quiet:
        print(to_text(result.report), end="")
        print("wrote " + ", ".join(str(p) for p in outputs))
    return 0


@command("convert")
def _convert(ns: argparse.Namespace) -> int:
    from .pipeline import quantize

    recipe = _load_recipe(ns)
    outputs = _outputs(ns)
    if recipe.needs_calibration and not ns.calib:
        raise RecipeError(f"--mode {recipe.mode.value} needs calibration data: pass --calib DATA")
    result = quantize(
        ns.model, ns.calib, eval_data=ns.eval_data, max_drop=ns.max_drop, fallback=ns.fallback,
        strict=ns.strict, recipe=recipe, num_threads=ns.threads, images=_images(ns),
        safe_mode=not ns.allow_unsafe_models, tasks=ns.task, input_shapes=ns.input_shape, diagnose=ns.diagnose,
    )
    return _finish(ns, result, outputs)


def _training_options(ns: argparse.Namespace) -> dict:
    return dict(
        epochs=ns.epochs, calibration_data=ns.calib, eval_data=ns.eval_data, batch_size=ns.batch_size,
        learning_rate=ns.lr, io=ns.io, calib_samples=ns.calib_samples, max_drop=ns.max_drop, strict=ns.strict,
        num_threads=ns.threads, safe_mode=not ns.allow_unsafe_models, verbose=0 if ns.quiet or ns.json else 2,
    )


@command("qat")
def _qat(ns: argparse.Namespace) -> int:
    from .optimize.qat import qat

    outputs = _outputs(ns)
    return _finish(ns, qat(ns.model, ns.train, keep_best=ns.keep_best, **_training_options(ns)), outputs)


@command("prune")
def _prune(ns: argparse.Namespace) -> int:
    from .optimize.prune import prune

    outputs = _outputs(ns)
    result = prune(ns.model, ns.train, sparsity=ns.sparsity, schedule=ns.schedule, block=ns.block, then=ns.then,
                   log_dir=ns.log_dir, **_training_options(ns))
    return _finish(ns, result, outputs)


@command("diagnose")
def _diagnose(ns: argparse.Namespace) -> int:
    from .diagnose import diagnose, summary

    found = diagnose(ns.model, ns.calib, eval_data=ns.eval_data, calib_samples=ns.calib_samples, samples=ns.samples,
                     threshold=ns.threshold, safe_mode=not ns.allow_unsafe_models)
    if ns.json:
        print(json.dumps(found.to_dict(), indent=2))
        return 0
    if found.float_accuracy is not None:
        print(f"accuracy: float32 {100 * found.float_accuracy:.2f} %, int8 {100 * found.int8_accuracy:.2f} % "
              f"({100 * (found.float_accuracy - found.int8_accuracy):.2f} pts drop)")
    print(summary(found.errors, ns.top))
    if found.range_lint:
        print()
        for warning in found.range_lint:
            print(f"warning: {warning.message}")
    else:
        print(f"\nrange lint: no op joins inputs whose ranges differ more than {ns.threshold:g}×")
    return 0


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


@command("serve")
def _serve(ns: argparse.Namespace) -> int:
    try:
        from .service.app import ServiceConfig, create_app
        from .service.server import serve
    except ImportError as exc:
        raise RecipeError(f"tfquant serve needs the service extra: pip install 'tfquant[service]' ({exc})") from None
    config = ServiceConfig(data_dir=ns.data_dir, token=_token(ns.token_file), workers=ns.workers,
                           validators=ns.validators, max_upload_mb=ns.max_upload_mb, time_limit=ns.time_limit,
                           memory_mb=ns.memory_mb, allow_unsafe_models=ns.allow_unsafe_models,
                           retain_days=ns.retain_days)
    print(f"tfquant service on http://{ns.host}:{ns.port} (API docs at /docs), data in {ns.data_dir}", file=sys.stderr)
    serve(create_app(config), host=ns.host, port=ns.port)
    return 0


@command("jobs")
def _jobs(ns: argparse.Namespace) -> int:
    import os

    from .client import Client

    url = ns.url or os.environ.get("TFQUANT_URL", "http://127.0.0.1:8080")
    if ns.action not in ("list",) and not ns.target:
        raise RecipeError(f"jobs {ns.action}: expected {'MODEL' if ns.action == 'submit' else 'JOB_ID'}, found none")
    with Client(url, _token(ns.token_file)) as client:
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
    from .errors import ServiceError

    if ns.output is not None and state["status"] == "succeeded":
        client.download(state["id"], ns.output, artifact=ns.artifact, overwrite=ns.overwrite)
    print(json.dumps(state, indent=2) if ns.json else f"{state['id']}  {state['status']}  {state.get('error') or ''}".rstrip())
    if state["status"] != "succeeded":
        raise ServiceError(f"job {state['id']}: expected succeeded, found {state['status']}: {state.get('error')}")
    return 0


@command("inspect")
def _inspect(ns: argparse.Namespace) -> int:
    from .inspect import inspect
    from .report import inspect_text

    info = inspect(ns.tflite)
    if ns.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        print(inspect_text(info), end="")
    if ns.strict and not info.fully_integer:
        print(f"tfquant inspect: failed: {ns.tflite}: expected a fully integer file (--strict), "
              f"found float ops {', '.join(info.float_ops)}", file=sys.stderr)
        return 1
    return 0


@command("eval")
def _eval(ns: argparse.Namespace) -> int:
    from .harness import evaluate

    metrics = evaluate(ns.tflite, ns.eval_data, batch_size=ns.batch_size, num_threads=ns.threads, images=_images(ns))
    if ns.json:
        print(json.dumps({"model": str(ns.tflite), **metrics.to_dict()}, indent=2))
    else:
        top5 = "" if metrics.top5_accuracy is None else f", top-5 {100 * metrics.top5_accuracy:.2f} %"
        print(f"{ns.tflite}: top-1 {100 * metrics.accuracy:.2f} %{top5} on {metrics.samples} samples "
              f"in {metrics.seconds:.2f} s ({metrics.samples / max(metrics.seconds, 1e-9):,.0f} samples/s)")
    return 0


@command("bench")
def _bench(ns: argparse.Namespace) -> int:
    from .harness import benchmark

    if ns.warmup < 0:
        raise RecipeError(f"--warmup: expected a whole number >= 0, found {ns.warmup}")
    files = [ns.tflite] + ([ns.compare] if ns.compare else [])
    results = benchmark(*files, runs=ns.runs, warmup=ns.warmup, num_threads=ns.threads)
    if ns.json:
        payload = {"results": [r.to_dict() for r in results]}
        if len(results) == 2:
            payload["ratio_p50"] = results[1].inference_ms.p50 / results[0].inference_ms.p50
        print(json.dumps(payload, indent=2))
        return 0
    for r in results:
        lat = r.inference_ms
        print(f"{r.model}: init {r.init_ms:.2f} ms, first {r.first_inference_ms:.3f} ms, "
              f"p50 {lat.p50:.3f} ms, p90 {lat.p90:.3f}, p99 {lat.p99:.3f}, mean {lat.mean:.3f} ± {lat.std:.3f}, "
              f"min {lat.min:.3f} ({r.num_runs} runs, {r.num_threads} threads)")
    first = results[0]
    print(f"peak memory {first.peak_memory_mb:.1f} MB, {first.runtime.name} {first.runtime.version}")
    if len(results) == 2:
        a, b = results[0].inference_ms, results[1].inference_ms
        print(f"{ns.compare.name} / {ns.tflite.name}: p50 {b.p50 / a.p50:.2f}×, p90 {b.p90 / a.p90:.2f}×, "
              f"mean {b.mean / a.mean:.2f}×")
    return 0
