"""The interpreter harness against the plain TensorFlow flow, side by side, in one run: `make bench`.

Per bench model: accuracy and bytes of each mode's file, evaluation throughput of `tfquant eval`
against the tutorial's per-sample loop and bare batched invokes, latency per mode, the fallback
ladder's cost, and the converter service. The whole `tfquant convert` command against the
tutorial flow is `bench/command.py`. Writes bench/results.json and bench/results.md, and puts the
table into README.md between the bench markers. Every comparison runs both flows in the same run,
interleaved, `--reps` times, and reports the median and the ratio. Targets are checked and printed
as met or missed.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import models as bench_models  # noqa: E402
from bench.baselines.tutorial import evaluate_per_sample  # noqa: E402
from bench.publish import publish, update_readme  # noqa: E402

TARGETS = {
    "eval_speedup_digits": 3.0,
    "eval_speedup_mobilenetv2_96": 1.8,
    "harness_overhead": 0.10,
    "int8_bytes_ratio": 0.30,
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def environment() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {name: metadata.version(name) for name in
                ("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "numpy", "tfquant")}
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "versions": versions}


def throughput(int8: bytes, x: np.ndarray, y: np.ndarray, reps: int) -> dict:
    """tfquant eval vs the tutorial's per-sample loop vs bare batched invokes, samples per second."""
    from ai_edge_litert.interpreter import Interpreter

    import tfquant
    from tfquant.harness import DEFAULT_BATCH, default_threads

    threads = default_threads()

    def harness():  # what `tfquant eval` does: load the file, check the data, run every batch
        started = time.perf_counter()
        tfquant.evaluate(int8, (x, y), num_threads=threads, progress=False)
        return time.perf_counter() - started

    def per_sample():  # the tutorial's loop, interpreter creation included
        started = time.perf_counter()
        evaluate_per_sample(int8, x, y)
        return time.perf_counter() - started

    def bare():
        interpreter = Interpreter(model_content=int8, num_threads=threads)
        detail = interpreter.get_input_details()[0]
        scale, zero = detail["quantization"]
        q = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)  # prepared outside the timing
        out = interpreter.get_output_details()[0]["index"]
        interpreter.resize_tensor_input(detail["index"], (DEFAULT_BATCH,) + x.shape[1:])
        interpreter.allocate_tensors()
        started = time.perf_counter()
        for start in range(0, len(q), DEFAULT_BATCH):
            chunk = q[start:start + DEFAULT_BATCH]
            if len(chunk) != DEFAULT_BATCH:
                interpreter.resize_tensor_input(detail["index"], chunk.shape)
                interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], chunk)
            interpreter.invoke()
            interpreter.get_tensor(out)
        return time.perf_counter() - started

    flows = [("tfquant", harness), ("per_sample", per_sample), ("bare_batched", bare)]
    for _, run in flows:  # untimed: the process's first invokes pay a one-time runtime warm-up
        run()
    times = {name: [] for name, _ in flows}
    for rep in range(reps):
        for name, run in flows[rep % 3:] + flows[:rep % 3]:  # interleaved, the order rotating
            times[name].append(run())
    rate = {k: len(x) / statistics.median(v) for k, v in times.items()}
    return {"samples_per_s": rate, "threads": threads, "speedup": rate["tfquant"] / rate["per_sample"],
            "overhead": rate["bare_batched"] / rate["tfquant"] - 1}


def files_and_accuracy(name: str, spec: dict) -> tuple[dict, dict]:
    import tfquant

    results, files = {}, {}
    for mode in ("int8", "dynamic", "float16"):
        result = tfquant.quantize(spec["path"], spec["calib"], mode=mode, eval_data=(spec["x_test"], spec["y_test"]),
                                  bench_runs=3, diagnose=False, progress=False)
        files[mode] = result.tflite
        files["float32"] = result.float_tflite
        results[mode] = result.report.quantized.accuracy
        results["float32"] = result.report.float_file.accuracy
    sizes = {k: {"bytes": len(v), "gzip": len(gzip.compress(v, 9, mtime=0))} for k, v in files.items()}
    return {"accuracy": results, "sizes": sizes}, files


def latency(files: dict) -> dict:
    from tfquant.timing import benchmark

    out = {}
    for threads in (1, 2):
        names = list(files)
        results = benchmark(*(files[n] for n in names), runs=100, warmup=10, num_threads=threads)
        out[str(threads)] = {n: r.inference_ms.p50 for n, r in zip(names, results)}
    return out


def qat_accuracy(spec: dict) -> float:
    import tfquant

    x, y, _, _ = bench_models.digits()
    result = tfquant.qat(spec["path"], (x, y), epochs=2, eval_data=(spec["x_test"], spec["y_test"]), bench_runs=2)
    return result.report.quantized.accuracy


def ladder_timing(reps: int) -> dict:
    """The fallback ladder on a model that needs it (its mismatched join as it is), against one plain int8
    conversion of it."""
    import tfquant
    from tfquant import zoo

    x, y, x_test, y_test = bench_models.digits()
    path = bench_models.CACHE / "mismatched_concat.keras"
    if not path.exists():
        model = zoo.mismatched_concat()
        zoo.fit_classifier(model, x, y, epochs=20)
        model.save(path)
    plain, ladder, candidates = [], [], 0
    for _ in range(reps):
        for fallback in ("off", "auto"):
            options = {"max_drop": 0.01, "fallback": "auto"} if fallback == "auto" else {}
            options["split_joins"] = False
            try:
                result = tfquant.quantize(path, x[:200], eval_data=(x_test, y_test), bench_runs=2, **options)
            except tfquant.AccuracyBudgetError as exc:
                result = exc.result
            seconds = result.report.seconds
            spent = seconds["calibrate"] + seconds["convert"] + seconds.get("diagnose", 0)
            (ladder if fallback == "auto" else plain).append(spent)
            candidates = len(result.report.ladder) or candidates
    return {"plain_seconds": statistics.median(plain), "ladder_seconds": statistics.median(ladder),
            "ratio": statistics.median(ladder) / statistics.median(plain), "candidates": candidates}


def markdown(results: dict) -> str:
    env = results["environment"]
    v = env["versions"]
    lines = [
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores), Python {env['python']}, TensorFlow "
        f"{v['tensorflow']}, tfmot {v['tensorflow-model-optimization']}, ai-edge-litert {v['ai-edge-litert']}, "
        f"tfquant {v['tfquant']}. Medians of {results['reps']} interleaved repetitions; baseline = TensorFlow's "
        "post-training integer quantization tutorial (`bench/baselines/tutorial.py`).",
        "",
        "| model | float acc | int8 acc | QAT int8 acc | float bytes | int8 bytes (gzip) | int8/float | "
        "eval samples/s: tfquant / per-sample loop | harness overhead |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results["models"].items():
        acc, sizes, tp = r["accuracy"], r["sizes"], r["throughput"]
        qat = "–" if r.get("qat_accuracy") is None else f"{100 * r['qat_accuracy']:.2f} %"
        lines.append(
            f"| {name} | {100 * acc['float32']:.2f} % | {100 * acc['int8']:.2f} % | {qat} | {sizes['float32']['bytes']:,} | "
            f"{sizes['int8']['bytes']:,} ({sizes['int8']['gzip']:,}) | {sizes['int8']['bytes'] / sizes['float32']['bytes']:.2f}× | "
            f"{tp['samples_per_s']['tfquant']:,.0f} / {tp['samples_per_s']['per_sample']:,.0f} ({tp['speedup']:.1f}×) | "
            f"{100 * tp['overhead']:+.1f} % |")
    lines += ["", "Latency p50 (ms) on the interpreter, batch 1:", "",
              "| model | threads | float32 | int8 | dynamic | float16 | int8/float32 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results["models"].items():
        for threads, lat in r["latency_ms_p50"].items():
            lines.append(f"| {name} | {threads} | {lat['float32']:.3f} | {lat['int8']:.3f} | {lat['dynamic']:.3f} | "
                         f"{lat['float16']:.3f} | {lat['int8'] / lat['float32']:.2f}× |")
    lad = results["ladder"]
    lines += ["", f"Fallback ladder on the mismatched-concat model: {lad['ladder_seconds']:.2f} s for "
              f"{lad['candidates']} candidates against {lad['plain_seconds']:.2f} s for one plain int8 conversion "
              f"({lad['ratio']:.2f}×; calibration runs once, candidates are quantized from it)."]
    svc = results.get("service")
    if svc:
        from bench import service

        lines += ["", "Converter service:", "", service.markdown(svc, results["environment"]).rstrip()]
    lines += ["", "Targets:", ""] + [f"- {line}" for line in results["verdicts"]]
    return "\n".join(lines) + "\n"


def verdicts(results: dict) -> list[str]:
    models, out = results["models"], []

    def check(label: str, value: float, target: float, higher: bool, fmt: str) -> None:
        met = value >= target if higher else value <= target
        out.append(f"{'met' if met else 'MISSED'}: {label}: {fmt.format(value)} (target {'≥' if higher else '≤'} "
                   f"{fmt.format(target)})")

    check("eval speed-up on the digits CNN", models["digits_cnn"]["throughput"]["speedup"], TARGETS["eval_speedup_digits"], True, "{:.2f}×")
    check("eval speed-up on MobileNetV2 96×96", models["mobilenetv2_96"]["throughput"]["speedup"],
          TARGETS["eval_speedup_mobilenetv2_96"], True, "{:.2f}×")
    for name, r in models.items():
        check(f"harness overhead over bare batched invokes, {name}", r["throughput"]["overhead"], TARGETS["harness_overhead"], False, "{:.1%}")
        sizes = r["sizes"]
        check(f"int8 bytes / float bytes, {name}", sizes["int8"]["bytes"] / sizes["float32"]["bytes"], TARGETS["int8_bytes_ratio"], False, "{:.2f}×")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="model names to run (default: all)")
    args = parser.parse_args()

    results = {"environment": environment(), "reps": args.reps, "targets": TARGETS, "models": {}}
    specs = bench_models.build_all(log)
    for name, spec in specs.items():
        if args.only and name not in args.only:
            continue
        log(f"{name}: files and accuracy")
        row, files = files_and_accuracy(name, spec)
        log(f"{name}: evaluation throughput")
        row["throughput"] = throughput(files["int8"], spec["x_test"], spec["y_test"], args.reps)
        log(f"{name}: latency")
        row["latency_ms_p50"] = latency(files)
        row["qat_accuracy"] = qat_accuracy(spec) if name == "digits_cnn" else None
        results["models"][name] = row
    log("fallback ladder")
    results["ladder"] = ladder_timing(args.reps)
    log("converter service")
    from bench import service

    digits_spec = specs["digits_cnn"]
    results["service"] = service.run(digits_spec["path"], digits_spec["calib"])
    update_readme("service-bench", service.markdown(results["service"], results["environment"]))
    results["verdicts"] = verdicts(results)
    table = markdown(results)
    publish("results", results, table, marker="bench", readme=not args.only)
    print(table)


if __name__ == "__main__":
    main()
