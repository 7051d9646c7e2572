"""The interpreter harness: what a .tflite file does, measured on the LiteRT interpreter.

Batched evaluation (by resizing the input tensor when the file's batch dim is dynamic) and
float<->quantized agreement; latency is timed in `tfquant.timing`. Prefers `ai_edge_litert`; falls back to
the deprecated `tf.lite.Interpreter` only when LiteRT is not installed. Loads no TensorFlow.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Optional, Sequence

import numpy as np

from . import console
from .console import captured_stderr
from .inspect import Source, read_flatbuffer
from .data import Dataset, ImageOptions, load_data
from .errors import DataError, TFLiteFileError, one_line, problem
from .types import Metrics, Runtime, TensorSpec

DEFAULT_BATCH = 64
BUILTIN = "none (XNNPACK could not prepare this graph)"
SIGNATURE = "serving_default"
_QUANTIZED_KINDS = "iu"
_BLOCK = 1 << 17  # values quantized at a time: two float32 buffers of 512 KiB


@functools.lru_cache(maxsize=None)  # reading the package's metadata costs about 1 ms a call
def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert", metadata.version("ai-edge-litert")
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow.lite", tf.__version__


def default_threads() -> int:
    """Every core: evaluation is throughput-bound and the interpreter scales with threads."""
    return os.cpu_count() or 1


def runtime(num_threads: int) -> Runtime:
    _, name, version = _interpreter_class()
    return Runtime(name=name, version=version, num_threads=num_threads)


@dataclass
class _Port:
    """One input or output of the file, by its signature name, and how to map it to and from float."""

    index: int
    name: str
    dtype: np.dtype
    signature: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype.kind in _QUANTIZED_KINDS and self.scale != 0.0

    def to_file(self, values: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return values.astype(self.dtype, copy=False)
        # Block by block, so that the five passes over each block stay in the core's cache: on a
        # batch of 60 images of 224x224x3 that took 11.5 ms where five passes over the batch took 24.
        source = np.ascontiguousarray(values).reshape(-1)
        out = np.empty(source.shape, self.dtype)
        info = np.iinfo(self.dtype)
        scale, zero = np.float32(self.scale), np.float32(self.zero_point)
        scaled, half = np.empty(min(len(source), _BLOCK), np.float32), np.empty(min(len(source), _BLOCK), np.float32)
        for start in range(0, len(source), _BLOCK):
            block = source[start:start + _BLOCK]
            s, h = scaled[:len(block)], half[:len(block)]
            np.divide(block, scale, out=s, dtype=np.float32)
            # TFLite rounds half away from zero (std::round); NumPy's round is half to even.
            np.copysign(np.float32(0.5), s, out=h)
            s += h
            np.trunc(s, out=s)
            s += zero
            np.clip(s, info.min, info.max, out=s)
            out[start:start + len(block)] = s
        return out.reshape(np.shape(values))

    def from_file(self, values: np.ndarray) -> np.ndarray:
        if not self.quantized:  # integers the graph computes (class ids from an argmax) stay integers
            return values if values.dtype.kind in "biu" else values.astype(np.float32, copy=False)
        return (values.astype(np.float32) - self.zero_point) * self.scale


def _port(detail: dict[str, Any], name: Optional[str] = None) -> _Port:
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales", np.zeros(0))
    zero_points = params.get("zero_points", np.zeros(0))
    scale, zero = detail.get("quantization", (0.0, 0))
    if len(scales) == 1:
        scale, zero = float(scales[0]), int(zero_points[0])
    if name is None:
        name = detail["name"]
        name = name[len("serving_default_"):] if name.startswith("serving_default_") else name
        name = name.split(":")[0]
    return _Port(
        index=detail["index"], name=name, dtype=np.dtype(detail["dtype"]),
        signature=tuple(int(d) for d in detail.get("shape_signature", detail["shape"])),
        scale=float(scale), zero_point=int(zero),
    )


def _make_interpreter(data: bytes, num_threads: int, where: str, delegates: bool = True):
    interpreter_class, _, _ = _interpreter_class()
    options = {}
    if not delegates:
        from ai_edge_litert.interpreter import OpResolverType

        options["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with captured_stderr():  # the runtime's own notices ("Created TensorFlow Lite XNNPACK delegate")
            return interpreter_class(model_content=data, num_threads=num_threads, **options)
    except (ValueError, RuntimeError) as exc:
        raise TFLiteFileError(problem(where, "a file the interpreter can run", one_line(exc, 300))) from None


class Runner:
    """An interpreter over one .tflite file that takes and returns float arrays, by name.

    Inputs and outputs are the file's `serving_default` signature when it has one (tfquant's
    files always do), else its graph inputs and outputs by tensor name.

    Example:
        >>> runner = Runner("build/digits_int8.tflite")     # doctest: +SKIP
        >>> runner.predict(dataset)["probs"].shape
        (359, 10)
    """

    def __init__(self, model: Source, *, num_threads: Optional[int] = None):
        self.data, self.where = read_flatbuffer(model)
        self.num_threads = num_threads or default_threads()
        self.delegate = "XNNPACK"
        self._open(delegates=True)

    def _open(self, *, delegates: bool) -> None:
        self.interpreter = _make_interpreter(self.data, self.num_threads, self.where, delegates)
        signatures = self.interpreter.get_signature_list()
        if SIGNATURE in signatures:
            runner = self.interpreter.get_signature_runner(SIGNATURE)
            self.inputs = [_port(d, n) for n, d in runner.get_input_details().items()]
            self.outputs = [_port(d, n) for n, d in runner.get_output_details().items()]
            # The signature lists names alphabetically; keep the graph's own order.
            order = [d["index"] for d in self.interpreter.get_input_details()]
            self.inputs.sort(key=lambda p: order.index(p.index) if p.index in order else len(order))
            order = [d["index"] for d in self.interpreter.get_output_details()]
            self.outputs.sort(key=lambda p: order.index(p.index) if p.index in order else len(order))
        else:
            self.inputs = [_port(d) for d in self.interpreter.get_input_details()]
            self.outputs = [_port(d) for d in self.interpreter.get_output_details()]
        # Tensors are allocated on first use, at the batch size that use needs: every allocation
        # makes XNNPACK pack the weights again.
        self._batch: Optional[int] = None

    def allocate(self) -> int:
        """Allocate at the file's own shapes (batch 1 for a dynamic batch), as an app would; returns the batch."""
        if self._batch is None:
            self._allocate()
            self._batch = max(1, self.inputs[0].signature[0]) if self.inputs else 1
        return self._batch

    def _allocate(self) -> None:
        try:
            with captured_stderr():  # XNNPACK announces itself on the first allocation
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise TFLiteFileError(problem(self.where, "a file the interpreter can run", one_line(exc, 300))) from None

    @property
    def specs(self) -> list[TensorSpec]:
        """The inputs as the user feeds them: float for quantized inputs, dynamic dims as None."""
        return [
            TensorSpec(p.name, tuple(None if d < 0 else d for d in p.signature), "float32" if p.quantized else p.dtype.name)
            for p in self.inputs
        ]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec(p.name, tuple(None if d < 0 else d for d in p.signature), "float32") for p in self.outputs]

    @property
    def dynamic_batch(self) -> bool:
        return all(p.signature and p.signature[0] < 0 for p in self.inputs)

    def _resize(self, batch: int) -> None:
        if batch == self._batch:
            return
        for port in self.inputs:
            shape = [batch] + [abs(d) if d >= 0 else 1 for d in port.signature[1:]]
            self.interpreter.resize_tensor_input(port.index, shape)
        self._allocate()
        self._batch = batch

    def bind(self, data: Dataset) -> list[np.ndarray]:
        """The data's arrays in the file's input order, matched by name (one unnamed input binds as is)."""
        if all(p.name in data.inputs for p in self.inputs):
            return [data.inputs[p.name] for p in self.inputs]
        if len(self.inputs) == 1 and len(data.inputs) == 1:
            return list(data.inputs.values())
        raise DataError(problem(data.source, "arrays named as the file's inputs: " + ", ".join(repr(p.name) for p in self.inputs),
                                "arrays " + ", ".join(map(repr, data.inputs))))

    def run(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """One invoke on one batch of float inputs (in the file's input order); every output in float, by name."""
        for port, values in zip(self.inputs, inputs):
            try:
                self.interpreter.set_tensor(port.index, port.to_file(values))
            except ValueError as exc:  # the file fixes a dim the data has otherwise
                shape = next(tuple(int(d) for d in detail["shape"]) for detail in self.interpreter.get_input_details()
                             if detail["index"] == port.index)
                raise DataError(problem(self.where, f"input {port.name!r} of shape {shape}",
                                        f"samples of shape {tuple(np.shape(values))} ({one_line(exc, 160)})")) from None
        self.interpreter.invoke()
        return {out.name: out.from_file(self.interpreter.get_tensor(out.index)) for out in self.outputs}

    def predict(self, data: Dataset, *, batch_size: int = DEFAULT_BATCH, progress: Optional[bool] = None,
                label: Optional[str] = None) -> dict[str, np.ndarray]:
        """Run every sample; batched when the file's batch dim is dynamic, else in its fixed batch.

        If the default delegate (XNNPACK) cannot prepare the graph, the file runs on TFLite's
        builtin kernels instead, and `delegate` says so.
        """
        try:
            return self._predict(data, batch_size, progress, label)
        except TFLiteFileError as exc:
            if self.delegate != "XNNPACK" or "XNNPACK" not in str(exc) and "delegate" not in str(exc).lower():
                raise
            self.delegate = BUILTIN
            self._open(delegates=False)
            return self._predict(data, batch_size, progress, label)

    def _predict(self, data: Dataset, batch_size: int, progress: Optional[bool],
                 label: Optional[str]) -> dict[str, np.ndarray]:
        arrays = self.bind(data)
        count = len(data)
        fixed = None if self.dynamic_batch else max(1, self.inputs[0].signature[0])
        if fixed:
            step = fixed
        else:
            # Equal batches (359 at 64 -> 6 x 60): one allocation, and at most a few padded samples
            # instead of a second resize for a short last batch.
            batches = math.ceil(count / max(1, batch_size))
            step = math.ceil(count / batches)
        results: dict[str, list[np.ndarray]] = {p.name: [] for p in self.outputs}
        shown = console.step(f"evaluating {label or os.path.basename(self.where)} on {count} samples", total=count) \
            if progress is not False else contextlib.nullcontext(console.Step(0, None))
        with shown as bar:
            for start in range(0, count, step):
                chunk = [a[start:start + step] for a in arrays]
                real = len(chunk[0])
                if real < step:  # pad the last chunk to the batch the tensors are allocated for
                    chunk = [np.concatenate([c, np.repeat(c[-1:], step - real, axis=0)]) for c in chunk]
                self._resize(len(chunk[0]))
                try:
                    outputs = self.run(chunk)
                except RuntimeError as exc:
                    raise self._stopped(data, [a[start:start + real] for a in arrays], start, exc, label) from None
                for name, values in outputs.items():
                    results[name].append(values[:real].copy())
                bar.advance(real)
        return {name: np.concatenate(parts) for name, parts in results.items()}

    def _stopped(self, data: Dataset, chunk: list[np.ndarray], start: int, exc: RuntimeError,
                 label: Optional[str] = None) -> TFLiteFileError:
        """The error for an invoke the interpreter stopped: on which sample, and why where that is known.
        A file read from bytes is named by `label` (the float32 file, the int8 file)."""
        found = re.sub(r"([a-z])(Node number \d)", r"\1. \2", one_line(exc, 300))  # the runtime's lines run together
        where = f"samples {start}-{start + len(chunk[0]) - 1}" if len(chunk[0]) > 1 else f"sample {start}"
        if len(chunk[0]) > 1 and self.dynamic_batch:  # one at a time, to name the sample
            self._resize(1)
            for offset in range(len(chunk[0])):
                try:
                    self.run([a[offset:offset + 1] for a in chunk])
                except RuntimeError:
                    where = f"sample {start + offset}"
                    break
        why = next((f" ({reason})" for marks, reason in _STOPS if all(m in found for m in marks)), "")
        named = label if label and self.where.startswith("<") else self.where
        return TFLiteFileError(problem(named, "a file the interpreter can run on every sample",
                                       f"it stopped on {where} of {data.source}: {found}{why}"))


# Interpreter failures that data causes, with what they mean: (substrings of the message, explanation).
_STOPS = (
    (("div.cc", "zero_point"), "a DIV's divisor is 0 on this sample: int8 stops there where float gives inf or NaN; "
                               "an average over a sequence that is all padding divides by 0"),
    (("gather index out of bounds",), "an id at or past the rows of a lookup table on this sample (an Embedding's "
                                      "input_dim): ids must stay below it, as the tokenizer the model was trained "
                                      "with makes them"),
)


def load_eval_data(runner: Runner, eval_data: Any, *, images: ImageOptions = ImageOptions()) -> Dataset:
    return load_data(eval_data, runner.specs, outputs=runner.output_specs, images=images, name="eval data")


def evaluate(
    tflite: Source,
    eval_data: Any,
    *,
    batch_size: int = DEFAULT_BATCH,
    num_threads: Optional[int] = None,
    progress: Optional[bool] = None,
    images: ImageOptions = ImageOptions(),
    tasks: Optional[dict[str, str]] = None,
) -> Metrics:
    """Each output's metrics for a .tflite file on evaluation data, on the interpreter.

    Inputs are quantized and outputs dequantized with the file's own parameters. Classification
    outputs need labels (`y` or `y_<output>`); regression outputs report R² against labels.

    Example:
        >>> evaluate("build/digits_int8.tflite", "data/digits_test.npz").accuracy   # doctest: +SKIP
        0.9944289693593314

    Args:
        tflite: path or bytes of the file.
        eval_data: evaluation data (see `tfquant.data.load_data`).
        batch_size: samples per invoke when the batch dim is dynamic. Defaults to `64`.
        num_threads: interpreter threads. Defaults to every core.
        progress: `False` keeps this evaluation off the progress display (which the command
            shows on a terminal). Defaults to showing it.
        tasks: per output name, `"classification"`, `"regression"` or `"embedding"`. Defaults to
            the detected task.
    """
    from . import tasks as task_metrics

    runner = Runner(tflite, num_threads=num_threads)
    data = load_eval_data(runner, eval_data, images=images)
    started = time.perf_counter()
    outputs = runner.predict(data, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - started
    chosen, labels = task_metrics.choose(outputs, data.labels, task_metrics.parse_tasks(tasks), data.source)
    judged = task_metrics.judge(outputs, chosen, labels)
    primary = judged.primary()
    if primary is not None and primary.accuracy is None:
        raise DataError(problem(data.source, f"labels for classification output {primary.name!r} "
                                f"('y' or 'y_{primary.name}')", "none"))
    return Metrics(accuracy=None if primary is None else primary.accuracy,
                   top5_accuracy=None if primary is None else primary.top5_accuracy,
                   samples=len(data), seconds=seconds, outputs=list(judged.outputs.values()))
