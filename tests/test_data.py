"""Data sources and their validation against the model's input signature."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tfquant.data import ImageOptions, load_data
from tfquant.errors import DataError
from tfquant.types import TensorSpec

IMAGE = [TensorSpec("image", (None, 8, 8, 1), "float32")]
TWO = [TensorSpec("a", (None, 4), "float32"), TensorSpec("b", (None, 2), "float32")]
PROBS = [TensorSpec("probs", (None, 10), "float32")]


def test_npz_npy_and_arrays(tmp_path):
    x = np.random.default_rng(0).random((10, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 3)
    np.save(tmp_path / "d.npy", x)
    from_npz = load_data(tmp_path / "d.npz", IMAGE, outputs=PROBS)
    assert len(from_npz) == 10 and list(from_npz.labels["probs"]) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert np.array_equal(load_data(tmp_path / "d.npy", IMAGE).inputs["image"], x)
    assert list(load_data((x, np.ones(10)), IMAGE, outputs=PROBS).labels) == ["probs"]


def test_generators_and_tf_data(tmp_path):
    import tensorflow as tf

    x = np.ones((12, 8, 8, 1), np.float32)
    representative = lambda: ([x[i:i + 1]] for i in range(12))  # noqa: E731 - TFLite's own style
    assert len(load_data(representative, IMAGE)) == 12
    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(12) % 10)).batch(5)
    loaded = load_data(dataset, IMAGE, outputs=PROBS, labels="required")
    assert len(loaded) == 12 and loaded.labels["probs"][-1] == 1
    with pytest.raises(DataError, match=r"<data>: expected at least 1 sample"):
        load_data(lambda: iter([]), IMAGE)


def test_a_dataset_of_several_inputs_in_keras_tuples(tmp_path):
    """Keras' conventions for what a dataset yields: `((a, b), y)` and `(x,)` with x a tuple of inputs; a batch
    that nests arrays of different shapes in one input's place is a DataError, not NumPy's ValueError."""
    import tensorflow as tf

    a, b, y = np.ones((6, 4), np.float32), np.zeros((6, 2), np.float32), np.arange(6) % 2
    with_labels = load_data(tf.data.Dataset.from_tensor_slices(((a, b), y)).batch(4), TWO, outputs=PROBS)
    inputs_only = load_data(tf.data.Dataset.from_tensor_slices(((a, b),)).batch(4), TWO)
    for loaded in (with_labels, inputs_only):
        assert loaded.inputs["a"].shape == (6, 4) and loaded.inputs["b"].shape == (6, 2)
    assert list(with_labels.labels["probs"]) == [0, 1, 0, 1, 0, 1] and inputs_only.labels == {}
    nested = lambda: iter([[[a[:2], b[:2]]]])  # noqa: E731 - both inputs inside the first input's place
    with pytest.raises(DataError, match=r"<data>: expected batches of arrays: x, \[x1, x2\], \(x, y\), \(x,\) or a "
                                        r"dict of arrays by input name, found a list of arrays of different shapes"):
        load_data(nested, TWO)


def test_multi_input_by_name(tmp_path):
    np.savez(tmp_path / "two.npz", b=np.zeros((3, 2)), a=np.ones((3, 4)))
    data = load_data(tmp_path / "two.npz", TWO)
    assert list(data.inputs) == ["a", "b"] and data.inputs["a"].shape == (3, 4)
    np.savez(tmp_path / "wrong.npz", a=np.ones((3, 4)), c=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"wrong.npz: expected one array per model input: 'a', 'b', found arrays 'a', 'c'"):
        load_data(tmp_path / "wrong.npz", TWO)
    np.savez(tmp_path / "uneven.npz", a=np.ones((3, 4)), b=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"expected the same number of samples in every input \(3\), found 2 in 'b'"):
        load_data(tmp_path / "uneven.npz", TWO)


def test_labels_are_bound_to_outputs_by_name(tmp_path):
    x = np.zeros((3, 4), np.float32)
    two_outputs = [TensorSpec("cls", (None, 3), "float32"), TensorSpec("reg", (None, 1), "float32")]
    spec = [TensorSpec("a", (None, 4), "float32")]
    np.savez(tmp_path / "two.npz", a=x, y_reg=np.ones((3, 1)), y_cls=np.array([0, 2, 1]))
    data = load_data(tmp_path / "two.npz", spec, outputs=two_outputs)
    assert list(data.labels["cls"]) == [0, 2, 1] and data.labels["reg"].shape == (3, 1)
    np.savez(tmp_path / "plain.npz", a=x, y=np.array([0, 2, 1]))
    with pytest.raises(DataError, match=r"plain.npz: expected one label array per output, named 'y_cls', 'y_reg', found a single 'y'"):
        load_data(tmp_path / "plain.npz", spec, outputs=two_outputs)
    np.savez(tmp_path / "odd.npz", a=x, y_other=np.ones(3))
    with pytest.raises(DataError, match=r"expected label arrays named 'y_cls', 'y_reg', found 'y_other'"):
        load_data(tmp_path / "odd.npz", spec, outputs=two_outputs)
    with pytest.raises(DataError, match=r"expected 3 labels for output 'reg'"):
        load_data((x, {"reg": np.ones(2)}), spec, outputs=two_outputs)


def test_integer_inputs_stay_integer():
    tokens = [TensorSpec("tokens", (None, 5), "int32")]
    ids = load_data(np.array([[1, 2, 3, 4, 5]] * 2, np.float32), tokens).inputs["tokens"]
    assert ids.dtype == np.int32 and ids.tolist()[0] == [1, 2, 3, 4, 5]
    with pytest.raises(DataError, match=r"expected whole numbers for input 'tokens' \(int32 ids\), found fractional"):
        load_data(np.full((2, 5), 0.5, np.float32), tokens)


def test_an_unnamed_array_is_taken_and_said(tmp_path, caplog):
    import logging

    np.savez(tmp_path / "one.npz", pixels=np.zeros((2, 8, 8, 1), np.float32))
    with caplog.at_level(logging.INFO, logger="tfquant"):
        assert len(load_data(tmp_path / "one.npz", IMAGE)) == 2
    assert "took array 'pixels' as input 'image'" in caplog.text


def test_random_bytes_and_bad_sources_get_typed_errors(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=r"junk.npz: expected a NumPy .npz archive \(a zip of .npy arrays\), found 300 bytes"):
        load_data(junk, IMAGE)
    with pytest.raises(DataError, match=r"<data>: expected arrays, \(x, y\), .* found a list of str"):
        load_data(["a", "b"], IMAGE)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 16), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    data = load_data(tmp_path, IMAGE, outputs=[TensorSpec("probs", (None, 2), "float32")], labels="required")
    assert data.inputs["image"].shape == (6, 8, 8, 1)
    assert list(data.labels["probs"]) == [0, 0, 0, 1, 1, 1]
    assert 0.0 <= data.inputs["image"].min() and data.inputs["image"].max() <= 1.0
    rgb = [TensorSpec("image", (None, None, None, 3), "float32")]
    sized = load_data(tmp_path, rgb, images=ImageOptions(size=(5, 7), scale=1.0))
    assert sized.inputs["image"].shape == (6, 5, 7, 3) and sized.inputs["image"].max() > 1
    with pytest.raises(DataError, match="expected an image size"):
        load_data(tmp_path, rgb)
    (tmp_path / "dog" / "3.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"3.png: expected a readable image"):
        load_data(tmp_path, IMAGE)


def test_calibration_subset_is_seeded_and_ordered():
    x = np.arange(1000, dtype=np.float32).reshape(1000, 1, 1, 1) * np.ones((1, 8, 8, 1), np.float32)
    data = load_data(x, IMAGE)
    a, b = data.calibration_subset(50), data.calibration_subset(50)
    first = a.inputs["image"][:, 0, 0, 0]
    assert np.array_equal(first, b.inputs["image"][:, 0, 0, 0])
    assert len(first) == 50 and np.all(np.diff(first) > 0)  # file order, no repeats
    assert first.max() > 500  # drawn across the file, not its head
    assert data.calibration_subset(5000) is data


def test_csv_feeds_one_vector_input_or_one_input_per_column(tmp_path, caplog):
    import logging

    features = [TensorSpec("features", (None, 3), "float32")]
    score = [TensorSpec("score", (None, 1), "float32")]
    (tmp_path / "rows.csv").write_text("\ufeffa,b,c,y\n1,2,3,0.5\n\n4,5.5,-6,1.5\n")  # Excel's BOM, a blank line
    table = load_data(tmp_path / "rows.csv", features, outputs=score)
    assert table.inputs["features"].tolist() == [[1, 2, 3], [4, 5.5, -6]] and table.inputs["features"].dtype == np.float32
    assert table.labels["score"].tolist() == [0.5, 1.5]
    per_column = [TensorSpec("age", (None, 1), "float32"), TensorSpec("visits", (None, 1), "int32")]
    (tmp_path / "named.csv").write_text("visits,note,age,y\n3,7,41.5,1\n0,7,29,0\n")
    with caplog.at_level(logging.WARNING, logger="tfquant"):
        named = load_data(tmp_path / "named.csv", per_column, outputs=PROBS)
    assert named.inputs["age"].tolist() == [[41.5], [29.0]]
    assert named.inputs["visits"].dtype == np.int32 and named.inputs["visits"].tolist() == [[3], [0]]
    assert named.labels["probs"].dtype == np.int64 and "columns 'note' are not model inputs" in caplog.text


def test_csv_errors_name_the_line_and_column(tmp_path):
    features = [TensorSpec("features", (None, 2), "float32")]
    cases = {
        "text.csv": ("a,b\n1,2\n3,red\n", r"text.csv: expected a number in every cell \(encode text categories as "
                                          r"numbers first\), found 'red' in column 'b' on line 3"),
        "short.csv": ("a,b\n1,2\n3\n", r"short.csv: expected 2 cells per row \(one per header column\), found 1 on line 3"),
        "empty.csv": ("", r"empty.csv: expected a header row of column names, then one row per sample, found an empty file"),
        "header.csv": ("a,a\n1,2\n", r"header.csv: expected a header row of distinct, non-empty column names"),
        "wide.csv": ("a,b,target\n1,2,3\n", r"wide.csv: expected 2 feature columns for input 'features' besides the "
                                             r"labels \(a column 'y' or 'y_<output>'\), found 3: 'a', 'b', 'target' \(is one "
                                             r"of them the labels\? name it 'y'\)"),
        "nan.csv": ("a,b\n1,nan\n", r"nan.csv: expected finite values for input 'features', found NaN or Inf in 1 sample"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message):
            load_data(tmp_path / name, features)
    two = [TensorSpec("age", (None, 1), "float32"), TensorSpec("visits", (None, 1), "float32")]
    (tmp_path / "two.csv").write_text("age,y\n1,0\n")
    with pytest.raises(DataError, match=r"two.csv: expected one column per model input, named 'age', 'visits', found columns 'age'"):
        load_data(tmp_path / "two.csv", two)
    (tmp_path / "latin.csv").write_bytes("a,b\n1,\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: expected a CSV text file \(UTF-8, comma-separated\), found UnicodeDecodeError"):
        load_data(tmp_path / "latin.csv", features)


def test_data_lint_names_few_samples_and_evaluation_data_scaled_unlike_calibration():
    from tfquant.lint import data_lint

    rng = np.random.default_rng(0)
    calibration = load_data(np.clip(rng.random((300, 8, 8, 1)) * 1.2 - 0.1, 0, 1), IMAGE, name="calibration data")
    assert data_lint(calibration, load_data(rng.random((50, 8, 8, 1)), IMAGE, name="eval data")) == []
    pixels = load_data(rng.random((50, 8, 8, 1)) * 255, IMAGE, name="eval data")
    (clipped,) = data_lint(calibration, pixels)
    outside = np.mean(pixels.inputs["image"] > calibration.inputs["image"].max() + 0.01 * np.ptp(calibration.inputs["image"]))
    assert clipped.startswith(f"input 'image': {100 * outside:.1f} % of the evaluation values lie outside the "
                              "calibration data's range [0, 1] (<calibration data>; evaluation: [")
    (sliver,) = data_lint(calibration, load_data(rng.random((50, 8, 8, 1)) / 255, IMAGE, name="eval data"))
    assert "the evaluation values fill under 1/16 of the calibration data's range" in sliver
    (few,) = data_lint(calibration.take(np.arange(3)))
    assert few == ("<calibration data>: 3 calibration samples: int8 ranges from so few rarely cover the inputs the model "
                   "meets. Fix: calibrate on 100 to 500 samples of real inputs (calib_samples draws up to 200 of them "
                   "by default)")
    tokens = [TensorSpec("tokens", (None, 4), "int32")]
    assert data_lint(load_data(np.ones((40, 4)), tokens), load_data(np.full((40, 4), 99), tokens)) == []


def test_arrays_that_are_neither_inputs_nor_labels_are_said_to_be_unread(tmp_path, caplog):
    import logging

    np.savez(tmp_path / "extra.npz", x=np.zeros((2, 8, 8, 1)), y=np.arange(2), meta=np.arange(2))
    with caplog.at_level(logging.WARNING, logger="tfquant"):
        assert len(load_data(tmp_path / "extra.npz", IMAGE, outputs=PROBS)) == 2
    assert "extra.npz: arrays 'meta' are neither model inputs nor labels and were not read" in caplog.text


def test_csv_keeps_whole_ids_quoted_lines_and_says_what_is_missing(tmp_path):
    ids = [TensorSpec("user", (None, 1), "int64"), TensorSpec("age", (None, 1), "float32")]
    (tmp_path / "ids.csv").write_text("user,age\n16777217,41\n123456789,\"29\"\n")
    table = load_data(tmp_path / "ids.csv", ids)
    assert table.inputs["user"].tolist() == [[16777217], [123456789]] and table.inputs["age"].dtype == np.float32
    features = [TensorSpec("features", (None, 2), "float32")]
    (tmp_path / "quoted.csv").write_text('a,b\n1,"2\n"\n3,x\n')  # a cell spanning two lines
    with pytest.raises(DataError, match=r"found 'x' in column 'b' on line 4"):
        load_data(tmp_path / "quoted.csv", features)
    (tmp_path / "commas.csv").write_text("a,b\n1,2\n,\n")
    with pytest.raises(DataError, match=r"expected a number in every cell .* found '' in column 'a' on line 3"):
        load_data(tmp_path / "commas.csv", features)
    (tmp_path / "labels.csv").write_text("y\n1\n")
    with pytest.raises(DataError, match=r"labels.csv: expected feature columns for input 'x' besides the labels, found "
                                        r"labels only"):
        load_data(tmp_path / "labels.csv", [TensorSpec("x", (None, None), "float32")])


def test_data_lint_leaves_a_single_evaluation_sample_alone():
    from tfquant.lint import data_lint

    calibration = load_data(np.linspace(0, 1, 300).reshape(300, 1), [TensorSpec("x", (None, 1), "float32")])
    assert data_lint(calibration, load_data(np.full((1, 1), 0.5), [TensorSpec("x", (None, 1), "float32")])) == []


def test_constant_output_is_judged_column_by_column():
    from tfquant.verify import constant_output

    rng = np.random.default_rng(0)
    varying = np.stack([np.full(50, 1000.0), rng.random(50)], axis=1)
    assert constant_output("out", varying) is None  # one column moves with the sample
    assert constant_output("out", np.full((50, 2), np.nan)) is None
    assert constant_output("out", np.tile([0.1, 0.9], (50, 1))).startswith(
        "output 'out': the float file gives the same values for all 50 evaluation samples (they differ by at most 0)")
