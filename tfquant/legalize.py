"""Edits of the float32 `.tflite` file, before calibration: a signature that names the IO, and ops made quantizable.

The converter emits a few float ops that TFLite's int8 quantizer cannot make integer although
an equivalent integer form exists: `NEG` (Keras 3's LayerNormalization, ConvNeXt), `SQUARE`
(Keras 3's UnitNormalization and `ops.normalize`). Left alone, each stays float between a
DEQUANTIZE and a QUANTIZE. Rewritten on the float file — `NEG(x)` as `MUL(x, -1)`, `SQUARE(x)` as
`MUL(x, x)` — they compute the same values in float and quantize like any MUL. Every rewrite is
listed in the export's notes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

SIGNATURE = "serving_default"
_Rewrite = Callable[[object, object, object], bool]
_REWRITES: dict[int, tuple[str, _Rewrite]] = {}


def _registers(op: int, description: str):
    def wrap(func: _Rewrite) -> _Rewrite:
        _REWRITES[op] = (description, func)
        return func

    return wrap


def _read(data: bytes):
    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def _write(model) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def name_signature(data: bytes, inputs: list[str], outputs: list[str]) -> bytes:
    """Give the file a `serving_default` signature: the main graph's inputs and outputs, in order, by these names."""
    model = _read(data)
    graph = model.subgraphs[0]
    if len(graph.inputs) != len(inputs) or len(graph.outputs) != len(outputs):
        raise ValueError(f"the file has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs, "
                         f"the model {len(inputs)} and {len(outputs)}")
    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map(name, index) for name, index in zip(inputs, graph.inputs)]
    signature.outputs = [_tensor_map(name, index) for name, index in zip(outputs, graph.outputs)]
    model.signatureDefs = [signature]
    return _write(model)


def _tensor_map(name: str, index: int):
    entry = schema.TensorMapT()
    entry.name = name
    entry.tensorIndex = int(index)
    return entry


def make_quantizable(data: bytes) -> tuple[bytes, list[str]]:
    """Rewrite float ops the int8 quantizer cannot handle into equivalent ones it can; returns the notes."""
    model = _read(data)
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    counts: dict[str, int] = {}
    for graph in model.subgraphs:
        for op in graph.operators:
            entry = _REWRITES.get(codes[op.opcodeIndex])
            if entry is not None and entry[1](model, graph, op):
                counts[entry[0]] = counts.get(entry[0], 0) + 1
    if not counts:
        return data, []
    return _write(model), [f"{description} ({count}×), so that int8 covers it" for description, count in counts.items()]


def _opcode(model, builtin: int) -> int:
    for index, code in enumerate(model.operatorCodes):
        if flatbuffer_utils.get_builtin_code_from_operator_code(code) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _as_mul(model, op) -> None:
    op.opcodeIndex = _opcode(model, schema.BuiltinOperator.MUL)
    op.builtinOptionsType = schema.BuiltinOptions.MulOptions
    options = schema.MulOptionsT()
    options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    op.builtinOptions = options


def _float(graph, index: int) -> bool:
    return graph.tensors[index].type == schema.TensorType.FLOAT32


@_registers(schema.BuiltinOperator.NEG, "NEG(x) as MUL(x, -1)")
def _neg(model, graph, op) -> bool:
    if not _float(graph, op.inputs[0]):
        return False
    buffer = schema.BufferT()
    buffer.data = np.array([-1.0], np.float32).tobytes()
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = []
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = len(model.buffers) - 1
    tensor.name = (graph.tensors[op.outputs[0]].name or b"neg") + b"/minus_one"
    graph.tensors.append(tensor)
    op.inputs = [op.inputs[0], len(graph.tensors) - 1]
    _as_mul(model, op)
    return True


@_registers(schema.BuiltinOperator.SQUARE, "SQUARE(x) as MUL(x, x)")
def _square(model, graph, op) -> bool:
    if not _float(graph, op.inputs[0]):
        return False
    op.inputs = [op.inputs[0], op.inputs[0]]
    _as_mul(model, op)
    return True
