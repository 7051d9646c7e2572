"""Every model of the zoo through `tfquant.quantize`, in Keras 3 and tf_keras: a row per model.

    python bench/zoo.py [--only NAME ...] [--versions 3 2]

Writes bench/zoo.json and bench/zoo.md, and the README's zoo table. Each row: the primary
metric of the float and the int8 file on the held-out digits, the drop, bytes, latency int8 /
float, fully integer, and the seconds `quantize` took (export, calibration, quantization,
evaluation of both files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def row(name: str, version: int, folder: Path, *, with_qat: bool = False) -> dict:
    import numpy as np

    from bench.models import quantize_measured
    from tfquant import zoo

    started = time.perf_counter()
    model, data = zoo.train(name, version)
    trained = time.perf_counter() - started
    path = folder / f"{name}_k{version}.keras"
    model.save(path)
    test = folder / f"{name}_test.npz"
    np.savez(test, **data.test)
    calib = folder / f"{name}_calib.npz"
    np.savez(calib, **{k: v[:300] for k, v in data.train.items() if not k.startswith("y")})
    started = time.perf_counter()
    result, error = quantize_measured(path, calib, eval_data=test, bench_runs=50)
    seconds = time.perf_counter() - started
    entry = {"model": name, "keras": version, "kind": zoo.ZOO[name].kind, "measured": time.strftime("%Y-%m-%d"),
             "train_seconds": round(trained, 1),
             "quantize_seconds": round(seconds, 1), "error": error}
    if result is not None:
        report = result.report
        entry.update({
            "fully_integer": report.quantized.fully_integer,
            "float_bytes": report.float_file.tflite_bytes, "int8_bytes": report.quantized.tflite_bytes,
            "latency_ratio": report.latency_ms["quantized"].p50 / report.latency_ms["float"].p50,
            "outputs": [o.to_dict() for o in report.outputs], "route": report.export.route,
            "float_ops": [f"{o.op} ({o.layer})" for o in report.float_ops],
        })
    entry["litert"] = litert_row(path, calib, test)
    if with_qat and zoo.ZOO[name].classifier:
        entry["qat"] = qat_row(path, data, calib, test, folder)
    return entry


def qat_row(path: Path, data, calib: Path, test: Path, folder: Path) -> dict:
    """`tfquant qat` for one epoch on 600 training samples, keeping PTQ when QAT ends below it."""
    import numpy as np

    import tfquant

    train = folder / "qat_train.npz"
    np.savez(train, **{k: v[:600] for k, v in data.train.items()})
    started = time.perf_counter()
    try:
        result = tfquant.qat(path, train, epochs=1, calibration_data=calib, eval_data=test, bench_runs=5, keep_best=True)
    except tfquant.TfquantError as exc:
        return {"error": str(exc), "seconds": round(time.perf_counter() - started, 1)}
    training = result.report.training
    return {"seconds": round(time.perf_counter() - started, 1), "fully_integer": result.info.fully_integer,
            "measured": time.strftime("%Y-%m-%d"),
            "ptq_accuracy": training.ptq_accuracy, "qat_accuracy": training.qat_accuracy, "kept": training.kept,
            "accuracy": result.report.quantized.accuracy}


def litert_row(path: Path, calib: Path, test: Path) -> dict:
    """The same model, float file and samples through LiteRT Quantizer (`--quantizer litert`)."""
    from bench.models import quantize_measured
    from tfquant.types import Recipe

    started = time.perf_counter()
    result, error = quantize_measured(path, calib, eval_data=test, bench_runs=10, diagnose=False,
                                      recipe=Recipe(quantizer="litert"))
    entry = {"seconds": round(time.perf_counter() - started, 1), "error": error}
    if result is not None:
        report = result.report
        entry.update({"fully_integer": report.quantized.fully_integer, "int8_bytes": report.quantized.tflite_bytes,
                      "outputs": [o.to_dict() for o in report.outputs],
                      "float_ops": sorted({o.op for o in report.float_ops} - {"QUANTIZE", "DEQUANTIZE"})})
    return entry


EARLIER = "2026-11-23"  # rows of bench/zoo.json written before each row carried its date


def metric_text(output: dict) -> tuple[str, str, str]:
    f, q = output["float"], output["quantized"]
    if output["task"] == "classification":
        agrees = "" if q.get("agreement") is None else f" ({100 * q['agreement']:.1f} %)"
        return (f"{100 * f['accuracy']:.2f} %", f"{100 * q['accuracy']:.2f} %",
                f"{100 * (f['accuracy'] - q['accuracy']):+.2f} pts{agrees}")
    if output["task"] == "regression":
        return f"R² {f['r2']:.3f}", f"R² {q['r2']:.3f}", f"RMSE {100 * q['rel_rmse']:.2f} % of σ"
    return (f"1-NN {100 * f['retrieval']:.1f} %", f"1-NN {100 * q['retrieval']:.1f} %",
            f"cos {q['mean_cosine']:.4f}")


def markdown(rows: list[dict], environment: dict) -> str:
    from bench.publish import dates_note

    lines = [f"Measured {environment['date']} on {environment['cpu']} ({environment['cores']} cores), "
             f"TensorFlow {environment['versions']['tensorflow']}, `bench/zoo.py`: each model trained from scratch for "
             "a few epochs on the digits (as images, rows, tokens or features), then `tfquant.quantize` with default "
             "options (full int8) on 300 calibration samples, measured on the 359 held-out digits.", "",
             "The last two columns: the same float file and samples through LiteRT Quantizer "
             "(`--quantizer litert`), its loss and whether its file is fully integer (else its float ops). "
             "A classifier's loss is given with its top-1 agreement with the float file, the share of the 359 "
             "samples whose class int8 leaves as it was: on 359 samples one changed prediction moves accuracy by "
             "0.28 points either way, while agreement only falls.", "",
             "| model | Keras | output | float | int8 | loss: points below float (agreement), RMSE or cosine | bytes float → int8 | latency int8/float | fully integer | s "
             "| LiteRT Quantizer: loss | fully integer |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in rows:
        if "outputs" not in r:
            lines.append(f"| {r['model']} | {r['keras']} | – | | | | | | error: {r['error'][:80]} | | | |")
            continue
        litert = r.get("litert") or {}
        litert_outputs = {o["name"]: o for o in litert.get("outputs", [])}
        for index, output in enumerate(r["outputs"]):
            f, q, change = metric_text(output)
            first = index == 0
            other = litert_outputs.get(output["name"])
            other_change = metric_text(other)[2] if other else "–"
            integer = ("yes" if litert.get("fully_integer") else "no: " + ", ".join(litert.get("float_ops", [])[:3])) \
                if litert.get("outputs") else ("error" if litert else "–")
            lines.append(
                f"| {r['model'] if first else ''} | {r['keras'] if first else ''} | {output['name']} ({output['task']}) | "
                f"{f} | {q} | {change} | "
                + (f"{r['float_bytes']:,} → {r['int8_bytes']:,} | {r['latency_ratio']:.2f}× | "
                   f"{'yes' if r['fully_integer'] else 'NO'} | {r['quantize_seconds']:.1f} |" if first else "| | | |")
                + f" {other_change} | {integer if first else ''} |")
    lines += dates_note(rows, environment["date"], EARLIER, environment["cpu"])
    qat = [r for r in rows if r.get("qat")]
    if qat:
        # A run without --qat keeps a row's earlier QAT result, measured on the model that run trained.
        earlier = sorted({r["qat"].get("measured", EARLIER) for r in qat if r["qat"].get("measured") != r.get("measured")})
        lines += ["", "`tfquant qat` (1 epoch on 600 samples; the file kept is the better of QAT and PTQ on the "
                  "evaluation data, as `tfquant qat` does unless `--no-keep-best` is given)"
                  + (f". Kept from earlier runs (the last on {earlier[-1]}), on the models those runs trained: "
                     "the PTQ column is theirs, not the table's above:" if earlier else ":"), "",
                  "| model | Keras | PTQ int8 | QAT int8 | kept | fully integer | s |", "| --- | ---: | ---: | ---: | --- | --- | ---: |"]
        for r in qat:
            q = r["qat"]
            if "error" in q:
                lines.append(f"| {r['model']} | {r['keras']} | | | error: {q['error'][:80]} | | {q['seconds']:.1f} |")
                continue
            pct = lambda v: "–" if v is None else f"{100 * v:.2f} %"
            kept = q["kept"]
            if kept == "ptq" and (q["qat_accuracy"] or 0) >= (q["ptq_accuracy"] or 0):
                kept = "ptq (an output of QAT's file outside its budget)"
            lines.append(f"| {r['model']} | {r['keras']} | {pct(q['ptq_accuracy'])} | {pct(q['qat_accuracy'])} | "
                         f"{kept} | {'yes' if q['fully_integer'] else 'NO'} | {q['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench.publish import publish
    from bench.run import environment
    from tfquant import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--versions", nargs="*", type=int, default=[3, 2])
    parser.add_argument("--qat", action="store_true", help="also run `tfquant qat` on every classifier")
    parser.add_argument("--merge", action="store_true", help="keep the rows of bench/zoo.json that this run does not "
                                                              "redo (and their QAT results when it runs no QAT)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfquant-zoo-") as tmp:
        for name in zoo.ZOO:
            if args.only and name not in args.only:
                continue
            for version in args.versions:
                log(f"{name} (Keras {version})")
                rows.append(row(name, version, Path(tmp), with_qat=args.qat))
                log(json.dumps({k: v for k, v in rows[-1].items() if k != "outputs"}))
    env = environment()
    for r in rows:
        r["machine"] = env["cpu"]
    if args.merge and (HERE / "zoo.json").exists():
        stored = json.loads((HERE / "zoo.json").read_text())
        earlier = {(r["model"], r["keras"]): r for r in stored["rows"]}
        for r in earlier.values():  # rows from before machines were recorded: the machine of that file's last run
            r.setdefault("machine", stored["environment"]["cpu"])
        for r in rows:  # a run without --qat keeps the row's earlier QAT result
            if "qat" not in r and "qat" in earlier.get((r["model"], r["keras"]), {}):
                before = earlier[(r["model"], r["keras"])]
                r["qat"] = {"measured": before.get("measured", stored["environment"]["date"]), **before["qat"]}
        done = {(r["model"], r["keras"]) for r in rows}
        kept = [r for key, r in earlier.items() if key not in done]
        order = {name: i for i, name in enumerate(zoo.ZOO)}
        rows = sorted(kept + rows, key=lambda r: (order.get(r["model"], 99), -r["keras"]))
    table = markdown(rows, env)
    publish("zoo", {"environment": env, "rows": rows}, table, readme=not args.only or args.merge)
    print(table)


if __name__ == "__main__":
    main()
