"""A CNN's int8 loss measured on all 1,797 digits, by five-fold cross-validation: `python bench/folds.py`.

    python bench/folds.py [--only NAME ...] [--versions 3 2] [--folds 5] [--samples 200] [--models DIR] [--merge]

On the zoo's 359 held-out digits the standard error of an int8 file's accuracy difference from
float is 0.5–1 point, as large as the budget it is checked against. Here each zoo CNN is trained
`--folds` times as `bench/zoo.py` trains it, each time on all digits but one fold
(`tfquant.zoo.folds`: stratified, every digit held out once), and converted on `--samples` of
that fold's training digits drawn at random (seed = fold), by `tfquant.quantize` with default
options and by LiteRT Quantizer (`--quantizer litert`) on the same float file and samples, and by
tfquant with two techniques `auto` does not choose for a classifier: MSE ranges and GPTQ weight
rounding. Every digit is then predicted by a float file and four int8 files that never saw it, so
each difference is measured on 1,797 paired predictions, with the standard error of that paired
difference (±: the sample standard deviation of the per-digit difference in correctness, / √1,797).

A second table puts rounding and clipping apart: the same float files at int16x8 (int8 weights,
activation steps 256 times finer than int8's), once with the calibrator's min/max ranges and once
with LiteRT Quantizer's (`--ranges average`, which clip), neither bias-corrected. What the first
loses is mostly weight rounding; what the second gains or loses beside it is the clipping alone.

Writes bench/folds.json, bench/folds.md and the README's table.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

# tfquant's defaults, LiteRT Quantizer, and two of tfquant's techniques that `auto` does not choose for a classifier;
# then rounding and clipping apart (`APART`): int16x8, whose activation steps are 256 times finer than int8's, with
# the calibrator's min/max and with LiteRT Quantizer's ranges, neither bias-corrected.
QUANTIZERS = {"tfquant": {}, "litert": {"quantizer": "litert"}, "mse": {"ranges": "mse"},
              "gptq": {"weight_rounding": "gptq"}, "int16": {"mode": "int16x8", "bias_correction": False},
              "clip": {"mode": "int16x8", "ranges": "average", "bias_correction": False}}
HEADINGS = {"tfquant": "tfquant int8 (defaults)", "litert": "LiteRT Quantizer int8", "mse": "tfquant, MSE ranges",
            "gptq": "tfquant, GPTQ rounding", "int16": "int16x8, min/max", "clip": "int16x8, LiteRT's ranges"}
APART = ("int16", "clip")
INT8 = tuple(q for q in QUANTIZERS if q not in APART)
BESIDE = APART + ("litert",)  # the second table's columns
PAIR = ("tfquant", "litert")  # every fold counted has both


def log(message: str) -> None:
    print(f"[folds {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def predictions(data: bytes, inputs: dict) -> str:
    """The class the file gives each sample, run on the interpreter (as `_text`)."""
    from tfquant.data import Dataset
    from tfquant.harness import Runner

    runner = Runner(data)
    outputs = runner.predict(Dataset("held-out fold", inputs), progress=False)
    return _text(np.argmax(outputs[runner.outputs[0].name], axis=-1))


def fold_run(name: str, version: int, fold: int, source, folder: Path, samples: int,
             models: Optional[Path] = None, quantizers: Optional[dict] = None) -> dict:
    """One fold: train on the rest (or load what an earlier run kept in `models`), convert with each
    quantizer, predict the fold's digits."""
    from bench.models import quantize_measured
    from tfquant import zoo
    from tfquant.types import Recipe

    started = time.perf_counter()
    path = (models or folder) / f"{name}_k{version}_fold{fold}.keras"
    if path.exists():  # trained by an earlier run with the same zoo
        data = zoo.ZOO[name].data(source=source)
    else:
        model, data = zoo.train(name, version, source=source)
        model.save(path)
    trained = time.perf_counter() - started
    inputs = {k: v for k, v in data.train.items() if not k.startswith("y")}
    test_inputs = {k: v for k, v in data.test.items() if not k.startswith("y")}
    count = len(next(iter(inputs.values())))
    chosen = np.sort(np.random.default_rng(fold).choice(count, size=min(samples, count), replace=False))
    # A single input's array is named `x`, which means the model's only input whatever Keras named it.
    named = (lambda key: "x") if len(inputs) == 1 else (lambda key: key)
    calib = folder / f"{name}_k{version}_calib{fold}.npz"
    np.savez(calib, **{named(k): v[chosen] for k, v in inputs.items()})
    test = folder / f"{name}_k{version}_test{fold}.npz"
    np.savez(test, **{(k if k.startswith("y") else named(k)): v for k, v in data.test.items()})
    run: dict = {"fold": fold, "y": _text(data.test["y"]), "train_seconds": round(trained, 1)}
    float_file = None
    for quantizer, options in (quantizers or QUANTIZERS).items():
        begun = time.perf_counter()
        result, error = quantize_measured(path, calib, eval_data=test, bench_runs=1, diagnose=False,
                                          recipe=Recipe(**options) if options else None)
        if result is None:
            run[quantizer] = {"error": error}
            continue
        if float_file is None:
            float_file = result.float_tflite
            run["float"] = predictions(float_file, test_inputs)
        run[quantizer] = {"predictions": predictions(result.tflite, test_inputs), "bytes": len(result.tflite),
                          "fully_integer": result.report.quantized.fully_integer,
                          "same_float_file": result.float_tflite == float_file,
                          "seconds": round(time.perf_counter() - begun, 1), **({"error": error} if error else {})}
    return run


def row(name: str, version: int, folder: Path, count: int, samples: int, models: Optional[Path] = None) -> dict:
    from tfquant import zoo

    runs = []
    for fold, source in enumerate(zoo.folds(count)):
        runs.append(fold_run(name, version, fold, source, folder, samples, models))
        s = summary({"folds": runs})
        log(f"{name} (Keras {version}) fold {fold}: float {s['float']['accuracy']:.4f}, " + ", ".join(
            f"{q} {s[q]['accuracy']:.4f}" if q in s else f"{q} error" for q in QUANTIZERS) + " (folds so far)")
    return {"model": name, "keras": version, "measured": time.strftime("%Y-%m-%d"), "samples": samples,
            "folds": runs}


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of a - b over the samples, and its standard error."""
    d = (a - b).astype(np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


def summary(r: dict) -> dict:
    """Accuracy of float and of each quantizer over the folds both of `PAIR` converted, with the paired
    differences and their standard errors; another quantizer only where it converted every one of them."""
    done = [f for f in r["folds"] if "float" in f and all("predictions" in f.get(q, {}) for q in PAIR)]
    if not done:
        return {"folds": 0}
    ran = [q for q in QUANTIZERS if all("predictions" in f.get(q, {}) for f in done)]
    labels = [_classes(f["y"]) for f in done]
    floats = [_classes(f["float"]) for f in done]
    y = np.concatenate(labels)
    classes = {"float": np.concatenate(floats), **{q: np.concatenate([_classes(f[q]["predictions"]) for f in done])
                                                     for q in ran}}
    correct = {name: (given == y).astype(np.int64) for name, given in classes.items()}
    by_fold = [float(np.mean(given == truth)) for given, truth in zip(floats, labels)]
    out: dict = {"folds": len(done), "samples": len(y),
                 "float": {"accuracy": float(correct["float"].mean()), "low": min(by_fold), "high": max(by_fold)}}
    for q in ran:
        below, se = _paired(correct["float"], correct[q])
        out[q] = {"accuracy": float(correct[q].mean()), "below": below, "se": se,
                  "agreement": float(np.mean(classes[q] == classes["float"])),
                  "fully_integer": all(f[q]["fully_integer"] for f in done)}
    out["ahead"] = _paired(correct["tfquant"], correct["litert"])
    return out


def _text(classes) -> str:
    """Classes as one string, "3 0 7 ...": bench/folds.json keeps each fold's list on one line."""
    return " ".join(str(int(c)) for c in classes)


def _classes(text: str) -> np.ndarray:
    return np.array([int(c) for c in text.split()], dtype=np.int64)


def markdown(rows: list[dict], environment: dict) -> str:
    from bench.publish import dates_note
    from tfquant import zoo

    order = list(zoo.ZOO)
    rows = sorted(rows, key=lambda r: (order.index(r["model"]) if r["model"] in order else len(order), -r["keras"]))

    folds = max(len(r["folds"]) for r in rows)
    samples = rows[0]["samples"]
    day = max(r.get("measured", environment["date"]) for r in rows)  # of the rows' runs; columns run again are named
    lines = [f"Measured {day} on {environment['cpu']} ({environment['cores']} cores), "
             f"TensorFlow {environment['versions']['tensorflow']}, `bench/folds.py`: each CNN trained {folds} times "
             f"as in `bench/zoo.py`, each time on every digit outside one of {folds} stratified folds, and converted "
             f"on {samples} of those training digits by tfquant's defaults and by LiteRT Quantizer on the same float "
             "file, and by tfquant with MSE ranges (`--ranges mse`) and with GPTQ weight rounding (`--weight-rounding "
             "gptq`); accuracy on the held-out folds, so every one of the 1,797 digits is predicted once by models "
             "that never saw it. ± is the standard error of the paired difference over those predictions.",
             f"Float: over all digits (the lowest–highest of the {folds} models, each on its own fold). "
             "Each other cell: accuracy (below float ± standard error) · top-1 agreement with float.", "",
             "| model | Keras | float | " + " | ".join(HEADINGS[q] for q in INT8)
             + " | tfquant − LiteRT | fully integer |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in INT8) + " | ---: | --- |"]
    apart = []  # the second table's rows
    for r in rows:
        s = summary(r)
        head = f"| {r['model']} | {r['keras']} | "
        if not s["folds"]:
            lines.append(head + "– | " + " | ".join("error" for _ in INT8) + " | – | – |")
            continue
        integer = all(s[q]["fully_integer"] for q in INT8 if q in s)
        head += f"{_pct(s['float']['accuracy'])} ({100 * s['float']['low']:.1f}–{100 * s['float']['high']:.1f}) | "
        lines.append(head + " | ".join(_cell(s, q) for q in INT8) + f" | {_pts(*s['ahead'])} pts | "
                     + ("yes" if integer else "NO") + " |")
        if any(q in s for q in APART):
            apart.append(head + " | ".join(_cell(s, q) for q in BESIDE) + " |")
    lines += dates_note(rows, day, day) + _columns_again(rows)
    if apart:
        lines += ["", "Rounding and clipping apart, on the same folds and float files: int16x8 (int8 weights, int16 "
                      "activations whose steps are 256 times finer than int8's) with the calibrator's min/max ranges, "
                      "and with LiteRT Quantizer's (`--mode int16x8 --ranges average`: the mean over samples of each "
                      "sample's extremes, which clips), neither bias-corrected; LiteRT Quantizer's int8 file again "
                      "beside them.", "",
                  "| model | Keras | float | " + " | ".join(HEADINGS[q] for q in BESIDE) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in BESIDE) + " |"] + apart
    return "\n".join(lines) + "\n"


def _columns_again(rows: list[dict]) -> list[str]:
    """A line per day on which some columns were run again on a row's kept models (a fold's quantizer entry
    with its own `measured` date, later than its row's)."""
    again: dict[str, set] = {}
    for r in rows:
        for f in r["folds"]:
            for q in QUANTIZERS:
                date = f.get(q, {}).get("measured", r.get("measured"))
                if date != r.get("measured"):
                    again.setdefault(date, set()).add(q)
    return ["", *(f"Run again on {date}, on the same trained models, float files and calibration samples: "
                  + ", ".join(HEADINGS[q] for q in QUANTIZERS if q in names) + "."
                  for date, names in sorted(again.items()))] if again else []


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _pts(value: float, se: float) -> str:
    return f"{100 * value:+.2f} ± {100 * se:.2f}"


def _cell(s: dict, q: str) -> str:
    """Accuracy (below float ± standard error) · agreement with float; empty where `q` did not run."""
    return f"{_pct(s[q]['accuracy'])} ({_pts(s[q]['below'], s[q]['se'])}) · {100 * s[q]['agreement']:.1f} %" \
        if q in s else ""


def main() -> None:
    from bench.models import cnn_bench_arguments, zoo_cnns
    from bench.publish import publish_rows

    parser = cnn_bench_arguments(__doc__.splitlines()[0], "folds", "fold")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--models", type=Path, help="a folder to keep the trained models in, and to load them from "
                                                      "where an earlier run kept them")
    args = parser.parse_args()
    names = zoo_cnns(args.only)
    if args.models:
        args.models.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfquant-folds-") as tmp:
        for name in names:
            for version in args.versions:
                log(f"{name} (Keras {version})")
                rows.append(row(name, version, Path(tmp), args.folds, args.samples, args.models))
    publish_rows("folds", rows, markdown, only=args.only, merge=args.merge, key=lambda r: (r["model"], r["keras"]))


if __name__ == "__main__":
    main()
