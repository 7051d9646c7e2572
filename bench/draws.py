"""How much the choice of calibration samples moves a CNN's int8 accuracy: `python bench/draws.py`.

    python bench/draws.py [--only NAME ...] [--versions 3 2] [--draws 5] [--samples 200]

On 359 held-out digits one changed prediction moves accuracy by 0.28 points, and which 200
training digits calibrate a file changes a few predictions. So a single zoo row cannot tell
tfquant from LiteRT Quantizer, or a 0.5-point budget from a miss, where they differ by a sample
or two. Here each zoo CNN is trained once (as `bench/zoo.py` trains it) and converted
`--draws` times, each time on another `--samples` training digits drawn at random (seed = draw),
by `tfquant.quantize` with default options, by LiteRT Quantizer (`--quantizer litert`) on the
same float file and samples, and by tfquant with LiteRT Quantizer's range estimator
(`--ranges average`, the moving average of each sample's extremes): where LiteRT Quantizer's
file is the more accurate, the third says whether its ranges are why. Each row: float accuracy,
then for each the mean, lowest and highest int8 accuracy over the draws, its difference from
float with a bound on that difference's standard error on this test set (what another test set
of the same size could move it by), the mean top-1 agreement with float, and the draws on which
tfquant's file is at least as accurate as LiteRT Quantizer's. A row measured before the third was added leaves its cells empty.

Writes bench/draws.json, bench/draws.md and the README's table.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

QUANTIZERS = {"tfquant": {}, "litert": {"quantizer": "litert"}, "average": {"ranges": "average"}}
HELD_OUT = 359  # the zoo's held-out digits: the test size of rows measured before it was stored
HEADINGS = {"tfquant": "tfquant int8", "litert": "LiteRT Quantizer int8", "average": "tfquant, LiteRT's ranges"}


def log(message: str) -> None:
    print(f"[draws {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def convert(path: Path, calib: Path, test: Path, options: dict) -> dict:
    """One int8 file of `path` on `calib`, measured on `test` (a classifier's first output)."""
    from bench.models import quantize_measured
    from tfquant.types import Recipe

    started = time.perf_counter()
    recipe = Recipe(**options) if options else None
    result, error = quantize_measured(path, calib, eval_data=test, bench_runs=1, diagnose=False, recipe=recipe)
    if result is None:
        return {"error": error, "seconds": round(time.perf_counter() - started, 1)}
    output = result.report.outputs[0]
    return {"seconds": round(time.perf_counter() - started, 1), "fully_integer": result.report.quantized.fully_integer,
            "float": output.float.accuracy, "accuracy": output.quantized.accuracy,
            "agreement": output.quantized.agreement}


def row(name: str, version: int, folder: Path, draws: int, samples: int) -> dict:
    import numpy as np

    from tfquant import zoo

    model, data = zoo.train(name, version)
    path = folder / f"{name}_k{version}.keras"
    model.save(path)
    test = folder / f"{name}_test.npz"
    np.savez(test, **data.test)
    inputs = {k: v for k, v in data.train.items() if not k.startswith("y")}
    count = len(next(iter(inputs.values())))
    runs = []
    for draw in range(draws):
        chosen = np.sort(np.random.default_rng(draw).choice(count, size=min(samples, count), replace=False))
        calib = folder / f"{name}_calib_{draw}.npz"
        np.savez(calib, **{k: v[chosen] for k, v in inputs.items()})
        runs.append({quantizer: convert(path, calib, test, options) for quantizer, options in QUANTIZERS.items()})
        log(f"{name} (Keras {version}) draw {draw}: " + ", ".join(
            f"{q} {r.get('accuracy', r.get('error'))}" for q, r in runs[-1].items()))
    return {"model": name, "keras": version, "measured": time.strftime("%Y-%m-%d"), "samples": samples,
            "test_samples": len(data.test["y"]), "draws": runs}


def summary(r: dict) -> dict:
    """Per quantizer: mean, lowest and highest accuracy and mean agreement over the draws without an error."""
    out: dict = {}
    for quantizer in QUANTIZERS:
        done = [d[quantizer] for d in r["draws"] if "accuracy" in d.get(quantizer, {})]
        if not done:
            continue
        accuracy = [d["accuracy"] for d in done]
        # The standard error of a paired accuracy difference on n samples is at most sqrt(changed) / n,
        # where `changed` counts the samples whose class int8 changes: what another test set of the
        # same size would move the difference by.
        n = r.get("test_samples", HELD_OUT)
        se = [math.sqrt((1 - d["agreement"]) * n) / n for d in done]
        out[quantizer] = {"mean": sum(accuracy) / len(accuracy), "low": min(accuracy), "high": max(accuracy),
                          "agreement": sum(d["agreement"] for d in done) / len(done), "draws": len(done),
                          "se": sum(se) / len(se), "fully_integer": all(d["fully_integer"] for d in done)}
    floats = [d[q]["float"] for d in r["draws"] for q in QUANTIZERS if "float" in d.get(q, {})]
    out["float"] = floats[0] if floats else None
    out["at_least_litert"] = sum(1 for d in r["draws"] if "accuracy" in d["tfquant"] and "accuracy" in d["litert"]
                                 and d["tfquant"]["accuracy"] >= d["litert"]["accuracy"])
    return out


def markdown(rows: list[dict], environment: dict) -> str:
    from bench.publish import dates_note

    draws = max(len(r["draws"]) for r in rows)
    samples = rows[0]["samples"]
    lines = [f"Measured {environment['date']} on {environment['cpu']} ({environment['cores']} cores), "
             f"TensorFlow {environment['versions']['tensorflow']}, `bench/draws.py`: each CNN trained once as in "
             f"`bench/zoo.py`, then converted {draws} times, each on another {samples} training digits drawn at "
             "random, by tfquant's defaults, by LiteRT Quantizer and by tfquant with LiteRT Quantizer's ranges "
             "(`--ranges average`) on the same float file and samples; "
             "accuracy on the 359 held-out digits as the mean over the draws (lowest–highest), with the mean "
             "top-1 agreement with float. Below float: ± a bound on the standard error of the paired difference on "
             "this test set, √(predictions int8 changes) / 359 (about 0.7 points at 98 % agreement): another 359 "
             "digits could move the difference by about that much, whatever the draws.", "",
             "| model | Keras | float | " + " | ".join(f"{HEADINGS[q]} | below float | agreement" for q in QUANTIZERS)
             + " | draws tfquant ≥ LiteRT | fully integer |",
             "| --- | ---: | ---: | " + " | ".join("---: | ---: | ---:" for _ in QUANTIZERS) + " | ---: | --- |"]
    pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
    for r in rows:
        s = summary(r)
        cells = []
        for quantizer in QUANTIZERS:
            q = s.get(quantizer)
            if q is None:  # every draw failed, or a row measured before this quantizer was added
                measured = any(quantizer in d for d in r["draws"])
                cells += ["error" if measured else "", "", ""]
                continue
            cells += [f"{pct(q['mean'])} ({100 * q['low']:.2f}–{100 * q['high']:.2f})",
                      f"{100 * (s['float'] - q['mean']):+.2f} ± {100 * q['se']:.2f} pts", f"{100 * q['agreement']:.1f} %"]
        integer = all(s[q]["fully_integer"] for q in QUANTIZERS if q in s)
        lines.append(f"| {r['model']} | {r['keras']} | {pct(s['float']) if s['float'] is not None else '–'} | "
                     + " | ".join(cells) + f" | {s['at_least_litert']} of {len(r['draws'])} | "
                     + ("yes" if integer else "NO") + " |")
    lines += dates_note(rows, environment["date"], environment["date"])
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench.models import cnn_bench_arguments, zoo_cnns
    from bench.publish import publish_rows

    parser = cnn_bench_arguments(__doc__.splitlines()[0], "draws", "draw")
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    names = zoo_cnns(args.only)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfquant-draws-") as tmp:
        for name in names:
            for version in args.versions:
                log(f"{name} (Keras {version})")
                rows.append(row(name, version, Path(tmp), args.draws, args.samples))
    publish_rows("draws", rows, markdown, only=args.only, merge=args.merge, key=lambda r: (r["model"], r["keras"]))


if __name__ == "__main__":
    main()
