"""One pass of the calibration samples through the calibrated float file, for what min/max does not tell.

TFLite's calibrator keeps one number per side of each activation: the extreme over every
calibration sample. Choosing a range needs more (`tfquant.ranges`), so this pass gathers, per
activation tensor:

- each sample's own min and max (`extremes`), from which a range that covers whole samples but
  not the single most extreme one can be read (a quantile over samples), or their mean;
- a histogram of its values over all samples, for MSE-optimal clipping;

and, per weight op (conv, depthwise conv, fully connected), the mean of its input per channel,
for bias correction (`tfquant.bias`), and when asked the second moments of what its weights
multiply, for GPTQ rounding (`tfquant.rounding`). The pass runs TFLite's builtin kernels with every
intermediate tensor kept and costs about one calibration. Statistics of two disjoint sets of
samples merge into those of their union (`merge`), so the samples can be split to fit ranges on
one part and check them on the other without running anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .data import Dataset
from .flatbuffer import WEIGHT_OPS, builtin_codes, view_model

BINS = 2048
HELD_BYTES = 64 << 20  # tensor values held across samples before they are binned, in one call per tensor


class _Held:
    """Each sample's copy of every tensor, held until `HELD_BYTES` is reached, then binned and reduced to each
    sample's [min, max] in one call per tensor, not one per tensor and sample: on an unrolled LSTM's 294
    tensors, calls per sample cost more than the values."""

    def __init__(self, histograms: dict[int, "Histogram"], counts: bool):
        self.histograms, self.counts = histograms, counts
        self.values: dict[int, list[np.ndarray]] = {index: [] for index in histograms}
        self.extremes: dict[int, list[np.ndarray]] = {index: [] for index in histograms}  # [samples, 2] per flush
        self.bytes = 0

    def add(self, index: int, values: np.ndarray) -> None:
        if not values.size:
            raise ValueError(f"tensor {index} holds no values: a [min, max] of nothing")
        self.values[index].append(values.reshape(-1))
        self.bytes += values.nbytes

    def flush_if_full(self) -> None:
        if self.bytes >= HELD_BYTES:
            self.flush()

    def flush(self) -> None:
        for index, parts in self.values.items():
            if not parts:
                continue
            joined = np.concatenate(parts)
            if self.counts:
                self.histograms[index].add(joined)
            starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
            self.extremes[index].append(np.stack([np.minimum.reduceat(joined, starts),
                                                  np.maximum.reduceat(joined, starts)], axis=1).astype(np.float64))
            parts.clear()
        self.bytes = 0

    def all_extremes(self) -> dict[int, np.ndarray]:
        """Per tensor, every sample's [min, max] so far, shape [samples, 2]."""
        self.flush()
        return {index: np.concatenate(parts).reshape(-1, 2) if parts else np.zeros((0, 2))
                for index, parts in self.extremes.items()}


@dataclass
class Histogram:
    """Counts of a tensor's values in `BINS` equal bins over its calibrated [low, high]."""

    low: float
    high: float
    counts: np.ndarray

    def add(self, values: np.ndarray) -> None:
        scaled = (values.reshape(-1).astype(np.float32) - self.low) * (BINS / (self.high - self.low))
        bins = np.clip(scaled, 0, BINS - 1).astype(np.int64)
        self.counts += np.bincount(bins, minlength=BINS)

    def centers(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, BINS + 1)
        return (edges[:-1] + edges[1:]) / 2


@dataclass
class Statistics:
    """Per activation tensor (by index in the calibrated file): its histogram and each sample's
    [min, max] (`extremes`, shape [samples, 2]); per weight op's output tensor name: the mean of
    its input per channel."""

    histograms: dict[int, Histogram] = field(default_factory=dict)
    extremes: dict[int, np.ndarray] = field(default_factory=dict)
    input_means: dict[str, np.ndarray] = field(default_factory=dict)
    samples: int = 0
    input_moments: dict[str, np.ndarray] = field(default_factory=dict)  # E[x xᵀ] per weight op, for tfquant.rounding

    def merge(self, other: "Statistics") -> "Statistics":
        """The statistics of both sets of samples together (the same calibrated file for both)."""
        total = self.samples + other.samples
        histograms = {index: Histogram(h.low, h.high, h.counts + other.histograms[index].counts)
                      for index, h in self.histograms.items() if index in other.histograms}
        extremes = {index: np.concatenate([e, other.extremes[index]])
                    for index, e in self.extremes.items() if index in other.extremes}
        means, moments = ({name: (m * self.samples + theirs[name] * other.samples) / max(1, total)
                           for name, m in ours.items() if name in theirs}
                          for ours, theirs in ((self.input_means, other.input_means),
                                               (self.input_moments, other.input_moments)))
        return Statistics(histograms, extremes, means, total, moments)


def collect(calibrated: bytes, calibration: Dataset, *, counts: bool = True, moments: bool = False) -> Statistics:
    """Run every calibration sample through `calibrated` and gather the statistics. `counts=False`
    leaves the histograms' bins empty (only MSE ranges read them), keeping their calibrated range;
    `moments=True` also gathers each weight op's input moments (`tfquant.rounding`)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from .rounding import Moments

    model = view_model(calibrated)
    graph = model.subgraphs[0]
    ends = {int(i) for i in graph.inputs} | {int(i) for i in graph.outputs}
    stats = Statistics()
    for index, tensor in enumerate(graph.tensors):
        q = tensor.quantization
        if index in ends or q is None or q.min is None or q.max is None or len(q.min) != 1:
            continue
        low, high = float(q.min[0]), float(q.max[0])
        if high > low:
            stats.histograms[index] = Histogram(low, high, np.zeros(BINS, np.int64))
    # Per weight op (by output name): its input tensor and, when asked, its moments (read with the
    # flatbuffer's accessors, which the op's conv options need).
    weight_inputs, trackers = {}, {}
    reader = schema.Model.GetRootAs(calibrated, 0)
    flat, codes = reader.Subgraphs(0), builtin_codes(reader)
    for i in range(flat.OperatorsLength()):
        op = flat.Operators(i)
        code = codes[op.OpcodeIndex()]
        if code not in WEIGHT_OPS or op.InputsLength() < 2:
            continue
        name = flat.Tensors(op.Outputs(0)).Name().decode()
        weight_inputs[name] = op.Inputs(0)
        tracker = Moments.of(code, op, flat) if moments else None
        if tracker is not None:
            trackers[name] = tracker
    # Builtin kernels only: a delegate would keep its intermediate tensors to itself.
    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner()
    details = runner.get_input_details()
    held = _Held(stats.histograms, counts)
    sums: dict[str, np.ndarray] = {}
    for sample in calibration.samples():
        runner(**{name: sample[name].astype(details[name]["dtype"], copy=False) for name in details})
        for index in stats.histograms:
            held.add(index, interpreter.get_tensor(index))
        for name, index in weight_inputs.items():
            x = interpreter.get_tensor(index)
            if x.dtype.kind == "f":
                # A conv's input keeps its spatial layout: the taps at a border read padding there.
                mean = x[0].astype(np.float64) if x.ndim == 4 and len(x) == 1 else \
                    x.reshape(-1, x.shape[-1]).mean(axis=0, dtype=np.float64)
                sums[name] = sums[name] + mean if name in sums else mean
                if name in trackers:
                    trackers[name].add(x)
        stats.samples += 1
        held.flush_if_full()
    stats.extremes = held.all_extremes()
    stats.input_means = {name: total / max(1, stats.samples) for name, total in sums.items()}
    stats.input_moments = {name: value for name, tracker in trackers.items() if (value := tracker.value()) is not None}
    return stats
