"""Calibration, evaluation and training data, validated against a model's input signature.

Sources: `.npz` (one array per input name, or `x`; labels `y` or `y_<output name>`), `.npy` (inputs only),
`.csv` (a header row; labels in columns `y` or `y_<output name>`), a folder of images with one sub-folder
per class, NumPy arrays, `(x, y)` tuples, dicts,
`tf.data.Dataset`s and generators (of `[x]` lists as TFLite's representative datasets yield,
or of Keras' `(x, y)` and `(x,)` batches, where x may be a dict by input name, or a tuple or list of
inputs in the model's order: a Keras model's, a SavedModel signature's by name). Everything is
checked before any conversion: shape, dtype, NaN/Inf, emptiness; labels by output name (what each
output's labels must be is its task's business).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .errors import DataError, called, problem
from .types import TensorSpec

log = logging.getLogger("tfquant")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """Validated samples: one array per model input, by input name, and labels by output name.

    Inputs keep the dtype the model takes (float32 images, int32 token ids). Labels are checked
    here for count and finiteness only; what they must look like depends on each output's task
    (`tfquant.tasks`).
    """

    source: str
    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, indices: np.ndarray) -> "Dataset":
        return Dataset(self.source, {k: v[indices] for k, v in self.inputs.items()},
                       {k: v[indices] for k, v in self.labels.items()})

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """One sample at a time as batches of one, keyed by input name: the form of a representative
        dataset for a file with a signature, and of QuantizationDebugger's debug dataset."""
        for i in range(len(self)):
            yield {name: array[i:i + 1] for name, array in self.inputs.items()}

    def calibration_subset(self, count: int) -> "Dataset":
        """`count` samples drawn without replacement by a fixed seed, in file order: the same data
        always gives the same representative dataset, so conversions are reproducible."""
        if len(self) <= count:
            return self
        rng = np.random.default_rng(CALIBRATION_SEED)
        return self.take(np.sort(rng.choice(len(self), size=count, replace=False)))

    def halves(self) -> tuple["Dataset", "Dataset"]:
        """Every other sample, twice: one half to fit statistics on, the other to check them on
        (a single sample is both)."""
        if len(self) < 2:
            return self, self
        return self.take(np.arange(0, len(self), 2)), self.take(np.arange(1, len(self), 2))

    def sample_shapes(self) -> dict[str, tuple]:
        """The shape of one sample of each input (what fixes a model's open dims at export)."""
        return {name: tuple(array.shape[1:]) for name, array in self.inputs.items()}


@dataclass(frozen=True)
class ImageOptions:
    """How a folder of images becomes arrays: `size` (height, width) and a pixel multiplier."""

    size: Optional[tuple[int, int]] = None
    scale: float = 1 / 255


Raw = tuple[dict[str, np.ndarray] | list[np.ndarray], dict[str, np.ndarray]]  # inputs, labels by key ("y", "y_<output>")
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
    outputs: Sequence[TensorSpec] = (),
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
        outputs: the model's output specs; labels are `y` (a model with one output) or
            `y_<output name>`, one array per labelled output.
        labels: `"required"` (training), `"optional"` (evaluation) or `"ignored"` (calibration).
            Defaults to `"optional"`.
        images: size and scale for image folders.
        name: what to call an in-memory source in messages. Defaults to `"data"`.

    Raises:
        DataError: naming the source, what was expected and what was found.
    """
    if isinstance(source, Dataset):
        where, (raw_inputs, raw_labels) = source.source, (dict(source.inputs), dict(source.labels))
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
        return Dataset(where, inputs, {})
    matched = _match_labels(where, raw_labels, outputs)
    if not matched and labels == "required":
        keys = "'y'" if len(outputs) <= 1 else ", ".join(repr(f"y_{o.name}") for o in outputs)
        raise DataError(problem(where, f"labels ({keys}) for training", "inputs only"))
    for key, array in matched.items():
        if len(array) != count:
            raise DataError(problem(where, f"{count} labels for output {key!r} (one per sample)", f"{len(array)}"))
        if array.dtype.kind not in "biuf":
            raise DataError(problem(where, f"numeric labels for output {key!r}", f"dtype {array.dtype}"))
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(problem(where, f"finite labels for output {key!r}", "NaN or Inf"))
    return Dataset(where, inputs, matched)


def _match_labels(where: str, raw: dict[str, np.ndarray], outputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """`y` (one output) or `y_<output name>` -> labels by output name."""
    if not raw:
        return {}
    names = [o.name for o in outputs]
    if not names:  # no output specs (a .tflite file read without its outputs): one anonymous output
        return {"": np.asarray(raw["y"])} if "y" in raw else {}
    found: dict[str, np.ndarray] = {}
    for key, array in raw.items():
        if key == "y":
            if len(names) > 1:
                raise DataError(problem(where, "one label array per output, named " +
                                        ", ".join(repr(f"y_{n}") for n in names), "a single 'y'"))
            found[names[0]] = np.asarray(array)
        elif key.startswith("y_") and key[2:] in names:
            found[key[2:]] = np.asarray(array)
        else:
            raise DataError(problem(where, "label arrays named " + ", ".join(
                repr(k) for k in (["y"] if len(names) == 1 else []) + [f"y_{n}" for n in names]), f"{key!r}"))
    return found


def _load_path(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    if not path.exists():
        raise DataError(problem(path, "a data file (.npz, .npy, .csv) or an image folder", "no such file or folder"))
    key = "" if path.is_dir() else path.suffix.lower()
    loader = _LOADERS.get(key)
    if loader is None:
        kinds = ", ".join(sorted(k for k in _LOADERS if k)) + " or a folder of images"
        raise DataError(problem(path, kinds, f"a file ending in {path.suffix!r}"))
    return loader(path, specs, images)


@register_loader(".npz")
def _load_npz(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise DataError(problem(path, "a NumPy .npz archive (a zip of .npy arrays)",
                                f"{path.stat().st_size} bytes that are not a zip archive"))
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as exc:
        found = "an array of Python objects, which would need pickle" if "pickle" in str(exc) else f"ValueError: {exc}"
        raise DataError(problem(path, "a NumPy .npz archive of numeric arrays", found)) from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError
        raise DataError(problem(path, "a NumPy .npz archive", f"an unreadable file ({type(exc).__name__}: {exc})")) from None
    labels = {k: arrays.pop(k) for k in [k for k in arrays if k == "y" or k.startswith("y_")]}
    return arrays, labels


@register_loader(".npy")
def _load_npy(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(problem(path, "a NumPy .npy array", f"an unreadable file ({type(exc).__name__}: {exc})")) from None
    return [array], {}


@register_loader(".csv")
def _load_csv(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    """A table with a header row, for tabular models. Columns named as the model's inputs feed those
    inputs (one column each: a model with one `(N, 1)` input per feature, as Keras' structured-data
    guides build); otherwise a model with one `(N, F)` input takes the F other columns in file order.
    Labels are in columns `y` or `y_<output name>`. Every cell must be a number: a text category has
    to be encoded before it reaches an int8 file."""
    import csv
    from array import array

    cells = array("d")  # 8 bytes a cell as the rows stream by: at most 4x the file (a cell and its comma)
    header: list[str] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for row in reader:
                line = reader.line_num  # the file's line, where a quoted cell spans lines
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                if not header:
                    header = [name.strip() for name in row]
                    if not all(header) or len(set(header)) != len(header):
                        raise DataError(problem(path, "a header row of distinct, non-empty column names", f"{row}"))
                    continue
                if len(row) != len(header):
                    raise DataError(problem(path, f"{len(header)} cells per row (one per header column)",
                                            f"{len(row)} on line {line}"))
                for column, cell in enumerate(row):
                    try:
                        cells.append(float(cell))
                    except ValueError:
                        raise DataError(problem(path, "a number in every cell (encode text categories as numbers first)",
                                                f"{cell.strip()!r} in column {header[column]!r} on line {line}")) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(problem(path, "a CSV text file (UTF-8, comma-separated)", f"{type(exc).__name__}: {exc}")) from None
    if not header:
        raise DataError(problem(path, "a header row of column names, then one row per sample", "an empty file"))
    table = np.frombuffer(cells, np.float64).reshape(-1, len(header))
    columns = {name: table[:, i] for i, name in enumerate(header)}
    labels = {k: _whole_or_float(columns.pop(k)) for k in [k for k in header if k == "y" or k.startswith("y_")]}
    names = [spec.name for spec in specs]
    if all(name in columns for name in names):
        unused = [k for k in columns if k not in names]
        if unused:
            log.warning("%s: columns %s are not model inputs and were not read", path, ", ".join(map(repr, unused)))
        return {spec.name: _column_as(spec, columns[spec.name]) for spec in specs}, labels
    if len(specs) == 1 and len(specs[0].shape) == 2 and not columns:
        raise DataError(problem(path, f"feature columns for input {names[0]!r} besides the labels", "labels only"))
    if len(specs) == 1 and len(specs[0].shape) == 2:
        width = specs[0].shape[1]
        if width is not None and width != len(columns):
            listed = ", ".join(map(repr, list(columns)[:8])) + (", …" if len(columns) > 8 else "")
            raise DataError(problem(path, f"{width} feature columns for input {names[0]!r} besides the labels "
                                    "(a column 'y' or 'y_<output>')",
                                    f"{len(columns)}: {listed}" + ("" if labels else " (is one of them the labels? name it 'y')")))
        features = table if len(columns) == len(header) else table[:, [header.index(k) for k in columns]]
        # float32 as the input takes them (whole numbers as they are, for an integer input): a copy of half the cells
        return {names[0]: features.astype(np.float32 if specs[0].dtype not in INTEGER_INPUTS else np.float64)}, labels
    expected = "one column per model input, named " + ", ".join(map(repr, names))
    raise DataError(problem(path, expected, "columns " + (", ".join(map(repr, columns)) or "(none)")))


def _column_as(spec: TensorSpec, values: np.ndarray) -> np.ndarray:
    """One CSV column in the shape of an input that takes one value per sample: (N,) or (N, 1). An
    integer input keeps the parsed float64 (exact to 2^53: an id past 2^24 stays itself)."""
    values = values if spec.dtype in INTEGER_INPUTS else values.astype(np.float32)
    return values.reshape((len(values),) + (1,) * (len(spec.shape) - 1))


def _whole_or_float(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64) if np.all(values == np.round(values)) and np.isfinite(values).all() else \
        values.astype(np.float32)


@register_loader("")
def _load_image_folder(path: Path, specs: Sequence[TensorSpec], images: ImageOptions) -> Raw:
    from PIL import Image, UnidentifiedImageError

    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise DataError(problem(path, "a model with one image input (N, H, W, C) for an image folder", f"{len(specs)} input(s)"))
    _, height, width, channels = specs[0].shape
    size = images.size or (height, width)
    if size[0] is None or size[1] is None:
        raise DataError(problem(path, f"an image size ({called('image_size')}) for a model with unknown height/width", "none"))
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
    return [np.stack(arrays)], {"y": np.asarray(labels, dtype=np.int64)}


def _load_object(source: Any, where: str) -> Raw:
    if isinstance(source, np.ndarray):
        return [source], {}
    if isinstance(source, dict):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        return arrays, {k: arrays.pop(k) for k in [k for k in arrays if k == "y" or k.startswith("y_")]}
    if isinstance(source, tuple) and len(source) == 2:
        features, labels = source
        inputs = features if isinstance(features, dict) else list(features) if isinstance(features, list) else [features]
        return _as_arrays(inputs), _label_arrays(labels)
    if isinstance(source, list) and source and all(isinstance(a, np.ndarray) for a in source):
        return [np.asarray(a) for a in source], {}
    if isinstance(source, (list, tuple, str, bytes)):
        raise DataError(problem(where, "arrays, (x, y), a dict of arrays, a tf.data.Dataset or a generator",
                                f"a {type(source).__name__} of {', '.join(sorted({type(v).__name__ for v in source})) or 'nothing'}"))
    if callable(source):
        source = source()
    if hasattr(source, "__iter__"):
        return _collect_batches(iter(source), where)
    raise DataError(problem(where, "an array, (x, y), a dict of arrays, a tf.data.Dataset or a generator", type(source).__name__))


def _label_arrays(labels) -> dict[str, np.ndarray]:
    if labels is None:
        return {}
    if isinstance(labels, dict):
        return {(k if k == "y" or k.startswith("y_") else f"y_{k}"): np.asarray(v) for k, v in labels.items()}
    return {"y": np.asarray(labels)}


def _as_arrays(inputs):
    if isinstance(inputs, dict):
        return {k: np.asarray(v) for k, v in inputs.items()}
    return [np.asarray(v) for v in inputs]


def _collect_batches(batches, where: str) -> Raw:
    """Concatenate what a generator or tf.data.Dataset yields: `[x]`, `x`, `(x, y)`, or dicts by input name."""
    inputs: dict[Any, list[np.ndarray]] | None = None
    labels: list[np.ndarray] = []
    for element in batches:
        if isinstance(element, tuple) and len(element) == 2:
            features, y = element
            labels.append(np.atleast_1d(np.asarray(y)))
        elif isinstance(element, tuple) and len(element) == 1:  # Keras' `(x,)`: inputs without labels
            (features,) = element
        else:
            features = element
        if isinstance(features, dict):
            parts = {k: _batch_array(v, where) for k, v in features.items()}
        else:
            listed = features if isinstance(features, (list, tuple)) else [features]
            parts = dict(enumerate(_batch_array(f, where) for f in listed))
        if inputs is None:
            inputs = {k: [] for k in parts}
        if set(parts) != set(inputs):
            raise DataError(problem(where, f"the same {len(inputs)} input array(s) in every batch", f"{len(parts)}"))
        for key, part in parts.items():
            inputs[key].append(part)
    if inputs is None:
        return [np.zeros((0,), np.float32)], {}
    arrays = {k: np.concatenate(v) for k, v in inputs.items()}
    collected = arrays if all(isinstance(k, str) for k in arrays) else [arrays[k] for k in sorted(arrays)]
    return collected, ({"y": np.concatenate(labels)} if labels else {})


def _batch_array(value: Any, where: str) -> np.ndarray:
    """One input's part of a batch as an array: a tensor or an array, not a nesting of several."""
    try:
        array = np.asarray(value)
    except ValueError:  # arrays of different shapes nested as one: "inhomogeneous shape"
        array = None
    if array is None or array.dtype == object:
        raise DataError(problem(where, "batches of arrays: x, [x1, x2], (x, y), (x,) or a dict of arrays by input name",
                                f"a {type(value).__name__} of arrays of different shapes nested in one input's place"))
    return array


def _match_inputs(where: str, raw: dict[str, np.ndarray] | list[np.ndarray], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    if isinstance(raw, dict):
        if all(n in raw for n in names):
            keys = names
        elif len(specs) == 1 and "x" in raw:
            keys = ["x"]
        elif len(specs) == 1 and len(raw) == 1:
            keys = list(raw)
            log.warning("%s: took array %r as input %r (the only array; name it 'x' or %r to say so)",
                        where, keys[0], names[0], names[0])
        else:
            expected = f"an array 'x' or {names[0]!r}" if len(specs) == 1 else \
                "one array per model input: " + ", ".join(map(repr, names))
            raise DataError(problem(where, expected, "arrays " + (", ".join(map(repr, raw)) or "(none)")))
        arrays = [raw[key] for key in keys]
        unused = [key for key in raw if key not in keys]
        if unused:
            log.warning("%s: arrays %s are neither model inputs nor labels and were not read", where,
                        ", ".join(map(repr, unused)))
    else:
        arrays = raw
        if len(arrays) != len(specs):
            raise DataError(problem(where, f"{len(specs)} input array(s) for the model's inputs {names}", f"{len(arrays)}"))
    return {spec.name: _check_input(where, spec, np.asarray(a)) for spec, a in zip(specs, arrays)}


INTEGER_INPUTS = ("int8", "uint8", "int16", "int32", "int64", "bool")


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
    if spec.dtype in INTEGER_INPUTS:
        # Token ids, category ids and masks stay integers; whole-number floats are accepted as such.
        if array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise DataError(problem(where, f"whole numbers for {label} ({spec.dtype} ids)", "fractional values"))
        return array.astype(np.dtype(spec.dtype), copy=False)
    dtype = np.dtype(spec.dtype) if spec.dtype in ("float32", "float16") else np.float32
    return array.astype(dtype, copy=False)
