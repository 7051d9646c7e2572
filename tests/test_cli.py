"""The `tfquant` command in-process: outputs, exit codes, one-line errors, nothing left on failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfquant.cli import main, parse_args

from checks import assert_every_op_integer


def one_line(err: str) -> str:
    """An error case leaves exactly one line on stderr (native code included: these tests capture fd 2)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def tfquant(argv, capsys):
    """Run the command as a user would; return (exit code, stdout, stderr). Pass `capfd` to see what native
    code writes to the file descriptors too."""
    try:
        code = main(parse_args([str(a) for a in argv]))
    except SystemExit as exc:  # argparse rejects bad usage before main()
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_writes_model_and_reports(model_files, train_npz, test_npz, tmp_path, capsys):
    out = tmp_path / "digits_int8.tflite"
    code, stdout, _ = tfquant(["convert", model_files["keras"], "--calib", train_npz, "--eval", test_npz, "-o", out,
                               "--max-drop", "0.01", "--strict", "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["quantized"]["fully_integer"] is True
    assert report["quantized"]["tflite_bytes"] == out.stat().st_size
    assert report["quantized"]["tflite_bytes"] <= 0.30 * report["float"]["tflite_bytes"]
    assert not [w for w in report["warnings"] if "not smaller than the float file" in w]
    assert report["accuracy_drop"] <= 0.01
    assert "| accuracy (top-1) |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("fmt", ["h5", "saved_model"])
def test_convert_reads_h5_and_saved_model(fmt, model_files, train_npz, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    code, stdout, err = tfquant(["convert", model_files[fmt], "--calib", train_npz, "--calib-samples", "50", "-o", out, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["quantized"]["fully_integer"] is True


def test_inspect_lists_every_op_and_fails_strict_on_float(tflite_files, capsys):
    code, stdout, _ = tfquant(["inspect", tflite_files["int8"], "--json", "--strict"], capsys)
    assert code == 0
    info = json.loads(stdout)
    assert [op["name"] for op in info["ops"]] == ["CONV_2D", "CONV_2D", "MAX_POOL_2D", "RESHAPE",
                                                  "FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"]
    assert info["inputs"][0]["dtype"] == "int8" and info["inputs"][0]["quantization"]["zero_point"] == [-128]

    code, stdout, err = tfquant(["inspect", tflite_files["float32"], "--strict"], capsys)
    assert code == 1
    assert "fully integer: NO" in stdout
    assert err.strip().endswith("found float ops CONV_2D#0, CONV_2D#1, MAX_POOL_2D#2, RESHAPE#3, "
                                "FULLY_CONNECTED#4, FULLY_CONNECTED#5, SOFTMAX#6")


def test_eval_measures_top1_and_top5(tflite_files, test_npz, int8_result, capsys):
    code, stdout, _ = tfquant(["eval", tflite_files["int8"], "--eval", test_npz, "--json"], capsys)
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics["samples"] == 359
    assert metrics["accuracy"] == pytest.approx(int8_result.report.quantized.accuracy, abs=1e-12)
    assert metrics["top5_accuracy"] >= metrics["accuracy"]


def test_bench_compare_interleaves_both_files(tflite_files, capsys):
    code, stdout, _ = tfquant(["bench", tflite_files["float32"], "--compare", tflite_files["int8"], "--runs", "20",
                               "--warmup", "2", "--threads", "1", "--json"], capsys)
    assert code == 0
    payload = json.loads(stdout)
    first, second = payload["results"]
    assert first["num_runs"] == second["num_runs"] >= 20 and first["num_threads"] == 1
    lat = second["inference_ms"]
    assert 0 < lat["min"] <= lat["p50_low"] <= lat["p50"] <= lat["p50_high"] <= lat["p90"]
    assert (lat["p99"] is None) == (lat["count"] < 100)
    assert payload["ratio_p50"] == pytest.approx(lat["p50"] / first["inference_ms"]["p50"])
    assert first["runtime"]["name"] == "ai_edge_litert"
    assert first["peak_memory_mb"] > 0 and first["init_ms"] > 0


# --- bad input: exit 2, one line naming the file, what was expected and what was found, no output ---

def _copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _bad_inputs(tmp: Path, model_files, train_npz, test_npz, digits):
    x, y = digits["x_test"][:40], digits["y_test"][:40]
    corrupt_keras = tmp / "corrupt.keras"
    corrupt_keras.write_bytes(b"\x00not a zip" * 100)
    corrupt_h5 = tmp / "corrupt.h5"
    corrupt_h5.write_bytes(b"garbage" * 100)
    onnx = tmp / "model.onnx"
    onnx.write_bytes(b"onnx")
    nan_x = x.copy()
    nan_x[7, 3, 3, 0] = np.nan
    inf_x = x.copy()
    inf_x[2, 0, 0, 0] = np.inf
    corrupt_npz = tmp / "corrupt.npz"
    corrupt_npz.write_bytes(b"PK\x03\x04 broken")
    bad_recipe = tmp / "recipe.json"
    bad_recipe.write_text(json.dumps({"mode": "int8", "bits": 4, "schema_version": 1}))
    model = model_files["keras"]
    return {
        "wrong rank": ([model, "--calib", _npz(tmp / "rank.npz", x=x[..., 0])],
                       "rank.npz: expected shape (N, 8, 8, 1) for input 'image', found (40, 8, 8)"),
        "wrong shape": ([model, "--calib", _npz(tmp / "shape.npz", x=np.zeros((5, 9, 9, 1), np.float32))],
                        "shape.npz: expected shape (N, 8, 8, 1) for input 'image', found (5, 9, 9, 1)"),
        "non-numeric": ([model, "--calib", _npz(tmp / "text.npz", x=np.array([["a"] * 8] * 8))],
                        "text.npz: expected numeric values for input 'image', found dtype <U1"),
        "NaN": ([model, "--calib", _npz(tmp / "nan.npz", x=nan_x)],
                "nan.npz: expected finite values for input 'image', found NaN or Inf in 1 sample(s), the first at index 7"),
        "Inf in eval": ([model, "--calib", train_npz, "--eval", _npz(tmp / "inf.npz", x=inf_x, y=y)],
                        "inf.npz: expected finite values for input 'image', found NaN or Inf in 1 sample(s), the first at index 2"),
        "empty": ([model, "--calib", _npz(tmp / "empty.npz", x=np.zeros((0, 8, 8, 1), np.float32))],
                  "empty.npz: expected at least 1 sample for input 'image', found 0 samples"),
        "label count": ([model, "--calib", train_npz, "--eval", _npz(tmp / "count.npz", x=x, y=y[:30])],
                        "count.npz: expected 40 labels for output 'probs' (one per sample), found 30"),
        "label range": ([model, "--calib", train_npz, "--eval", _npz(tmp / "range.npz", x=x, y=y + 5)],
                        "range.npz: expected labels in 0..9 for output 'probs' (10 classes), found labels 5..14"),
        "labels of no output": ([model, "--calib", train_npz, "--eval", _npz(tmp / "other.npz", x=x, y_score=y)],
                                "other.npz: expected label arrays named 'y', 'y_probs', found 'y_score'"),
        "missing model": ([tmp / "nope.keras", "--calib", train_npz],
                          "nope.keras: expected a Keras model (.keras, .h5), a SavedModel folder or a float32 .tflite file, found no such file or folder"),
        "corrupt keras": ([corrupt_keras, "--calib", train_npz],
                          "corrupt.keras: expected a .keras zip archive, found 1000 bytes that are not a zip archive"),
        "corrupt h5": ([corrupt_h5, "--calib", train_npz], "corrupt.h5: expected an HDF5 Keras model, found 700 bytes that are not HDF5"),
        "h5 named .keras": ([_copy(model_files["h5"], tmp / "misnamed.keras"), "--calib", train_npz],
                            "misnamed.keras: expected a .keras zip archive, found an HDF5 file (rename it to .h5)"),
        "unknown format": ([onnx, "--calib", train_npz],
                           "model.onnx: expected a Keras model (.keras, .h5), a SavedModel folder or a float32 .tflite file, found a file ending in '.onnx'"),
        "missing data": ([model, "--calib", tmp / "nope.npz"],
                         "nope.npz: expected a data file (.npz, .npy, .csv) or an image folder, found no such file or folder"),
        "corrupt data": ([model, "--calib", corrupt_npz],
                         "corrupt.npz: expected a NumPy .npz archive (a zip of .npy arrays), found 11 bytes that are not a zip archive"),
        "mode/io": ([model, "--calib", train_npz, "--mode", "dynamic", "--io", "int8"],
                    "--io int8 does not go with --mode dynamic; expected one of: float32"),
        "drop without eval": ([model, "--calib", train_npz, "--max-drop", "0.01"], "--max-drop needs --eval: the drop is measured"),
        "no calibration": ([model], "--mode int8 needs calibration data: pass --calib DATA"),
        "bad recipe": ([model, "--calib", train_npz, "--recipe", bad_recipe],
                       "recipe.json: unknown option(s) bits for convert; expected some of: bench_runs, bias_correction, calib_samples"),
    }


CASES = ["wrong rank", "wrong shape", "non-numeric", "NaN", "Inf in eval", "empty", "label count", "label range",
         "labels of no output", "missing model", "corrupt keras", "corrupt h5", "unknown format", "missing data", "corrupt data",
         "mode/io", "drop without eval", "no calibration", "bad recipe", "h5 named .keras"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_no_file(case, tmp_path, model_files, train_npz, test_npz, digits, capfd):
    args, message = _bad_inputs(tmp_path, model_files, train_npz, test_npz, digits)[case]
    out_dir = tmp_path / "out"
    code, stdout, err = tfquant(["convert", *args, "-o", out_dir / "m.tflite"], capfd)
    assert code == 2
    line = one_line(err)
    assert line.startswith("tfquant convert: error: ") and message in line
    assert not out_dir.exists()


def test_existing_output_needs_overwrite(model_files, train_npz, tmp_path, capfd):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"precious")
    code, _, err = tfquant(["convert", model_files["keras"], "--calib", train_npz, "-o", out], capfd)
    assert code == 2
    assert f"{out}: expected a path that does not exist yet (or --overwrite), found an existing file" in one_line(err)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


def test_unwritable_output_folder(model_files, train_npz, tmp_path, capfd):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, _, err = tfquant(["convert", model_files["keras"], "--calib", train_npz, "-o", blocker / "sub" / "m.tflite"], capfd)
    assert code == 2
    assert f"expected a writable output folder, found {blocker} is not a folder" in one_line(err)


def test_a_full_disk_names_the_file_and_leaves_nothing(model_files, train_npz, tmp_path, capfd):
    """A real write failure (the file size limit, as a full disk would): one line naming the file, no file left."""
    import resource
    import signal

    out = tmp_path / "out" / "m.tflite"
    previous_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # the int8 file is ~160 KB
        code, _, err = tfquant(["convert", model_files["keras"], "--calib", train_npz, "--calib-samples", "20",
                                "--no-diagnose", "-o", out], capfd)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_signal)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"tfquant convert: error: {out}: expected room to write ") and line.endswith(
        "bytes, found File too large")
    assert list((tmp_path / "out").iterdir()) == []


def test_unknown_option_value(model_files, train_npz, tmp_path, capfd):
    code, _, err = tfquant(["convert", model_files["keras"], "--calib", train_npz, "--mode", "int4", "-o", tmp_path / "m.tflite"], capfd)
    assert code == 2
    assert "argument --mode: invalid choice: 'int4'" in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_unsafe_model_is_refused(digits, tmp_path, capsys, train_npz):
    from tfquant._keras import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2.0)(inputs)))
    path = tmp_path / "lambda.h5"
    keras.Model(inputs, outputs).save(path)
    code, _, err = tfquant(["convert", path, "--calib", train_npz, "-o", tmp_path / "out" / "m.tflite"], capsys)
    assert code == 2
    assert "lambda.h5: expected a model without code, found a Lambda layer" in one_line(err)
    code, _, err = tfquant(["convert", path, "--calib", train_npz, "--allow-unsafe-models", "--calib-samples", "20",
                            "-o", tmp_path / "out" / "m.tflite"], capsys)
    assert code == 0, err


def test_gate_failure_exits_1_and_writes_nothing(model_files, digits, test_npz, tmp_path, capfd):
    calib = _npz(tmp_path / "tiny.npz", x=digits["x"][:200] * 0.05)
    out_dir = tmp_path / "out"
    code, stdout, err = tfquant(["convert", model_files["keras"], "--calib", calib, "--eval", test_npz, "--max-drop", "0.01",
                                 "--json", "-o", out_dir / "m.tflite"], capfd)
    assert code == 1
    line = one_line(err)
    assert "failed:" in line and "expected an accuracy drop of at most 0.0100" in line
    assert json.loads(stdout)["accuracy_drop"] > 0.01  # --json still shows why
    assert not out_dir.exists()


def test_inspect_and_eval_reject_corrupt_tflite(tmp_path, test_npz, capfd):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    code, _, err = tfquant(["inspect", bad], capfd)
    assert code == 2 and "bad.tflite: expected a TFLite flatbuffer (identifier 'TFL3'), found 64 bytes" in one_line(err)
    code, _, err = tfquant(["eval", bad, "--eval", test_npz], capfd)
    assert code == 2 and "bad.tflite: expected a TFLite flatbuffer" in one_line(err)


def test_eval_checks_data_against_the_file(tflite_files, tmp_path, capfd):
    wrong = _npz(tmp_path / "wrong.npz", x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4, np.int64))
    code, _, err = tfquant(["eval", tflite_files["int8"], "--eval", wrong], capfd)
    assert code == 2
    assert "wrong.npz: expected shape (N, 8, 8, 1) for input 'image', found (4, 8, 8)" in one_line(err)


def test_random_bytes_named_npz_say_what_they_are(model_files, tmp_path, capfd):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(bytes(range(256)) * 8)
    code, _, err = tfquant(["convert", model_files["keras"], "--calib", junk, "-o", tmp_path / "m.tflite"], capfd)
    assert code == 2
    assert one_line(err).endswith("junk.npz: expected a NumPy .npz archive (a zip of .npy arrays), found 2048 bytes "
                                  "that are not a zip archive")


def test_int8_file_from_command_is_integer_everywhere(tflite_files):
    from tfquant import inspect

    assert_every_op_integer(inspect(tflite_files["int8"]))


@pytest.mark.parametrize("version", [2, 3])
def test_csv_tables_feed_a_model_with_one_input_per_column(version, tmp_path, capsys):
    """The structured-data shape of Keras' guides: one (N, 1) input per CSV column, each normalized in the
    model, joined, a sigmoid unit. Features on unlike scales (years, counts, money) each get their own
    int8 input scale, so nothing is lost to a shared one."""
    from tfquant import zoo

    k = zoo.keras_module(version)
    k.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 800
    table = {"age": rng.uniform(18, 90, n), "visits": rng.integers(0, 12, n).astype(float),
             "income": rng.lognormal(10, 0.5, n)}
    score = (table["age"] - 50) / 20 + (table["visits"] - 6) / 3 - (np.log(table["income"]) - 10) / 0.5
    table["y"] = (score + rng.normal(0, 0.3, n) > 0).astype(float)
    inputs, normalized = [], []
    for name in ("age", "visits", "income"):
        column = k.Input((1,), name=name)
        layer = k.layers.Normalization()
        layer.adapt(table[name][:600, None].astype(np.float32))
        inputs.append(column)
        normalized.append(layer(column))
    hidden = k.layers.Dense(16, activation="relu")(k.layers.Concatenate()(normalized))
    model = k.Model(inputs, k.layers.Dense(1, activation="sigmoid", name="likely")(hidden))
    model.compile(optimizer=k.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit([table[c][:600, None] for c in ("age", "visits", "income")], table["y"][:600], epochs=20, verbose=0)
    model.save(tmp_path / "m.keras")
    header = ["y", "income", "age", "visits"]  # any column order: bound by name
    for part, rows in (("train", slice(0, 600)), ("test", slice(600, None))):
        np.savetxt(tmp_path / f"{part}.csv", np.stack([table[c][rows] for c in header], 1), delimiter=",",
                   header=",".join(header), comments="", fmt="%.6g")
    code, stdout, err = tfquant(["convert", tmp_path / "m.keras", "--calib", tmp_path / "train.csv", "--eval",
                                 tmp_path / "test.csv", "-o", tmp_path / "out" / "m.tflite", "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["quantized"]["fully_integer"] is True and report["eval_samples"] == 200
    assert sorted(t["name"] for t in report["io"] if t["kind"] == "input") == ["age", "income", "visits"]
    (likely,) = report["outputs"]
    assert likely["task"] == "classification" and likely["float"]["accuracy"] >= 0.9
    assert likely["quantized"]["agreement"] >= 0.98, likely
    (tmp_path / "bad.csv").write_text("age,visits,income\n41,2,n/a\n")
    code, _, err = tfquant(["convert", tmp_path / "m.keras", "--calib", tmp_path / "bad.csv", "-o",
                            tmp_path / "bad" / "m.tflite"], capsys)
    assert code == 2 and not (tmp_path / "bad").exists()
    assert one_line(err).endswith("bad.csv: expected a number in every cell (encode text categories as numbers first), "
                                  "found 'n/a' in column 'income' on line 2")
