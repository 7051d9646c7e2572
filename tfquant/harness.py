"""The interpreter harness: what a .tflite file does, measured on the LiteRT interpreter.

Batched evaluation (by resizing the input tensor when the file's batch dim is dynamic),
float<->quantized agreement and latency percentiles. Prefers `ai_edge_litert`; falls back to
the deprecated `tf.lite.Interpreter` only when LiteRT is not installed. Loads no TensorFlow.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Optional, Sequence

import numpy as np

from .inspect import Source, read_flatbuffer
from .data import Dataset, ImageOptions, load_data
from .errors import DataError, TFLiteFileError, problem
from .types import BenchmarkResult, Latency, Metrics, Runtime, TensorSpec

DEFAULT_BATCH = 64
_QUANTIZED_KINDS = "iu"


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
    """One input or output of the file and how to map it to and from float."""

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
        info = np.iinfo(self.dtype)
        scaled = np.divide(values, np.float32(self.scale), dtype=np.float32)
        # TFLite rounds half away from zero (std::round); NumPy's round is half to even.
        scaled += np.copysign(np.float32(0.5), scaled)
        np.trunc(scaled, out=scaled)
        scaled += np.float32(self.zero_point)
        np.clip(scaled, info.min, info.max, out=scaled)
        return scaled.astype(self.dtype)

    def from_file(self, values: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return values.astype(np.float32, copy=False)
        return (values.astype(np.float32) - self.zero_point) * self.scale


def _port(detail: dict[str, Any]) -> _Port:
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales", np.zeros(0))
    zero_points = params.get("zero_points", np.zeros(0))
    scale, zero = detail.get("quantization", (0.0, 0))
    if len(scales) == 1:
        scale, zero = float(scales[0]), int(zero_points[0])
    name = detail["name"]
    name = name[len("serving_default_"):] if name.startswith("serving_default_") else name
    return _Port(
        index=detail["index"], name=name.split(":")[0], dtype=np.dtype(detail["dtype"]),
        signature=tuple(int(d) for d in detail.get("shape_signature", detail["shape"])),
        scale=float(scale), zero_point=int(zero),
    )


class Runner:
    """An interpreter over one .tflite file that takes and returns float arrays.

    Example:
        >>> runner = Runner("build/digits_int8.tflite")     # doctest: +SKIP
        >>> runner.predict(dataset).shape
        (360, 10)
    """

    def __init__(self, model: Source, *, num_threads: Optional[int] = None):
        data, self.where = read_flatbuffer(model)
        interpreter_class, _, _ = _interpreter_class()
        self.num_threads = num_threads or default_threads()
        try:
            self.interpreter = interpreter_class(model_content=data, num_threads=self.num_threads)
        except (ValueError, RuntimeError) as exc:
            raise TFLiteFileError(problem(self.where, "a file the interpreter can run", " ".join(str(exc).split())[:300])) from None
        self.inputs = [_port(d) for d in self.interpreter.get_input_details()]
        self.outputs = [_port(d) for d in self.interpreter.get_output_details()]
        # Tensors are allocated on first use, at the batch size that use needs: every allocation
        # makes XNNPACK pack the weights again.
        self._batch: Optional[int] = None

    def allocate(self) -> None:
        """Allocate at the file's own shapes (batch 1 for a dynamic batch), as an app would."""
        if self._batch is None:
            self._allocate()
            self._batch = max(1, self.inputs[0].signature[0]) if self.inputs else 1

    def _allocate(self) -> None:
        try:
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise TFLiteFileError(problem(self.where, "a file the interpreter can run", " ".join(str(exc).split())[:300])) from None

    @property
    def specs(self) -> list[TensorSpec]:
        """The inputs as the user feeds them: float for quantized inputs, dynamic dims as None."""
        return [
            TensorSpec(p.name, tuple(None if d < 0 else d for d in p.signature), "float32" if p.quantized else p.dtype.name)
            for p in self.inputs
        ]

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

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """One invoke on one batch of float inputs; returns the first output in float."""
        for port, values in zip(self.inputs, inputs):
            self.interpreter.set_tensor(port.index, port.to_file(values))
        self.interpreter.invoke()
        out = self.outputs[0]
        return out.from_file(self.interpreter.get_tensor(out.index))

    def predict(self, data: Dataset, *, batch_size: int = DEFAULT_BATCH, progress: Optional[bool] = None) -> np.ndarray:
        """Run every sample; batched when the file's batch dim is dynamic, else in its fixed batch."""
        from tqdm.auto import tqdm

        arrays = list(data.inputs.values())
        count = len(data)
        fixed = None if self.dynamic_batch else max(1, self.inputs[0].signature[0])
        if fixed:
            step = fixed
        else:
            # Equal batches (359 at 64 -> 6 x 60): one allocation, and at most a few padded samples
            # instead of a second resize for a short last batch.
            batches = math.ceil(count / max(1, batch_size))
            step = math.ceil(count / batches)
        results = []
        with tqdm(total=count, unit="sample", desc=f"eval {os.path.basename(self.where)}", disable=_no_bar(progress), leave=False) as bar:
            for start in range(0, count, step):
                chunk = [a[start:start + step] for a in arrays]
                real = len(chunk[0])
                if real < step:  # pad the last chunk to the batch the tensors are allocated for
                    chunk = [np.concatenate([c, np.repeat(c[-1:], step - real, axis=0)]) for c in chunk]
                self._resize(len(chunk[0]))
                results.append(self.run(chunk)[:real].copy())
                bar.update(real)
        return np.concatenate(results)


def _no_bar(progress: Optional[bool]) -> Optional[bool]:
    # tqdm's disable=None hides the bar when stderr is not a terminal (CI, pipes, services).
    return None if progress is None else not progress


def load_eval_data(runner: Runner, eval_data: Any, *, images: ImageOptions = ImageOptions()) -> Dataset:
    out_shape = runner.outputs[0].signature
    num_classes = out_shape[-1] if len(out_shape) == 2 and out_shape[-1] > 1 else None
    return load_data(eval_data, runner.specs, num_classes=num_classes, labels="required", images=images, name="eval data")


def metrics(scores: np.ndarray, labels: np.ndarray, seconds: float) -> Metrics:
    """Top-1 (and top-5 where there are more than 5 classes) accuracy of class scores."""
    if scores.ndim != 2:
        raise DataError(problem("model output", "class scores of shape (N, classes)", f"shape {scores.shape}"))
    if scores.shape[1] == 1:  # one sigmoid unit: class 1 above 0.5
        top1 = (scores[:, 0] > 0.5).astype(np.int64)
        return Metrics(float(np.mean(top1 == labels)), None, len(labels), seconds)
    top1 = float(np.mean(scores.argmax(axis=1) == labels))
    top5 = None
    if scores.shape[1] > 5:
        best5 = np.argpartition(-scores, 5, axis=1)[:, :5]
        top5 = float(np.mean((best5 == labels[:, None]).any(axis=1)))
    return Metrics(top1, top5, len(labels), seconds)


def agreement(scores_a: np.ndarray, scores_b: np.ndarray) -> float:
    """Fraction of samples whose top-1 class is the same in both files."""
    if scores_a.shape[1] == 1:
        return float(np.mean((scores_a[:, 0] > 0.5) == (scores_b[:, 0] > 0.5)))
    return float(np.mean(scores_a.argmax(axis=1) == scores_b.argmax(axis=1)))


def evaluate(
    tflite: Source,
    eval_data: Any,
    *,
    batch_size: int = DEFAULT_BATCH,
    num_threads: Optional[int] = None,
    progress: Optional[bool] = None,
    images: ImageOptions = ImageOptions(),
) -> Metrics:
    """Top-1 / top-5 accuracy of a .tflite file on labelled data, on the interpreter.

    Inputs are quantized and outputs dequantized with the file's own parameters.

    Example:
        >>> evaluate("build/digits_int8.tflite", "data/digits_test.npz").accuracy   # doctest: +SKIP
        0.9805555555555555

    Args:
        tflite: path or bytes of the file.
        eval_data: labelled data (see `tfquant.data.load_data`).
        batch_size: samples per invoke when the batch dim is dynamic. Defaults to `64`.
        num_threads: interpreter threads. Defaults to every core.
        progress: show a progress bar. Defaults to: when stderr is a terminal.
    """
    runner = Runner(tflite, num_threads=num_threads)
    data = load_eval_data(runner, eval_data, images=images)
    started = time.perf_counter()
    scores = runner.predict(data, batch_size=batch_size, progress=progress)
    return metrics(scores, data.labels, time.perf_counter() - started)


def _random_inputs(runner: Runner, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for detail in runner.interpreter.get_input_details():
        shape, dtype = tuple(detail["shape"]), np.dtype(detail["dtype"])
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            arrays.append(rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM).

    Not `ru_maxrss`: Linux carries that over fork and exec, so a child of a large process would
    report its parent's peak.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Timer:
    """Raw-array feeding for latency: inputs set once in the file's own dtype, no conversion timed."""

    def __init__(self, model: Source, num_threads: Optional[int]):
        rss_before = _current_rss_mb()
        started = time.perf_counter()
        self.runner = Runner(model, num_threads=num_threads)
        self.runner.allocate()
        self.init_ms = (time.perf_counter() - started) * 1e3
        self.memory_delta = _current_rss_mb() - rss_before
        interp = self.runner.interpreter
        for detail, values in zip(interp.get_input_details(), _random_inputs(self.runner)):
            interp.set_tensor(detail["index"], values)
        started = time.perf_counter()
        interp.invoke()
        self.first_ms = (time.perf_counter() - started) * 1e3
        self.samples: list[float] = []
        self.warmup: list[float] = []

    def once(self) -> float:
        started = time.perf_counter()
        self.runner.interpreter.invoke()
        return (time.perf_counter() - started) * 1e3

    def result(self, warmup: int) -> BenchmarkResult:
        runs = np.asarray(self.samples)
        return BenchmarkResult(
            model=self.runner.where,
            num_runs=len(runs),
            warmup_runs=warmup,
            num_threads=self.runner.num_threads,
            init_ms=self.init_ms,
            first_inference_ms=self.first_ms,
            warmup_avg_ms=float(np.mean(self.warmup)) if self.warmup else 0.0,
            inference_ms=latency(runs),
            memory_footprint_delta_mb=round(self.memory_delta, 3),
            peak_memory_mb=peak_rss_mb(),
            runtime=runtime(self.runner.num_threads),
        )


def latency(samples_ms: np.ndarray) -> Latency:
    return Latency(
        min=float(samples_ms.min()), mean=float(samples_ms.mean()), std=float(samples_ms.std()),
        p50=float(np.percentile(samples_ms, 50)), p90=float(np.percentile(samples_ms, 90)),
        p99=float(np.percentile(samples_ms, 99)), count=int(samples_ms.size),
    )


def benchmark(
    *models: Source, runs: int = 50, warmup: int = 5, num_threads: Optional[int] = None
) -> list[BenchmarkResult]:
    """Latency of one or more files at batch 1, measured interleaved in one run.

    With several files each timed run alternates between them, so that a change in machine load
    hits all of them alike and their ratio stays honest.

    Example:
        >>> fp, q = benchmark("float.tflite", "int8.tflite", runs=100)   # doctest: +SKIP
        >>> q.inference_ms.p50 / fp.inference_ms.p50
        1.07

    Args:
        models: paths or bytes of .tflite files.
        runs: timed invokes per file. Defaults to `50`.
        warmup: untimed invokes per file before timing. Defaults to `5`.
        num_threads: interpreter threads. Defaults to every core.
    """
    from .errors import RecipeError

    if runs < 1 or warmup < 0:
        raise RecipeError(f"bench: expected runs >= 1 and warmup >= 0, found runs={runs}, warmup={warmup}")
    timers = [_Timer(m, num_threads) for m in models]
    for _ in range(warmup):
        for timer in timers:
            timer.warmup.append(timer.once())
    for _ in range(runs):
        for timer in timers:
            timer.samples.append(timer.once())
    return [t.result(warmup) for t in timers]
