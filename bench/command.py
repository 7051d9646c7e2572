"""The whole `tfquant convert --eval` command against the tutorial flow, as a user runs them.

    python bench/command.py [--reps 2] [--only NAME ...]

For each model, three programs run in fresh processes, interleaved, `--reps` times, and the
parent times each from start to exit (Python start, imports, model load, conversion, evaluation,
files written):

- `tfquant convert MODEL --calib CALIB --eval EVAL -o OUT` (default options: TFLiteConverter's
  quantizer, ranges chosen, bias correction, diagnostics, reports);
- the same with `--quantizer litert` (LiteRT Quantizer on the same float file and samples);
- the TensorFlow tutorial flow (`bench/baselines/tutorial.py`: one int8 conversion with a
  representative dataset, then a per-sample evaluation loop).

Each row gives the best wall time of each, the ratio tfquant / tutorial, the int8 accuracy of the
three files on the same held-out data, whether each file is fully integer (tfquant's census), their
bytes and peak memory. Models: the digits CNN and MobileNetV2 96x96 of `bench/models.py`, and the
zoo's keras.applications CNNs (Keras 3, trained as `bench/zoo.py` trains them). Writes
bench/command.json, bench/command.md and the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

TARGET_RATIO = 0.5
EARLIER = "2026-11-26"  # rows of bench/command.json written before each row carried its date
ZOO_CNNS = ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnet50", "densenet121", "nasnet_mobile",
            "convnext_tiny", "inception_v3")
TFQUANT = [sys.executable, "-m", "tfquant"]


def log(message: str) -> None:
    print(f"[command {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Run argv in a fresh process; (wall seconds, its peak RSS in MB with its waited-for children, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])}... exited {process.returncode}: {err.read().decode()[-600:]}")
        return seconds, usage.ru_maxrss / 1024, out.read().decode()


def models(folder: Path, only: list[str] | None) -> dict[str, dict[str, Path]]:
    """name -> {model, calib, eval}: the bench models and the zoo CNNs, trained once and cached."""
    import numpy as np

    from bench import models as bench_models
    from tfquant import zoo

    found = {}
    if not only or {"digits_cnn", "mobilenetv2_96"} & set(only):
        specs = bench_models.build_all(log)
        for name in ("digits_cnn", "mobilenetv2_96"):
            if only and name not in only:
                continue
            spec = specs[name]
            calib, test = folder / f"{name}_calib.npz", folder / f"{name}_eval.npz"
            np.savez(calib, x=spec["calib"])
            np.savez(test, x=spec["x_test"], y=spec["y_test"])
            found[name] = {"model": spec["path"], "calib": calib, "eval": test}
    for name in ZOO_CNNS:
        if only and name not in only:
            continue
        path = bench_models.CACHE / f"zoo_{name}_k3.keras"
        data = zoo.ZOO[name].data()
        if not path.exists():
            log(f"training {name} (Keras 3)")
            model, _ = zoo.train(name, 3)
            path.parent.mkdir(parents=True, exist_ok=True)
            model.save(path)
        calib, test = folder / f"{name}_calib.npz", folder / f"{name}_eval.npz"
        np.savez(calib, x=data.train["image"][:200])
        np.savez(test, x=data.test["image"], y=data.test["y"])
        found[name] = {"model": path, "calib": calib, "eval": test}
    return found


def row(name: str, files: dict[str, Path], folder: Path, reps: int) -> dict:
    from tfquant.inspect import inspect

    flows = {
        "tfquant": lambda out: TFQUANT + ["convert", str(files["model"]), "--calib", str(files["calib"]), "--eval",
                                          str(files["eval"]), "-o", str(out), "--overwrite", "-q"],
        "litert": lambda out: TFQUANT + ["convert", str(files["model"]), "--calib", str(files["calib"]), "--eval",
                                         str(files["eval"]), "-o", str(out), "--overwrite", "-q", "--quantizer",
                                         "litert"],
        "tutorial": lambda out: [sys.executable, str(HERE / "baselines" / "tutorial.py"), str(files["model"]),
                                 str(files["calib"]), str(files["eval"]), str(out)],
    }
    result: dict = {"model": name, "measured": time.strftime("%Y-%m-%d")}
    times: dict[str, list[float]] = {flow: [] for flow in flows}
    for rep in range(reps):
        order = list(flows)[rep % 3:] + list(flows)[:rep % 3]  # interleaved, the order rotating
        for flow in order:
            out = folder / flow / name / "model.tflite"
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                seconds, peak, stdout = timed(flows[flow](out))
            except RuntimeError as exc:
                result[flow] = {"error": str(exc)[-300:]}
                continue
            times[flow].append(seconds)
            entry = result.setdefault(flow, {})
            entry["peak_rss_mb"] = round(peak)
            info = inspect(out)
            entry.update(bytes=info.bytes, fully_integer=info.fully_integer,
                         float_ops=sorted(set(info.float_ops)) if not info.fully_integer else [])
            if flow == "tutorial":
                entry["accuracy"] = json.loads(stdout.strip().splitlines()[-1])["accuracy"]
            else:
                report = json.loads((out.parent / "report.json").read_text())
                entry.update(accuracy=report["quantized"]["accuracy"], float_accuracy=report["float"]["accuracy"],
                             stages=report["seconds"])
        log(f"{name} rep {rep + 1}: " + ", ".join(f"{f} {times[f][-1]:.1f} s" for f in flows if times[f]))
    for flow in flows:
        if times[flow]:
            result[flow]["seconds"] = round(min(times[flow]), 2)
    if times["tfquant"] and times["tutorial"]:
        result["ratio"] = round(min(times["tfquant"]) / min(times["tutorial"]), 3)
    return result


def markdown(rows: list[dict], environment: dict, reps: int) -> str:
    from bench.publish import dates_note

    pct = lambda v: "–" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    lines = [f"Measured {environment['date']} on {environment['cpu']} ({environment['cores']} cores), TensorFlow "
             f"{environment['versions']['tensorflow']}, `bench/command.py`: each program in a fresh process, wall time "
             f"from start to exit, best of {reps} interleaved runs. tfquant: `tfquant convert MODEL --calib --eval -o` "
             "with default options; LiteRT: the same with `--quantizer litert`; tutorial: TensorFlow's post-training "
             "integer quantization tutorial (`bench/baselines/tutorial.py`: one int8 conversion, then a per-sample "
             "evaluation loop). Accuracy of each int8 file on the same held-out digits; fully integer by tfquant's "
             "census.", "",
             "| model | float | tfquant int8 | LiteRT int8 | tutorial int8 | fully integer: tfquant / LiteRT / tutorial "
             "| bytes: tfquant / LiteRT / tutorial | s: tfquant / LiteRT / tutorial | tfquant / tutorial |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        t, lt, tu = r.get("tfquant", {}), r.get("litert", {}), r.get("tutorial", {})
        yes = lambda e: "error" if "error" in e else ("yes" if e.get("fully_integer") else "NO")  # noqa: E731
        size = lambda e: "–" if "bytes" not in e else f"{e['bytes']:,}"  # noqa: E731
        secs = lambda e: "–" if "seconds" not in e else f"{e['seconds']:.1f}"  # noqa: E731
        ratio = "–" if "ratio" not in r else f"{r['ratio']:.2f}×"
        lines.append(f"| {r['model']} | {pct(t.get('float_accuracy'))} | {pct(t.get('accuracy'))} | "
                     f"{pct(lt.get('accuracy'))} | {pct(tu.get('accuracy'))} | {yes(t)} / {yes(lt)} / {yes(tu)} | "
                     f"{size(t)} / {size(lt)} / {size(tu)} | {secs(t)} / {secs(lt)} / {secs(tu)} | {ratio} |")
    met = [r for r in rows if r.get("ratio") is not None and r["ratio"] <= TARGET_RATIO]
    lines += dates_note(rows, environment["date"], EARLIER)
    lines += ["", f"Target: tfquant at most {TARGET_RATIO}× the tutorial's time: met on {len(met)} of "
              f"{sum(1 for r in rows if 'ratio' in r)} models."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench.publish import publish_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--merge", action="store_true", help="keep the rows of bench/command.json this run does not redo")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfquant-command-") as tmp:
        for name, files in models(Path(tmp), args.only).items():
            log(f"{name}: {args.reps} interleaved runs of tfquant, tfquant --quantizer litert and the tutorial")
            rows.append(row(name, files, Path(tmp), args.reps))
    publish_rows("command", rows, lambda rows, env: markdown(rows, env, args.reps), only=args.only, merge=args.merge,
                 key=lambda r: r["model"], reps=args.reps)


if __name__ == "__main__":
    main()
