"""What a .tflite file's weight tensors hold, read from the file itself: zeros, distinct values, sparse storage.

Pruning and clustering change the weights, but what ships is the file: a pruned tensor whose
zeros are stored like any other value, a clustered tensor whose shared values became many int8
codes under per-channel scales. Every number the reports give about weights is read here, from
the flatbuffer (the tensors of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV),
not from the Keras model.

`write_sparse` stores the zero weights in TFLite's sparse format (the converter's sparsify pass):
the raw file shrinks, and the interpreter densifies those tensors when it loads the file (a
DENSIFY op per tensor). Which tensors the format took, and which it left dense and why, is read
back from the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from ..flatbuffer import builtin_codes

WEIGHT_OPS = {schema.BuiltinOperator.CONV_2D: "CONV_2D", schema.BuiltinOperator.DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D",
              schema.BuiltinOperator.FULLY_CONNECTED: "FULLY_CONNECTED",
              schema.BuiltinOperator.TRANSPOSE_CONV: "TRANSPOSE_CONV"}
_DTYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
           schema.TensorType.INT8: np.int8}


@dataclass(frozen=True)
class WeightTensor:
    name: str  # the tensor's name in the file, up to its first ';' (fused names are long)
    op: str
    values: np.ndarray  # what the tensor holds, dense (None-free); a sparse tensor is read as stored
    zero_point: int
    sparse: bool  # stored in TFLite's sparse format


def weight_tensors(tflite: bytes) -> Iterator[WeightTensor]:
    """Every constant weight tensor of a weight op in the main graph, once each."""
    model = schema.Model.GetRootAs(tflite, 0)
    graph = model.Subgraphs(0)
    codes = builtin_codes(model)
    producers = {}  # a DENSIFY's output -> its sparse input: the weight op reads the densified tensor
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if codes[op.OpcodeIndex()] == schema.BuiltinOperator.DENSIFY:
            producers[op.Outputs(0)] = op.Inputs(0)
    seen = set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = codes[op.OpcodeIndex()]
        if code not in WEIGHT_OPS or op.InputsLength() < 2:
            continue
        index = op.Inputs(1)
        index = producers.get(index, index)
        if index < 0 or index in seen:
            continue
        seen.add(index)
        tensor = graph.Tensors(index)
        dtype = _DTYPES.get(tensor.Type())
        buffer = model.Buffers(tensor.Buffer()) if 0 < tensor.Buffer() < model.BuffersLength() else None
        if dtype is None or buffer is None or not buffer.DataLength():
            continue
        values = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype=dtype)
        quantization = tensor.Quantization()
        zero = int(quantization.ZeroPoint(0)) if quantization is not None and quantization.ZeroPointLength() else 0
        name = tensor.Name().decode() if isinstance(tensor.Name(), bytes) else str(tensor.Name())
        yield WeightTensor(name.split(";")[0], WEIGHT_OPS[code], values, zero, tensor.Sparsity() is not None)


def sparsity(tflite: bytes) -> dict[str, float]:
    """Per weight tensor, the fraction of its values that are zero (as stored; symmetric int8 zero is 0)."""
    return {w.name: round(float(np.mean(w.values == w.zero_point)), 4) for w in weight_tensors(tflite)
            if w.values.size and not w.sparse}


def unique_values(tflite: bytes) -> dict[str, int]:
    """Per weight tensor, how many distinct values it holds: a 16-cluster tensor holds at most 16."""
    return {w.name: int(np.unique(w.values).size) for w in weight_tensors(tflite) if not w.sparse}


def write_sparse(tflite: bytes) -> tuple[bytes, list[str], dict[str, str]]:
    """The file with its zero weights stored sparse; which tensors were, and which stayed dense and why.

    The converter's sparsify pass encodes a constant weight tensor only where enough of it is zero
    for the encoding to be smaller; a tensor it leaves dense is named with its zero fraction.
    """
    from tensorflow.lite.python.convert import mlir_sparsify

    from ..console import captured_stderr

    with captured_stderr():
        sparse = bytes(mlir_sparsify(tflite))
    before, after = list(weight_tensors(tflite)), list(weight_tensors(sparse))
    if len(before) != len(after):  # pragma: no cover - the pass keeps every weight op
        return tflite, [], {w.name: "the sparse file lost a weight op; the dense file is kept" for w in before}
    # The pass renames the constants it re-encodes: tensors are matched by their op's place in the graph.
    stored = [dense.name for dense, encoded in zip(before, after) if encoded.sparse]
    left = {w.name: f"{100 * float(np.mean(w.values == w.zero_point)):.0f} % zeros: too few for the sparse "
                    "format to be smaller" for w, encoded in zip(before, after) if not encoded.sparse}
    return sparse, stored, left
