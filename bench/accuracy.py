"""What each int8 technique contributes, model by model: `python bench/accuracy.py`.

On the same float file and the same calibration samples, int8 files made with the techniques
added one at a time, and LiteRT Quantizer's `static_wi8_ai8` for comparison:

- min/max: TFLiteConverter's calibration as it is (no range choice, no bias correction, joins as they are);
- + ranges: activation ranges chosen on held-out calibration samples (`ranges="auto"`);
- + bias correction: the mean shift of int8 weight rounding folded into the biases;
- tfquant default: the above and mismatched joins split (`split_joins`);
- + MSE weight scales: the default with each weight channel's int8 scale clipped to its least
  squared error (`weight_scales="mse"`, not the default);
- + GPTQ rounding: the default with each weight op's int8 values rounded against its input's
  second moments on the calibration samples (`weight_rounding="gptq"`, not the default);
- LiteRT Quantizer: `--quantizer litert`;
- per-tensor weight scales (`per_channel=False`, as some accelerators require): min/max alone,
  tfquant's default without cross-layer equalization, and the default (equalized: `equalize`).

Each cell: top-1 accuracy on the held-out digits (and whether the file is fully integer). Models:
the zoo's keras.applications CNNs (Keras 3, trained as `bench/command.py` trains and caches them)
and the mismatched-concatenation model. Writes bench/accuracy.json, bench/accuracy.md and the
README's table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

TECHNIQUES = {
    "min/max": dict(ranges="minmax", bias_correction=False, split_joins=False),
    "+ ranges": dict(ranges="auto", bias_correction=False, split_joins=False),
    "+ bias correction": dict(ranges="auto", bias_correction=True, split_joins=False),
    "tfquant default": {},
    "+ MSE weight scales": dict(weight_scales="mse"),
    "+ GPTQ rounding": dict(weight_rounding="gptq"),
    "LiteRT Quantizer": dict(quantizer="litert"),
    "per-tensor: min/max": dict(per_channel=False, ranges="minmax", bias_correction=False, split_joins=False,
                                equalize=False),
    "per-tensor: default, not equalized": dict(per_channel=False, equalize=False),
    "per-tensor: default": dict(per_channel=False),
}


def log(message: str) -> None:
    print(f"[accuracy {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(name: str, files: dict[str, Path]) -> dict:
    from bench.models import quantize_measured

    row: dict = {"model": name, "cells": {}, "measured": time.strftime("%Y-%m-%d")}
    for technique, options in TECHNIQUES.items():
        started = time.perf_counter()
        result, error = quantize_measured(files["model"], files["calib"], eval_data=files["eval"], bench_runs=5,
                                          diagnose=False, **options)
        if result is None:
            row["cells"][technique] = {"error": error[:200]}
            continue
        report = result.report
        row["float"] = report.float_file.accuracy
        row["cells"][technique] = {"accuracy": report.quantized.accuracy, "fully_integer": report.quantized.fully_integer,
                                   "agreement": None if report.agreement is None else report.agreement.top1,
                                   "seconds": round(time.perf_counter() - started, 1)}
        log(f"{name}: {technique}: {report.quantized.accuracy}")
    return row


def markdown(rows: list[dict], environment: dict) -> str:
    from bench.publish import dates_note

    lines = [f"Measured {environment['date']} on {environment['cpu']} ({environment['cores']} cores), TensorFlow "
             f"{environment['versions']['tensorflow']}, `bench/accuracy.py`: the same float file and calibration "
             "samples, top-1 accuracy of each int8 file on the held-out digits (change from float in points; "
             "`*` marks a file that is not fully integer) and its top-1 agreement with the float file (the share "
             "of samples whose class is unchanged: one changed prediction moves accuracy by 0.28 points either way, "
             "agreement only down).", "",
             "| model | float | " + " | ".join(TECHNIQUES) + " |", "| --- | ---: |" + " ---: |" * len(TECHNIQUES)]
    for r in rows:
        cells = []
        for technique in TECHNIQUES:
            cell = r["cells"].get(technique, {})
            if "accuracy" not in cell or cell["accuracy"] is None:
                cells.append("error")
                continue
            change = 100 * (cell["accuracy"] - r["float"])
            agrees = "" if cell.get("agreement") is None else f" · {100 * cell['agreement']:.1f} %"
            cells.append(f"{100 * cell['accuracy']:.2f} % ({change:+.2f}){'' if cell['fully_integer'] else ' *'}"
                         f"{agrees}")
        lines.append(f"| {r['model']} | {100 * r['float']:.2f} % | " + " | ".join(cells) + " |")
    lines += dates_note(rows, environment["date"], EARLIER)
    return "\n".join(lines) + "\n"


MISMATCHED = "mismatched_concat"
EARLIER = "2026-11-26"  # rows of bench/accuracy.json written before each row carried its date


def mismatched(folder: Path) -> dict[str, Path]:
    """The mismatched-concatenation model (trained once, cached) and its data."""
    import numpy as np

    from bench.models import CACHE, digits
    from tfquant import zoo

    path = CACHE / f"{MISMATCHED}.keras"
    x, y, x_test, y_test = digits()
    if not path.exists():
        model = zoo.mismatched_concat()
        zoo.fit_classifier(model, x, y, epochs=20)
        model.save(path)
    np.savez(folder / "mm_calib.npz", x=x[:200])
    np.savez(folder / "mm_eval.npz", x=x_test, y=y_test)
    return {"model": path, "calib": folder / "mm_calib.npz", "eval": folder / "mm_eval.npz"}


def main() -> None:
    from bench.command import models
    from bench.publish import publish_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--merge", action="store_true", help="keep the rows of bench/accuracy.json this run does not redo")
    args = parser.parse_args()
    only = set(args.only or [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfquant-accuracy-") as tmp:
        folder = Path(tmp)
        found = models(folder, sorted(only - {MISMATCHED}) or None) if not only or only - {MISMATCHED} else {}
        if not only or MISMATCHED in only:
            found[MISMATCHED] = mismatched(folder)
        for name, files in found.items():
            log(f"{name}")
            rows.append(measure(name, files))
    publish_rows("accuracy", rows, markdown, only=args.only, merge=args.merge, key=lambda r: r["model"])


if __name__ == "__main__":
    main()
