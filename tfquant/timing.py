"""Latency on the interpreter: files timed at batch 1 in interleaved runs until every median is known
within +-5 %, with the median's confidence interval, start-up and memory.

Inputs are set once, in each file's own dtypes, before the clock starts: the first sample of the
evaluation data where there is one, else synthetic inputs.
"""

from __future__ import annotations

import math
import os
import resource
import time
from typing import Optional

import numpy as np

from . import console
from .data import Dataset
from .errors import TFLiteFileError, one_line, problem
from .harness import BUILTIN, Runner, runtime
from .inspect import Source
from .types import P99_RUNS, BenchmarkResult, Latency


def synthetic_inputs(runner: Runner, seed: int = 0) -> list[np.ndarray]:
    """Inputs in the file's own dtypes, in its graph's input order, for timing a file without data."""
    rng = np.random.default_rng(seed)
    arrays = []
    for detail in runner.interpreter.get_input_details():
        shape, dtype = tuple(detail["shape"]), np.dtype(detail["dtype"])
        if dtype.kind in "iu" and not detail["quantization"][0]:
            # ids (tokens, categories): 1 is in any table but the smallest, and not the padding id 0 (a
            # sequence of padding only is empty: a masked average of it divides by 0)
            arrays.append(np.ones(shape, dtype))
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            arrays.append(rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def invoke_once(runner: Runner, sample: Optional[Dataset] = None) -> None:
    """Set the inputs (the sample's first, repeated to the allocated batch, else `synthetic_inputs`) and
    invoke once; the inputs stay set for the invokes after it."""
    batch = runner.allocate()
    if sample is not None:
        runner.run([np.repeat(values[:1], batch, axis=0) for values in runner.bind(sample)])
        return
    interpreter = runner.interpreter
    for detail, values in zip(interpreter.get_input_details(), synthetic_inputs(runner)):
        interpreter.set_tensor(detail["index"], values)
    interpreter.invoke()


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

    def __init__(self, model: Source, num_threads: Optional[int], sample: Optional[Dataset] = None):
        rss_before = _current_rss_mb()
        started = time.perf_counter()
        self.runner = Runner(model, num_threads=num_threads)
        try:
            self.runner.allocate()
        except TFLiteFileError:  # the default delegate cannot prepare this graph: time the builtin kernels
            self._without_delegate()
        self.init_ms = (time.perf_counter() - started) * 1e3
        self.memory_delta = _current_rss_mb() - rss_before
        started = time.perf_counter()
        try:
            invoke_once(self.runner, sample)
        except RuntimeError:
            self._without_delegate()
            started = time.perf_counter()
            try:
                invoke_once(self.runner, sample)
            except RuntimeError as exc:
                fed = f"the first sample of {sample.source}" if sample is not None else "synthetic inputs"
                raise TFLiteFileError(problem(self.runner.where, "a file the interpreter can run",
                                              f"it stopped on {fed}: {one_line(exc, 300)}")) from None
        self.first_ms = (time.perf_counter() - started) * 1e3
        self.samples: list[float] = []
        self.warmup: list[float] = []

    def _without_delegate(self) -> None:
        self.runner.delegate = BUILTIN
        self.runner._open(delegates=False)
        self.runner.allocate()

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
            delegate=self.runner.delegate,
        )


def latency(samples_ms: np.ndarray) -> Latency:
    low, high = median_interval(samples_ms)
    return Latency(
        min=float(samples_ms.min()), mean=float(samples_ms.mean()), std=float(samples_ms.std()),
        p50=float(np.percentile(samples_ms, 50)), p90=float(np.percentile(samples_ms, 90)),
        p99=float(np.percentile(samples_ms, 99)) if samples_ms.size >= P99_RUNS else None,
        count=int(samples_ms.size), p50_low=low, p50_high=high,
    )


def median_interval(samples: np.ndarray, z: float = 1.96) -> tuple[Optional[float], Optional[float]]:
    """A 95 % confidence interval of the median from the order statistics (distribution-free):
    the j-th and k-th smallest of n runs, j = floor(n/2 - z*sqrt(n)/2), k = ceil(1 + n/2 + z*sqrt(n)/2).
    None below 6 runs."""
    n = int(samples.size)
    if n < 6:
        return None, None
    ordered = np.sort(samples)
    half = z * math.sqrt(n) / 2
    j, k = max(1, math.floor(n / 2 - half)), min(n, math.ceil(1 + n / 2 + half))
    return float(ordered[j - 1]), float(ordered[k - 1])


TARGET_MARGIN = 0.05  # the median's confidence interval: within +-5 %


def benchmark(
    *models: Source, runs: int = 50, warmup: int = 5, num_threads: Optional[int] = None,
    max_seconds: float = 10.0, sample: Optional[Dataset] = None,
) -> list[BenchmarkResult]:
    """Latency of one or more files at batch 1, measured interleaved in one run.

    With several files each timed run alternates between them, so that a change in machine load
    hits all of them alike and their ratio stays honest. After `runs` runs, runs go on until the
    median of every file is known within +-5 % (its 95 % confidence interval) or `max_seconds`
    have been spent timing.

    Example:
        >>> fp, q = benchmark("float.tflite", "int8.tflite", runs=100)   # doctest: +SKIP
        >>> q.inference_ms.p50 / fp.inference_ms.p50
        1.07

    Args:
        models: paths or bytes of .tflite files.
        runs: timed invokes per file at least. Defaults to `50`.
        warmup: untimed invokes per file before timing. Defaults to `5`.
        num_threads: interpreter threads. Defaults to every core.
        max_seconds: stop adding runs after this long. Defaults to `10`.
        sample: data whose first sample every run is fed (an empty or out-of-range synthetic input
            can take another path through a model, or stop it). Defaults to synthetic inputs.
    """
    from .errors import RecipeError

    if runs < 1 or warmup < 0 or not max_seconds > 0:
        raise RecipeError(f"bench: expected runs >= 1, warmup >= 0 and max_seconds > 0, found runs={runs}, "
                          f"warmup={warmup}, max_seconds={max_seconds}")
    timers = [_Timer(m, num_threads, sample) for m in models]
    for _ in range(warmup):
        for timer in timers:
            timer.warmup.append(timer.once())
    started = time.perf_counter()
    with console.step(f"timing {len(timers)} file(s): at least {runs} interleaved runs each", total=runs) as shown:
        done = 0
        while True:
            for timer in timers:
                timer.samples.append(timer.once())
            done += 1
            if done <= runs:
                shown.advance()
            if done >= runs and (time.perf_counter() - started > max_seconds or done % 10 == 0 and all(
                    (latency(np.asarray(t.samples)).p50_margin or 1.0) <= TARGET_MARGIN for t in timers)):
                break
    return [t.result(warmup) for t in timers]
