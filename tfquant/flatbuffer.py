"""Reading, editing and writing a `.tflite` flatbuffer: the helpers every pass over a file shares.

A pass reads the file into the schema's object API (`read_model`), finds ops by what they run and
tensors by who writes and reads them (`builtin_of`, `producers_of`, `readers_of`), adds constants,
tensors and ops (`scalar_constant`, `float_tensor_like`, `new_op`), edits float constants in place
(`float_constant`, `replace_constant`) and writes the file back (`write_model`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils


WEIGHT_OPS = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
              schema.BuiltinOperator.FULLY_CONNECTED)  # the ops whose second input is a weights tensor

# Ops whose quantized kernels copy stored values from an input (by its index) to every output,
# without rescaling: they are right only where input and outputs share one scale and zero point.
COPIES = {getattr(schema.BuiltinOperator, name): at for name, at in (
    ("REVERSE_V2", 0), ("TRANSPOSE", 0), ("SLICE", 0), ("STRIDED_SLICE", 0), ("RESHAPE", 0), ("SQUEEZE", 0),
    ("EXPAND_DIMS", 0), ("TILE", 0), ("BROADCAST_TO", 0), ("GATHER", 0), ("GATHER_ND", 0), ("SPLIT", 1),
    ("SPLIT_V", 0), ("UNPACK", 0), ("DEPTH_TO_SPACE", 0), ("SPACE_TO_DEPTH", 0), ("BATCH_TO_SPACE_ND", 0),
    ("SPACE_TO_BATCH_ND", 0), ("MIRROR_PAD", 0))}
# Ops that only move values (copies, joins, shapes, the int8 file's edges): they compute nothing.
MOVES = frozenset(COPIES) | frozenset(getattr(schema.BuiltinOperator, name) for name in (
    "CONCATENATION", "PACK", "SHAPE", "QUANTIZE", "DEQUANTIZE"))


def read_model(data: bytes):
    """The file in the schema's object API, the caller's own to edit."""
    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


_VIEWS: "OrderedDict[tuple[int, int], tuple[bytes, object]]" = OrderedDict()  # the files viewed last, parsed
VIEWS = 4  # files kept parsed for `view_model`
_VIEWS_LOCK = threading.Lock()


def _after_fork() -> None:  # a fork taken while another thread held the lock would leave it held for good
    global _VIEWS_LOCK
    _VIEWS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def view_model(data: bytes):
    """The file in the schema's object API, shared with every other viewer of the same bytes: to read, never
    to edit (`read_model` gives a copy of one's own).

    The passes that only read a file read the same one again and again (in one conversion of an unrolled
    LSTM, its calibrated file five times: the gates, the outputs' bounds, the range lint and two halves'
    statistics), and the generated reader unpacks every tensor and op in Python, about 45 ms a time on
    that file's 300 tensors. The files viewed last are kept parsed."""
    data = bytes(data)
    key = (len(data), hash(data))
    with _VIEWS_LOCK:
        found = _VIEWS.get(key)
        if found is not None and found[0] == data:
            _VIEWS.move_to_end(key)
            return found[1]
    model = read_model(data)
    with _VIEWS_LOCK:
        _VIEWS[key] = (data, model)
        while len(_VIEWS) > VIEWS:
            _VIEWS.popitem(last=False)
    return model


def write_model(model) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def drop_unused_opcodes(model) -> None:
    """Forget operator codes no op uses any more: an interpreter registers every listed code, used or not."""
    used = sorted({op.opcodeIndex for graph in model.subgraphs for op in graph.operators})
    remap = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for graph in model.subgraphs:
        for op in graph.operators:
            op.opcodeIndex = remap[op.opcodeIndex]


def opcode(model, builtin: int, *, at_least: int = 1) -> int:
    """The index of `builtin`'s operator code in the model (of its highest version where the quantizer left
    several), added if the model has none, its version raised to `at_least` (the interpreter registers some
    kernels from version 2 on, and int8 forms need later ones)."""
    found = [(code.version, index) for index, code in enumerate(model.operatorCodes)
             if flatbuffer_utils.get_builtin_code_from_operator_code(code) == builtin]
    if found:
        index = max(found)[1]
        code = model.operatorCodes[index]
        code.version = max(code.version, at_least)
        return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = at_least
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def text(name) -> str:
    """A tensor's or op's name as text (the flatbuffer readers give bytes)."""
    return name.decode() if isinstance(name, bytes) else str(name)


def signature_names(model) -> dict[int, str]:
    """The main graph's input and output tensors (by index) under the names its signature gives them, the
    names a caller binds by (a Keras 3 model's output tensor is often "Identity" where its signature says
    "probs")."""
    return {int(entry.tensorIndex): text(entry.name) for signature in model.signatureDefs or []
            if signature.subgraphIndex == 0 for entry in (signature.inputs or []) + (signature.outputs or [])}


def is_float(graph, index: int) -> bool:
    return graph.tensors[index].type == schema.TensorType.FLOAT32


def is_constant(model, graph, index: int) -> bool:
    """Whether tensor `index` holds data in the file (a weight or another constant): in its buffer, or
    stored past the flatbuffer (a large model's buffers give an offset and a size)."""
    buffer = graph.tensors[index].buffer
    if not 0 < buffer < len(model.buffers):
        return False
    stored = model.buffers[buffer]
    return (stored.data is not None and len(stored.data) > 0) or bool(getattr(stored, "size", 0))


def has_range(tensor) -> bool:
    """Whether a float tensor carries one calibrated [min, max]."""
    q = tensor.quantization
    return (tensor.type == schema.TensorType.FLOAT32 and q is not None and q.min is not None and q.max is not None
            and len(q.min) == 1 and len(q.max) == 1)


def calibrated_reach(tensor) -> Optional[float]:
    """The span of the int8 range a calibrated tensor gets (its [min, max] reaching 0, which int8 holds), or
    None where it carries no calibrated range."""
    if not has_range(tensor):
        return None
    return max(float(tensor.quantization.max[0]), 0.0) - min(float(tensor.quantization.min[0]), 0.0)


# Builtin operator names by code ("ADD" for 0), as reports and messages spell them.
OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def builtin_codes(model) -> list[int]:
    """The builtin code of each operator code of a model read in place (`schema.Model.GetRootAs`)."""
    return [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
            for i in range(model.OperatorCodesLength())]


def builtin_of(model, op) -> int:
    """The builtin operator `op` runs."""
    return flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])


def producers_of(graph) -> dict[int, object]:
    """Per tensor index, the op that writes it."""
    return {int(out): op for op in graph.operators or [] for out in op.outputs}


def readers_of(graph) -> dict[int, list]:
    """Per tensor index, the ops that read it, in graph order (an op once for each input it reads it as)."""
    found: dict[int, list] = {}
    for op in graph.operators or []:
        for index in op.inputs:
            found.setdefault(int(index), []).append(op)
    return found


def scalar_constant(model, graph, value: float, near: bytes, suffix: bytes) -> int:
    """A new float32 scalar constant in `graph`; returns its tensor index."""
    return array_constant(model, graph, np.float32(value), near, suffix)


_NUMPY_TYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8,
                schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}


def array_constant(model, graph, values: np.ndarray, near: bytes, suffix: bytes, *,
                   tensor_type: int = schema.TensorType.FLOAT32, quantization=None) -> int:
    """A new constant holding `values` in `graph` (float32 unless `tensor_type` says otherwise, with
    `quantization` if given); returns its tensor index."""
    values = np.asarray(values, _NUMPY_TYPES[tensor_type])
    buffer = schema.BufferT()
    buffer.data = values.tobytes()
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = list(values.shape)
    tensor.type = tensor_type
    tensor.buffer = len(model.buffers) - 1
    tensor.name = (near or b"const") + b"/" + suffix
    tensor.quantization = quantization
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def float_tensor_like(graph, index: int, name: bytes) -> int:
    """A new float32 tensor of `index`'s shape in `graph`; returns its index."""
    return tensor_like(graph, index, name, schema.TensorType.FLOAT32)


def tensor_like(graph, index: int, name: bytes, tensor_type: int, quantization=None) -> int:
    """A new tensor of `index`'s shape in `graph`, of `tensor_type` (with `quantization`, if given);
    returns its index."""
    source, tensor = graph.tensors[index], schema.TensorT()
    tensor.shape = None if source.shape is None else list(source.shape)
    tensor.shapeSignature = None if source.shapeSignature is None else list(source.shapeSignature)
    tensor.type = tensor_type
    tensor.buffer = 0
    tensor.name = name
    tensor.quantization = quantization
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def op_options(builtin: int):
    """(builtinOptionsType, builtinOptions) of a new op: no fused activation where it has one."""
    kinds = {schema.BuiltinOperator.ADD: (schema.BuiltinOptions.AddOptions, schema.AddOptionsT),
             schema.BuiltinOperator.SUB: (schema.BuiltinOptions.SubOptions, schema.SubOptionsT),
             schema.BuiltinOperator.MUL: (schema.BuiltinOptions.MulOptions, schema.MulOptionsT),
             schema.BuiltinOperator.EXP: (schema.BuiltinOptions.ExpOptions, schema.ExpOptionsT)}
    if builtin not in kinds:
        return schema.BuiltinOptions.NONE, None
    kind, make = kinds[builtin]
    options = make()
    if hasattr(options, "fusedActivationFunction"):
        options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    return kind, options


def per_tensor(scale: float, zero: int):
    """Quantization parameters of one scale and zero point for a whole tensor."""
    quantization = schema.QuantizationParametersT()
    quantization.scale, quantization.zeroPoint = [scale], [zero]
    return quantization


def turn_into(model, op, builtin: int) -> None:
    """`op` runs `builtin` (with its default options, no fused activation) on the inputs it has."""
    op.opcodeIndex = opcode(model, builtin)
    op.builtinOptionsType, op.builtinOptions = op_options(builtin)


def ops_running(model, *builtins: int) -> list:
    """(graph, op) for every op running one of `builtins`, listed before any is rewritten (a rewrite inserts
    ops)."""
    return [(graph, op) for graph in model.subgraphs for op in list(graph.operators)
            if builtin_of(model, op) in builtins]


def new_op(model, builtin: int, inputs: list[int], outputs: list[int]):
    new = schema.OperatorT()
    new.opcodeIndex = opcode(model, builtin)
    new.inputs, new.outputs = list(inputs), list(outputs)
    new.builtinOptionsType, new.builtinOptions = op_options(builtin)
    return new


_CONSTANT_DTYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32,
                    schema.TensorType.BOOL: np.bool_}


def constant(model, graph, index: int, tensor_type: int = schema.TensorType.FLOAT32):
    """The values of a constant of `tensor_type` (float32, int32 or bool), or None."""
    tensor = graph.tensors[index]
    data = model.buffers[tensor.buffer].data if 0 < tensor.buffer < len(model.buffers) else None
    if tensor.type != tensor_type or data is None or not len(data):
        return None
    return np.frombuffer(bytes(data), _CONSTANT_DTYPES[tensor_type]).reshape(tensor.shape)


def float_constant(model, graph, index: int):
    """A float32 constant's values, or None."""
    return constant(model, graph, index)


def replace_constant(model, graph, index: int, values: np.ndarray) -> None:
    """New values for a float32 constant: in its buffer, or in a buffer of its own if others share it."""
    data = np.ascontiguousarray(values, np.float32).tobytes()
    tensor = graph.tensors[index]
    shared = sum(t.buffer == tensor.buffer for g in model.subgraphs for t in g.tensors) > 1
    if not shared:
        model.buffers[tensor.buffer].data = data
        return
    buffer = schema.BufferT()
    buffer.data = data
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1


def slimmed(data: bytes) -> tuple[bytes, int]:
    """The file with one tensor for constants alike in every respect (`share_constant_tensors`) and
    very long fused tensor names cut short (`shorten_names`); returns it and how many tensors were
    dropped. The interpreter computes the same."""
    if not _anything_to_slim(data):  # reading the whole file into objects costs more than this look
        return data, 0
    model = read_model(data)
    dropped = share_constant_tensors(model)
    shortened = shorten_names(model)
    return (write_model(model), dropped) if dropped or shortened else (data, 0)


LONG_NAME = 256  # bytes: a fused name this long lists a whole unrolled loop's ops


def _anything_to_slim(data: bytes) -> bool:
    """Whether a name is over `LONG_NAME` or two constant tensors share a buffer and a quantization,
    read from the flatbuffer in place."""
    model = schema.Model.GetRootAs(data, 0)
    for g in range(model.SubgraphsLength()):
        graph, seen = model.Subgraphs(g), set()
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            if len(tensor.Name() or b"") > LONG_NAME:
                return True
            buffer = tensor.Buffer()
            if buffer <= 0 or buffer >= model.BuffersLength() or model.Buffers(buffer).DataLength() == 0:
                continue
            q = tensor.Quantization()
            scales = b"" if q is None or q.ScaleIsNone() else q.ScaleAsNumpy().tobytes()
            key = (buffer, tensor.Type(), scales)
            if key in seen:
                return True
            seen.add(key)
    return False


def shorten_names(model) -> int:
    """Cut a very long fused tensor name to its first and last parts, in place; returns how many were cut.

    The converter names a fused op's output after every TensorFlow op fused into it, joined by
    ";". Around an unrolled loop that can list every step: one tensor of an unrolled LSTM was
    named after its 32 `unstack` outputs (1,014 bytes), and such names were 61 KB of a 230 KB
    int8 file. A name over `LONG_NAME` bytes keeps its first part (the op and its layer, all that
    tfquant's reports and `inspect` read from it) and its last, unless another tensor has that
    name already; shorter names, and the file's inputs and outputs, stay as they are, so that the
    float and int8 files name their ops alike.
    """
    shortened = 0
    for graph in model.subgraphs:
        io = {int(i) for i in graph.inputs} | {int(i) for i in graph.outputs}
        taken = {tensor.name for tensor in graph.tensors}
        for index, tensor in enumerate(graph.tensors):
            if index in io or not tensor.name or len(tensor.name) <= LONG_NAME or b";" not in tensor.name:
                continue
            parts = tensor.name.split(b";")
            short = parts[0] + b";" + parts[-1]
            if short not in taken:
                taken.add(short)
                tensor.name = short
                shortened += 1
    return shortened


def share_constant_tensors(model) -> int:
    """One tensor for constants that are the same in every respect: buffer, type, shape and quantization.

    The quantizer gives each op its own copy of a constant it reads: an unrolled recurrent layer
    reads its recurrent weights at every step, so a 32-step GRU holds 32 tensors of one buffer
    (merged already by `convert.deduplicated`), each with its own per-channel scales and zero
    points (12 bytes a channel). Ops may share a constant input; the copies are dropped and every
    index renumbered. Works in place; returns how many tensors were dropped.
    """
    dropped = 0
    for number, graph in enumerate(model.subgraphs):
        first: dict = {}
        alias: dict[int, int] = {}
        for index, tensor in enumerate(graph.tensors):
            if not (0 < tensor.buffer < len(model.buffers)) or model.buffers[tensor.buffer].data is None \
                    or tensor.sparsity is not None or tensor.isVariable:
                continue
            key = (tensor.buffer, tensor.type, _tuple(tensor.shape), _tuple(tensor.shapeSignature),
                   _quantization(tensor))
            alias[index] = first.setdefault(key, index)
        alias = {old: new for old, new in alias.items() if old != new}
        if not alias:
            continue
        kept = [i for i in range(len(graph.tensors)) if i not in alias]
        renumber = {old: new for new, old in enumerate(kept)}
        renumber.update({old: renumber[first] for old, first in alias.items()})  # a copy reads as its first
        graph.tensors = [graph.tensors[i] for i in kept]
        for op in graph.operators:
            op.inputs = [renumber[int(i)] if i >= 0 else int(i) for i in op.inputs]
            op.outputs = [renumber[int(i)] for i in op.outputs]
            if op.intermediates is not None and len(op.intermediates):
                op.intermediates = [renumber[int(i)] for i in op.intermediates]
        graph.inputs = [renumber[int(i)] for i in graph.inputs]
        graph.outputs = [renumber[int(i)] for i in graph.outputs]
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == number:
                for entry in list(signature.inputs or []) + list(signature.outputs or []):
                    entry.tensorIndex = renumber[int(entry.tensorIndex)]
        dropped += len(alias)
    return dropped


def _tuple(values) -> tuple:
    return () if values is None else tuple(int(v) for v in values)


def _quantization(tensor) -> tuple:
    q = tensor.quantization
    if q is None:
        return ()
    return (None if q.scale is None else np.asarray(q.scale, np.float32).tobytes(),
            None if q.zeroPoint is None else np.asarray(q.zeroPoint, np.int64).tobytes(),
            int(q.quantizedDimension or 0),
            None if q.min is None else np.asarray(q.min, np.float32).tobytes(),
            None if q.max is None else np.asarray(q.max, np.float32).tobytes())
