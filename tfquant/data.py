"""Calibration, evaluation and training data, validated against a model's input signature.

Sources: `.npz` (`x`, or one array per input name; integer labels `y`), `.npy` (inputs only),
a folder of images with one sub-folder per class, NumPy arrays, `(x, y)` tuples, dicts,
`tf.data.Dataset`s and generators (of `[x]` lists as TFLite's representative datasets yield,
or of `(x, y)` batches). Everything is checked before any conversion: shape, dtype, NaN/Inf,
emptiness, and labels against the model's class count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .errors import DataError, problem
from .types import TensorSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """Validated samples: one array per model input (same order as the model), optional labels."""

    source: str
    inputs: dict[str, np.ndarray]
    labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, indices: np.ndarray) -> "Dataset":
        labels = None if self.labels is None else self.labels[indices]
        return Dataset(self.source, {k: v[indices] for k, v in self.inputs.items()}, labels)

    def samples(self) -> Iterator[list[np.ndarray]]:
        """One sample at a time as float32 batches of one, inputs in the model's order: the form of
        TFLite's representative dataset and of QuantizationDebugger's debug dataset."""
        arrays = list(self.inputs.values())
        for i in range(len(self)):
            yield [a[i:i + 1].astype(np.float32) for a in arrays]

    def calibration_subset(self, count: int) -> "Dataset":
        """`count` samples drawn without replacement by a fixed seed, in file order: the same data
        always gives the same representative dataset, so conversions are reproducible."""
        if len(self) <= count:
            return self
        rng = np.random.default_rng(CALIBRATION_SEED)
        return self.take(np.sort(rng.choice(len(self), size=count, replace=False)))


@dataclass(frozen=True)
class ImageOptions:
    """How a folder of images becomes arrays: `size` (height, width) and a pixel multiplier."""

    size: Optional[tuple[int, int]] = None
    scale: float = 1 / 255


Raw = tuple[dict[str, np.ndarray] | list[np.ndarray], Optional[np.ndarray]]
_LOADERS: dict[str, Callable[[Path, Sequence[TensorSpec], ImageOptions], Raw]] = {}


def register_loader(*suffixes: str):
    """Register a file loader for the given suffixes (`""` is the loader of folders)."""

    def wrap(func):
        for suffix in suffixes:
            _LOADERS[suffix] = func
        return func

    return wrap


def load_data(
    source: Any,
    specs: Sequence[TensorSpec],
    *,
    num_classes: Optional[int] = None,
    labels: str = "optional",
    images: ImageOptions = ImageOptions(),
    name: str = "data",
) -> Dataset:
    """Load `source` and validate it against `specs`, the model's inputs.

    Example:
        >>> spec = TensorSpec("x", (None, 8, 8, 1), "float32")
        >>> len(load_data(np.zeros((4, 8, 8, 1)), [spec]))
        4

    Args:
        source: a path (`.npz`, `.npy`, image folder) or an in-memory source (see module doc).
        specs: the model's input specs; data must match their rank and known dims.
        num_classes: when given, labels must lie in `0 .. num_classes - 1`.
        labels: `"required"` (evaluation, training), `"optional"` or `"ignored"` (calibration).
            Defaults to `"optional"`.
        images: size and scale for image folders.
        name: what to call an in-memory source in messages. Defaults to `"data"`.

    Raises:
        DataError: naming the source, what was expected and what was found.
    """
    if isinstance(source, Dataset):
        where, (raw_inputs, raw_labels) = source.source, (dict(source.inputs), source.labels)
    elif isinstance(source, (str, Path)):
        where = str(source)
        raw_inputs, raw_labels = _load_path(Path(source), specs, images)
    else:
        where = f"<{name}>"
        raw_inputs, raw_labels = _load_object(source, where)

    inputs = _match_inputs(where, raw_inputs, specs)
    count = len(next(iter(inputs.values())))
    if count == 0:
        raise DataError(problem(where, "at least 1 sample", "0 samples"))
    for key, array in inputs.items():
        if len(array) != count:
            raise DataError(problem(where, f"the same number of samples in every input ({count})", f"{len(array)} in {key!r}"))
    if labels == "ignored":
        raw_labels = None
    elif raw_labels is None and labels == "required":
        raise DataError(problem(where, "integer labels 'y' for evaluation or training", "inputs only"))
    checked = None if raw_labels is None else _check_labels(where, raw_labels, count, num_classes)
    return Dataset(where, inputs, checked)


def _load_path(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    if not path.exists():
        raise DataError(problem(path, "a data file (.npz, .npy) or an image folder", "no such file or folder"))
    key = "" if path.is_dir() else path.suffix.lower()
    loader = _LOADERS.get(key)
    if loader is None:
        kinds = ", ".join(sorted(k for k in _LOADERS if k)) + " or a folder of images"
        raise DataError(problem(path, kinds, f"a file ending in {path.suffix!r}"))
    return loader(path, specs, images)


@register_loader(".npz")
def _load_npz(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise DataError(problem(path, "a NumPy .npz archive", f"an unreadable file ({type(exc).__name__}: {exc})")) from None
    labels = arrays.pop("y", None)
    return arrays, labels


@register_loader(".npy")
def _load_npy(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(problem(path, "a NumPy .npy array", f"an unreadable file ({type(exc).__name__}: {exc})")) from None
    return [array], None


@register_loader("")
def _load_image_folder(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    from PIL import Image, UnidentifiedImageError

    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise DataError(problem(path, "a model with one image input (N, H, W, C) for an image folder", f"{len(specs)} input(s)"))
    _, height, width, channels = specs[0].shape
    size = images.size or (height, width)
    if size[0] is None or size[1] is None:
        raise DataError(problem(path, "an image size (--image-size HxW) for a model with unknown height/width", "none"))
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels or 3)
    if mode is None:
        raise DataError(problem(path, "a model input with 1, 3 or 4 channels for images", f"{channels} channels"))
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(problem(path, "one sub-folder of images per class", "no sub-folders"))
    arrays, labels = [], []
    for label, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    pixels = image.convert(mode).resize((size[1], size[0]), Image.BILINEAR)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(problem(file, "a readable image", f"{type(exc).__name__}: {exc}")) from None
            array = np.asarray(pixels, dtype=np.float32) * images.scale
            arrays.append(array[..., None] if array.ndim == 2 else array)
            labels.append(label)
    if not arrays:
        raise DataError(problem(path, f"images ({', '.join(IMAGE_SUFFIXES)}) in the class sub-folders", "none"))
    return [np.stack(arrays)], np.asarray(labels, dtype=np.int64)


def _load_object(source: Any, where: str) -> Raw:
    if isinstance(source, np.ndarray):
        return [source], None
    if isinstance(source, dict):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        return arrays, arrays.pop("y", None)
    if isinstance(source, tuple) and len(source) == 2:
        features, labels = source
        inputs = features if isinstance(features, dict) else list(features) if isinstance(features, list) else [features]
        return _as_arrays(inputs), None if labels is None else np.asarray(labels)
    if isinstance(source, list) and source and all(isinstance(a, np.ndarray) for a in source):
        return [np.asarray(a) for a in source], None
    if callable(source):
        source = source()
    if hasattr(source, "__iter__"):
        return _collect_batches(iter(source), where)
    raise DataError(problem(where, "an array, (x, y), a dict of arrays, a tf.data.Dataset or a generator", type(source).__name__))


def _as_arrays(inputs):
    if isinstance(inputs, dict):
        return {k: np.asarray(v) for k, v in inputs.items()}
    return [np.asarray(v) for v in inputs]


def _collect_batches(batches, where: str) -> Raw:
    """Concatenate what a generator or tf.data.Dataset yields: `[x]`, `x`, `(x, y)` or dicts."""
    inputs: list[list[np.ndarray]] | None = None
    labels: list[np.ndarray] = []
    for element in batches:
        if isinstance(element, tuple) and len(element) == 2:
            features, y = element
            labels.append(np.atleast_1d(np.asarray(y)))
        else:
            features = element
        if isinstance(features, dict):
            raise DataError(problem(where, "batches of arrays or lists of arrays", "dict batches (pass a dict of arrays instead)"))
        parts = [np.asarray(f) for f in features] if isinstance(features, list) else [np.asarray(features)]
        if inputs is None:
            inputs = [[] for _ in parts]
        if len(parts) != len(inputs):
            raise DataError(problem(where, f"{len(inputs)} input array(s) in every batch", f"{len(parts)}"))
        for bucket, part in zip(inputs, parts):
            bucket.append(part)
    if inputs is None:
        return [np.zeros((0,), np.float32)], None
    arrays = [np.concatenate(bucket) for bucket in inputs]
    return arrays, (np.concatenate(labels) if labels else None)


def _match_inputs(where: str, raw: dict[str, np.ndarray] | list[np.ndarray], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    if isinstance(raw, dict):
        if len(specs) == 1 and "x" in raw:
            arrays = [raw["x"]]
        elif all(n in raw for n in names):
            arrays = [raw[n] for n in names]
        elif len(specs) == 1 and len(raw) == 1:
            arrays = list(raw.values())
        else:
            expected = "an array 'x'" if len(specs) == 1 else "one array per model input: " + ", ".join(map(repr, names))
            raise DataError(problem(where, expected, "arrays " + (", ".join(map(repr, raw)) or "(none)")))
    else:
        arrays = raw
        if len(arrays) != len(specs):
            raise DataError(problem(where, f"{len(specs)} input array(s) for the model's inputs {names}", f"{len(arrays)}"))
    return {spec.name: _check_input(where, spec, np.asarray(a)) for spec, a in zip(specs, arrays)}


def _check_input(where: str, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    label = f"input {spec.name!r}"
    if array.ndim == 0 or len(array) == 0:
        raise DataError(problem(where, f"at least 1 sample for {label}", "0 samples"))
    if array.dtype.kind not in "biuf":
        raise DataError(problem(where, f"numeric values for {label}", f"dtype {array.dtype}"))
    shape_ok = array.ndim == len(spec.shape) and all(
        want is None or want == got for want, got in zip(spec.shape[1:], array.shape[1:])
    )
    if not shape_ok:
        raise DataError(problem(where, f"shape {spec.describe()} for {label}", f"{tuple(array.shape)}"))
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1) if array.size else np.zeros(0, bool)
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(problem(where, f"finite values for {label}", f"NaN or Inf in {int(bad.sum())} sample(s), the first at index {first}"))
    dtype = np.dtype(spec.dtype) if spec.dtype in ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool") else np.float32
    return array.astype(dtype, copy=False)


def _check_labels(where: str, labels: Any, count: int, num_classes: Optional[int]) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and num_classes and y.shape[1] == num_classes:
        y = y.argmax(axis=1)  # one-hot
    if y.ndim != 1 or y.dtype.kind not in "biuf":
        raise DataError(problem(where, "labels 'y' as integers of shape (N,) or one-hot (N, classes)", f"dtype {y.dtype}, shape {tuple(y.shape)}"))
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and np.all(y == np.round(y))):
            raise DataError(problem(where, "whole-number class labels 'y'", "fractional or non-finite values"))
    y = y.astype(np.int64)
    if len(y) != count:
        raise DataError(problem(where, f"{count} labels (one per sample)", f"{len(y)}"))
    if num_classes and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(problem(where, f"labels in 0..{num_classes - 1} (the model has {num_classes} outputs)", f"labels {y.min()}..{y.max()}"))
    return y
