"""What pruning, clustering and both buy in the file that ships, side by side: `python bench/cluster.py`.

For the digits CNN and MobileNetV2 (96x96) of `bench/models.py`, one table per model with a row per
file: float32, plain int8, 80 %-pruned int8 (and the same written in TFLite's sparse format),
16-cluster CQAT int8, and 50 % pruning + 16 clusters + QAT (PCQAT) int8. Each row: accuracy on the
interpreter, raw bytes, gzip bytes, the most distinct values of any weight tensor (read from the
file), and latency p50 measured interleaved with the float file. Writes bench/cluster.json,
bench/cluster.md and the README's table.
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

EPOCHS = {"digits_cnn": 4, "mobilenetv2_96": 2}


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rows_for(name: str, spec: dict, train: tuple, folder: Path) -> list[dict]:
    import numpy as np

    import tfquant
    from tfquant.optimize.weights import unique_values

    calib = folder / f"{name}_calib.npz"
    test = folder / f"{name}_test.npz"
    train_file = folder / f"{name}_train.npz"
    np.savez(calib, x=spec["calib"])
    np.savez(test, x=spec["x_test"], y=spec["y_test"])
    np.savez(train_file, x=train[0], y=train[1])
    epochs = EPOCHS[name]
    common = dict(calibration_data=calib, eval_data=test, bench_runs=50)

    def row(label: str, result) -> dict:
        from tfquant.sizes import gzip_size

        report = result.report
        return {"model": name, "file": label, "accuracy": report.quantized.accuracy, "bytes": len(result.tflite),
                "gzip_bytes": gzip_size(result.tflite),
                "max_distinct_values": max(unique_values(result.tflite).values(), default=0),
                "latency_p50_ms": report.latency_ms["quantized"].p50,
                "float_latency_p50_ms": report.latency_ms["float"].p50}

    rows = []
    log(f"{name}: plain int8")
    plain = tfquant.quantize(spec["path"], calib, eval_data=test, bench_runs=50)
    rows.append({"model": name, "file": "float32", "accuracy": plain.report.float_file.accuracy,
                 "bytes": plain.report.float_file.tflite_bytes, "gzip_bytes": plain.report.float_file.gzip_bytes,
                 "max_distinct_values": max(unique_values(plain.float_tflite).values(), default=0),
                 "latency_p50_ms": plain.report.latency_ms["float"].p50,
                 "float_latency_p50_ms": plain.report.latency_ms["float"].p50})
    rows.append(row("int8", plain))
    log(f"{name}: 80 % pruning, {epochs} epochs, written sparse too")
    pruned = tfquant.prune(spec["path"], train_file, sparsity=0.8, epochs=epochs, sparse=True, **common)
    sparse = pruned.report.training.sparse
    dense_row = {**row("pruned 80 % int8", pruned), "bytes": sparse.dense_bytes,
                 "gzip_bytes": pruned.report.training.files["pruned_int8"].gzip_bytes,
                 "latency_p50_ms": sparse.dense_latency_p50_ms}
    rows.append(dense_row)
    rows.append({**row("pruned 80 % int8, sparse format", pruned), "bytes": sparse.tflite_bytes,
                 "gzip_bytes": sparse.gzip_bytes, "latency_p50_ms": sparse.latency_p50_ms,
                 "note": f"written: {sparse.written}; runs on {sparse.runs_on}"})
    log(f"{name}: 16 clusters, CQAT")
    cqat = tfquant.cluster(spec["path"], train_file, clusters=16, then="qat", epochs=epochs, **common)
    rows.append(row("16 clusters + CQAT int8", cqat))
    log(f"{name}: 50 % pruning + 16 clusters + QAT (PCQAT)")
    pcqat = tfquant.collaborate(spec["path"], train_file, prune=0.5, cluster=16, qat=True, epochs=epochs, **common)
    rows.append(row("50 % pruned + 16 clusters + QAT int8", pcqat))
    return rows


def markdown(rows: list[dict], environment: dict) -> str:
    lines = [f"Measured {environment['date']} on {environment['cpu']} ({environment['cores']} cores), TensorFlow "
             f"{environment['versions']['tensorflow']}, tfmot {environment['versions']['tensorflow-model-optimization']}, "
             "`bench/cluster.py`. Accuracy on the interpreter on the held-out digits; distinct values: the most any "
             "weight tensor of the file holds; latency p50 at batch 1 (2 threads), interleaved with the float file.", "",
             "| model | file | accuracy | bytes | gzip bytes | gzip / int8 gzip | distinct values | latency p50 ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        int8 = next(r for r in mine if r["file"] == "int8")
        for r in mine:
            accuracy = "–" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} %"
            lines.append(f"| {model} | {r['file']} | {accuracy} | {r['bytes']:,} | {r['gzip_bytes']:,} | "
                         f"{r['gzip_bytes'] / int8['gzip_bytes']:.2f}× | {r['max_distinct_values'] or '–'} | "
                         f"{r['latency_p50_ms']:.3f} |")
    notes = [r for r in rows if r.get("note")]
    lines += [""] + [f"- {r['model']}, sparse file: {r['note']}." for r in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench import models as bench_models
    from bench.publish import publish
    from bench.run import environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(EPOCHS))
    args = parser.parse_args()
    specs = bench_models.build_all(log)
    x, y, _, _ = bench_models.digits()
    trains = {"digits_cnn": (x, y), "mobilenetv2_96": (bench_models.upscale(x, 96), y)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfquant-cluster-") as tmp:
        for name in EPOCHS:
            if args.only and name not in args.only:
                continue
            rows += rows_for(name, specs[name], trains[name], Path(tmp))
    env = environment()
    table = markdown(rows, env)
    publish("cluster", {"environment": env, "rows": rows}, table, readme=not args.only)
    print(table)


if __name__ == "__main__":
    main()
