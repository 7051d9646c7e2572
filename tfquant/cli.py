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
from .errors import GateError, RecipeError, TfquantError, naming
from .service import commands as service_commands
from .spec import SPECS, TRAINING

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def wrap(func):
        _COMMANDS[name] = func
        return func

    return wrap


_COMMANDS.update(serve=service_commands.serve, jobs=service_commands.jobs)


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


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, found {value}")
    return value


def _positive(text: str) -> int:
    return _whole(text, 1)


def _non_negative(text: str) -> int:
    return _whole(text, 0)


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
    p.add_argument("--allow-unsafe-models", action="store_true", help="load models that hold code (Lambda layers)")
    p.add_argument("--recipe", type=Path, help="replay the options of a recipe.json (or a whole report.json)")


def _add_spec(p: argparse.ArgumentParser, command: str) -> None:
    """The command's options, one flag per option of its spec (`tfquant.spec`)."""
    from .spec import SPECS, add_options

    add_options(p.add_argument_group(f"{command} options"), SPECS[command])


def _add_training_options(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("model", help=".keras, .h5 or SavedModel folder (tf_keras or Keras 3)")
    p.add_argument("--train", required=True, help="labelled training data")
    p.add_argument("--calib", help="calibration data for integer IO (default: the training data)")
    p.add_argument("--eval", dest="eval_data", help="labelled evaluation data")
    _add_spec(p, command)
    _add_output_options(p)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image folders")
    group.add_argument("--image-size", type=_image_size, metavar="HxW", help="resize images (default: the model's input size)")
    group.add_argument("--scale", type=float, default=1 / 255, help="pixel multiplier (default: 1/255)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tfquant", description="Keras model -> verified fully integer .tflite file")
    parser.add_argument("--version", action="version", version=f"tfquant {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="print each step and warning as a line on stderr (for logs; no progress display)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("convert", parents=[common], help="convert a Keras model and verify the file on the interpreter")
    p.add_argument("model", help=".keras, .h5, SavedModel folder or float32 .tflite file")
    p.add_argument("--calib", help="calibration data: .npz, .npy, .csv or an image folder")
    p.add_argument("--eval", dest="eval_data", help="labelled evaluation data (adds accuracy and agreement)")
    _add_spec(p, "convert")
    _add_output_options(p)
    _add_data_options(p)

    for name, about in (("qat", "quantization-aware fine-tuning, then full int8"),
                        ("prune", "magnitude pruning while fine-tuning, then full int8"),
                        ("cluster", "weight clustering (shared values) while fine-tuning, then full int8"),
                        ("optimize", "prune, then cluster, then QAT (any of them, in that order), each measured")):
        _add_training_options(sub.add_parser(name, parents=[common], help=about), name)

    p = sub.add_parser("diagnose", parents=[common], help="find the tensors and ops where int8 loses accuracy")
    p.add_argument("model", help=".keras, .h5, SavedModel folder or float32 .tflite file")
    p.add_argument("--calib", required=True, help="calibration data")
    p.add_argument("--eval", dest="eval_data", help="labelled data: debug samples come from it, and both accuracies")
    p.add_argument("--calib-samples", type=_positive, default=200)
    p.add_argument("--samples", type=_positive, default=64, help="samples the debugger runs (default: 64)")
    p.add_argument("--threshold", type=float, default=16.0, help="range ratio the lint warns above (default: 16)")
    p.add_argument("--top", type=_positive, default=15, help="tensors to list (default: 15)")
    p.add_argument("--no-split-joins", dest="split_joins", action="store_false",
                   help="look at the model's own joins, as convert --no-split-joins quantizes them")
    p.add_argument("--parallel", type=_positive, default=1,
                   help="ops of the sensitivity sweep measured at a time, in worker processes (default: 1)")
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
    p.add_argument("--store", metavar="PATH|URL",
                   help="job store: a SQLite file (default: DATA_DIR/jobs.sqlite) or postgresql://USER@HOST/DB, "
                        "which replicas share (pip install 'tfquant[postgres]')")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where jobs run: processes of this host (default), or Ray actors (pip install 'tfquant[ray]')")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="the Ray cluster to join (ray start --head); default: a local Ray on this machine")
    p.add_argument("--retries", type=_non_negative, default=0,
                   help="more attempts for a job whose worker process or node died (default: 0)")
    p.add_argument("--lease-seconds", type=_positive_float, default=30.0,
                   help="a replica that stops renewing its claims loses them to another after this (default: 30)")

    p = sub.add_parser("jobs", parents=[common], help="submit to and follow a converter service")
    p.add_argument("action", choices=["submit", "status", "wait", "download", "list", "cancel", "ready"],
                   help="ready: wait until the service answers (for scripts that start one)")
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
    p.add_argument("--timeout", type=float, default=60.0, help="ready: seconds to wait (default: 60)")

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
    p.add_argument("--runs", type=_positive, default=50, help="timed runs per file, at least (default: 50)")
    p.add_argument("--max-seconds", type=float, default=10.0,
                   help="runs go on until each median is known within +-5 %% or this long (default: 10)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=_positive)
    p.add_argument("--compare", type=Path, help="a second file, measured interleaved in the same run")
    p.add_argument("--json", action="store_true")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check the command line; every mistake that needs no model is reported here, at once.

    For `convert`, `qat` and `prune`, `ns.spec` holds the options as their spec (`tfquant.spec`).
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        with naming("command"):
            if ns.command in SPECS:
                ns.spec = _spec(ns)
            problem = _usage_problem(ns)
    except RecipeError as exc:
        problem = str(exc)
    if problem:
        parser.exit(2, f"tfquant {ns.command}: error: {problem} (see tfquant {ns.command} --help)\n")
    return ns


def _spec(ns: argparse.Namespace):
    """The spec from the flags given, over the options of `--recipe FILE` (which may not clash with them)."""
    from .spec import SPECS, from_flags, given_flags, replay

    cls = SPECS[ns.command]
    base = {}
    if ns.recipe is not None:
        try:
            text = ns.recipe.read_text()
        except OSError as exc:
            raise RecipeError(f"{ns.recipe}: expected a readable recipe JSON file, found {exc.strerror}") from None
        base = replay(text, cls, str(ns.recipe))
        clashes = [flag for name, flag in given_flags(ns, cls).items() if name in base]
        if clashes:
            raise RecipeError(f"{ns.recipe}: the recipe already sets {', '.join(clashes)}; pass one or the other")
    return from_flags(ns, cls, base)


def _usage_problem(ns: argparse.Namespace) -> Optional[str]:
    """What the options cannot do with the files given, found before TensorFlow is imported."""
    spec = getattr(ns, "spec", None)
    if spec is not None and spec.max_drop is not None and not ns.eval_data:
        return "--max-drop needs --eval: the drop is measured on evaluation data"
    if getattr(spec, "fallback", "off") == "auto" and not ns.eval_data:
        return "--fallback auto needs --eval: the ladder measures every candidate on evaluation data"
    if ns.command == "convert" and not ns.calib and spec.recipe.needs_calibration:
        return f"--mode {spec.mode} needs calibration data: pass --calib DATA"
    return None


def main(ns: argparse.Namespace) -> int:
    """Run a parsed command; return its exit code. Never raises a `TfquantError`.

    stderr carries the progress display (on a terminal), then at most one line: the error. In a
    pipe, with `-q` or with `--json`, only that line; `-v` adds each step and warning as a line.
    """
    import contextlib
    import os

    from . import console
    from .isolate import in_child

    sink = display = None
    if in_child() and os.environ.get(console.PROGRESS_FD):
        sink = console.PipeSink(int(os.environ[console.PROGRESS_FD]))  # the parent draws
    elif not ns.verbose and console.wants_display(quiet=ns.quiet, json_output=getattr(ns, "json", False)):
        sink = display = console.Display()
    _log_to(sink, verbose=ns.verbose and not ns.quiet)
    try:
        with naming("command"), console.showing(sink), display or contextlib.nullcontext():
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


class _CommandHandler(logging.Handler):
    """The library's log as the command shows it: warnings to the display (if any), every line to the
    crash-stage file, and with `-v` each step and warning as a line on the current stderr."""

    def __init__(self, sink, verbose: bool):
        super().__init__(logging.INFO)
        self.sink, self.verbose = sink, verbose

    def emit(self, record: logging.LogRecord) -> None:
        from .isolate import record_stage

        message = record.getMessage()
        record_stage(message)
        if self.verbose:
            print(f"tfquant: {'warning: ' if record.levelno >= logging.WARNING else ''}{message}", file=sys.stderr)
        elif record.levelno >= logging.WARNING and self.sink is not None:
            self.sink.warn(message)


def _log_to(sink, *, verbose: bool) -> None:
    logger = logging.getLogger("tfquant")
    for handler in [h for h in logger.handlers if isinstance(h, _CommandHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_CommandHandler(sink, verbose))
    logger.setLevel(logging.INFO)
    logger.propagate = False


# Commands whose work runs TensorFlow's native code: the console runs them in a watched child.
ISOLATED = ("convert", "diagnose", *TRAINING)


def run() -> None:  # pragma: no cover - console entry point
    from . import isolate

    argv = sys.argv[1:]
    ns = parse_args(argv)
    if ns.command in ISOLATED and not isolate.in_child():
        from .console import wants_display

        outputs = _output_paths(ns.output) if getattr(ns, "output", None) else []
        display = not ns.verbose and wants_display(quiet=ns.quiet, json_output=getattr(ns, "json", False))
        sys.exit(isolate.run_isolated(ns.command, argv, model=getattr(ns, "model", None), outputs=outputs,
                                      display=display))
    isolate.start_child()
    sys.exit(main(ns))


def _output_paths(output: Path) -> list[Path]:
    """Every file a converting command writes: the model, its reports and recipe.json (last)."""
    from .report import report_paths

    return [output, *report_paths(output.parent), output.parent / "recipe.json"]


def _images(ns: argparse.Namespace):
    from .data import ImageOptions

    return ImageOptions(size=ns.image_size, scale=ns.scale)


def _outputs(ns: argparse.Namespace) -> list[Path]:
    """Every file the command will write, checked before minutes of work, not after."""
    from .files import check_targets

    outputs = _output_paths(ns.output)
    check_targets(outputs, overwrite=ns.overwrite)
    return outputs


def _finish(ns: argparse.Namespace, result, outputs: list[Path]) -> int:
    from . import console
    from .report import to_text

    from .spec import recipe_file

    with console.step(f"writing {ns.output} and its reports"):
        result.save(ns.output, overwrite=ns.overwrite, reports=True, extra={outputs[-1]: recipe_file(result.report)})
    if ns.json:
        print(json.dumps(result.report.to_dict(), indent=2))
    elif not ns.quiet:
        print(to_text(result.report), end="")
        print("wrote " + ", ".join(str(p) for p in outputs))
    return 0


@command("convert")
def _convert(ns: argparse.Namespace) -> int:
    from .pipeline import quantize

    outputs = _outputs(ns)
    result = quantize(ns.model, ns.calib, eval_data=ns.eval_data, spec=ns.spec, images=_images(ns),
                      safe_mode=not ns.allow_unsafe_models)
    return _finish(ns, result, outputs)


def _training(ns: argparse.Namespace) -> dict:
    return dict(calibration_data=ns.calib, eval_data=ns.eval_data, spec=ns.spec,
                safe_mode=not ns.allow_unsafe_models)


def _train(ns: argparse.Namespace) -> int:
    """qat, prune, cluster, optimize: the spec's function, the same files and reports as convert."""
    from .spec import training_function

    outputs = _outputs(ns)
    return _finish(ns, training_function(ns.command)(ns.model, ns.train, **_training(ns)), outputs)


for _name in TRAINING:
    command(_name)(_train)


@command("diagnose")
def _diagnose(ns: argparse.Namespace) -> int:
    from .diagnose import diagnose, summary

    found = diagnose(ns.model, ns.calib, eval_data=ns.eval_data, calib_samples=ns.calib_samples, samples=ns.samples,
                     threshold=ns.threshold, safe_mode=not ns.allow_unsafe_models, split_joins=ns.split_joins,
                     parallel=ns.parallel)
    if ns.json:
        print(json.dumps(found.to_dict(), indent=2))
        return 0
    if found.float_accuracy is not None:
        print(f"accuracy: float32 {100 * found.float_accuracy:.2f} %, int8 {100 * found.int8_accuracy:.2f} % "
              f"({100 * (found.float_accuracy - found.int8_accuracy):.2f} pts drop)")
    if found.int8_output_error is not None:
        print(f"every op in int8: {found.int8_output_error:.4f} mean error at the outputs (the outputs column below: "
              "each op alone in int8)")
    print(summary(found.errors, ns.top))
    if found.range_lint:
        print()
        for warning in found.range_lint:
            print(f"warning: {warning.message}")
    else:
        print(f"\nrange lint: no join of inputs whose ranges differ more than {ns.threshold:g}×, "
              f"no sum {ns.threshold:g}× narrower than its input")
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
    from .timing import benchmark
    from .report import latency_text

    if ns.warmup < 0:
        raise RecipeError(f"--warmup: expected a whole number >= 0, found {ns.warmup}")
    files = [ns.tflite] + ([ns.compare] if ns.compare else [])
    results = benchmark(*files, runs=ns.runs, warmup=ns.warmup, num_threads=ns.threads, max_seconds=ns.max_seconds)
    if ns.json:
        payload = {"results": [r.to_dict() for r in results]}
        if len(results) == 2:
            payload["ratio_p50"] = results[1].inference_ms.p50 / results[0].inference_ms.p50
        print(json.dumps(payload, indent=2))
        return 0
    for r in results:
        lat = r.inference_ms
        p99 = "" if lat.p99 is None else f", p99 {lat.p99:.3f}"
        print(f"{r.model}: init {r.init_ms:.2f} ms, first {r.first_inference_ms:.3f} ms, "
              f"p50 {latency_text(lat)} ms, p90 {lat.p90:.3f}{p99}, mean {lat.mean:.3f} ± {lat.std:.3f}, "
              f"min {lat.min:.3f} ({r.num_runs} runs, {r.num_threads} threads)")
    first = results[0]
    print(f"peak memory {first.peak_memory_mb:.1f} MB, {first.runtime.name} {first.runtime.version}")
    if len(results) == 2:
        a, b = results[0].inference_ms, results[1].inference_ms
        print(f"{ns.compare.name} / {ns.tflite.name}: p50 {b.p50 / a.p50:.2f}×, p90 {b.p90 / a.p90:.2f}×, "
              f"mean {b.mean / a.mean:.2f}×")
    return 0
