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


def test_npz_npy_and_arrays(tmp_path):
    x = np.random.default_rng(0).random((10, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 3)
    np.save(tmp_path / "d.npy", x)
    from_npz = load_data(tmp_path / "d.npz", IMAGE, num_classes=3)
    assert len(from_npz) == 10 and list(from_npz.labels) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert np.array_equal(load_data(tmp_path / "d.npy", IMAGE).inputs["image"], x)
    assert load_data((x, np.ones(10)), IMAGE).labels.dtype == np.int64


def test_generators_and_tf_data(tmp_path):
    import tensorflow as tf

    x = np.ones((12, 8, 8, 1), np.float32)
    representative = lambda: ([x[i:i + 1]] for i in range(12))  # noqa: E731 - TFLite's own style
    assert len(load_data(representative, IMAGE)) == 12
    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(12) % 10)).batch(5)
    loaded = load_data(dataset, IMAGE, num_classes=10, labels="required")
    assert len(loaded) == 12 and loaded.labels[-1] == 1
    with pytest.raises(DataError, match=r"<data>: expected at least 1 sample"):
        load_data(lambda: iter([]), IMAGE)


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


def test_one_hot_and_float_labels():
    x = np.zeros((3, 8, 8, 1), np.float32)
    one_hot = np.eye(10)[[3, 1, 4]]
    assert list(load_data((x, one_hot), IMAGE, num_classes=10).labels) == [3, 1, 4]
    with pytest.raises(DataError, match="expected whole-number class labels 'y', found fractional"):
        load_data((x, np.array([0.5, 1, 2])), IMAGE)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 16), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    data = load_data(tmp_path, IMAGE, num_classes=2, labels="required")
    assert data.inputs["image"].shape == (6, 8, 8, 1)
    assert list(data.labels) == [0, 0, 0, 1, 1, 1]
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
