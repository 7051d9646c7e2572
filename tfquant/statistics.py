"""One pass of the calibration samples through the calibrated float file, for what min/max does not tell.

It gathers, per activation tensor, a histogram of its values over the calibration samples (for
MSE-optimal ranges, `tfquant.ranges`) and, per weight op (conv, depthwise conv, fully connected),
the mean of its input per channel (for bias correction, `tfquant.bias`). The pass runs TFLite's
builtin kernels with every intermediate tensor kept; it costs about one calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .data import Dataset

BINS = 2048
WEIGHT_OPS = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
              schema.BuiltinOperator.FULLY_CONNECTED)


@dataclass
class Histogram:
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
    """Histograms by tensor index (of the calibrated file); input means by the weight op's output tensor name."""

    histograms: dict[int, Histogram] = field(default_factory=dict)
    input_means: dict[str, np.ndarray] = field(default_factory=dict)
    samples: int = 0
    # Per activation tensor: the sum over samples of each sample's own min and max.
    extreme_sums: dict[int, np.ndarray] = field(default_factory=dict)

    def average_extremes(self) -> dict[int, tuple[float, float]]:
        """Per tensor, the mean over samples of each sample's min and max (zero kept inside)."""
        count = max(1, self.samples)
        return {index: (min(0.0, float(low / count)), max(0.0, float(high / count)))
                for index, (low, high) in self.extreme_sums.items()}


def collect(calibrated: bytes, calibration: Dataset, *, limit: int = 64) -> Statistics:
    """Run up to `limit` calibration samples through `calibrated` and gather the statistics."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = model.subgraphs[0]
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    ends = {int(i) for i in graph.inputs} | {int(i) for i in graph.outputs}
    stats = Statistics()
    for index, tensor in enumerate(graph.tensors):
        q = tensor.quantization
        if index in ends or q is None or q.min is None or q.max is None or len(q.min) != 1:
            continue
        low, high = float(q.min[0]), float(q.max[0])
        if high > low:
            stats.histograms[index] = Histogram(low, high, np.zeros(BINS, np.int64))
    weight_inputs = {}
    for op in graph.operators:
        if codes[op.opcodeIndex] in WEIGHT_OPS and len(op.inputs) > 1:
            weight_inputs[_name(graph.tensors[op.outputs[0]])] = int(op.inputs[0])
    # Builtin kernels only: a delegate would keep its intermediate tensors to itself.
    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner()
    details = runner.get_input_details()
    sums: dict[str, np.ndarray] = {}
    for count, sample in enumerate(calibration.samples()):
        if count >= limit:
            break
        runner(**{name: sample[name].astype(details[name]["dtype"], copy=False) for name in details})
        for index, histogram in stats.histograms.items():
            values = interpreter.get_tensor(index)
            histogram.add(values)
            extremes = np.array([values.min(), values.max()], np.float64)
            stats.extreme_sums[index] = stats.extreme_sums[index] + extremes if index in stats.extreme_sums else extremes
        for name, index in weight_inputs.items():
            x = interpreter.get_tensor(index)
            if x.dtype.kind == "f":
                mean = x.reshape(-1, x.shape[-1]).mean(axis=0, dtype=np.float64)
                sums[name] = sums[name] + mean if name in sums else mean
        stats.samples += 1
    stats.input_means = {name: total / max(1, stats.samples) for name, total in sums.items()}
    return stats


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
