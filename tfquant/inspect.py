"""Read a .tflite flatbuffer: ops, tensor dtypes, quantization parameters, the integer verdict.

Uses the schema and flatbuffer utilities that LiteRT ships (the same code as TensorFlow's
`tensorflow/lite/tools/flatbuffer_utils.py`), so this module loads no TensorFlow.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable, Union

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

from .errors import TFLiteFileError, called, problem
from .flatbuffer import OP_NAMES, is_constant, signature_names, text, view_model
from .float_io import input_heads, output_tails
from .model_config import TFLITE_EXPECTED, tflite_identifier_found
from .types import FloatOp, ModelInfo, OpInfo, QuantParams, TensorInfo

_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
FLOAT_DTYPES = frozenset({"float32", "float16", "float64", "bfloat16", "complex64", "complex128"})

Source = Union[str, Path, bytes, bytearray]


def read_flatbuffer(source: Source) -> tuple[bytes, str]:
    """Return the file's bytes and a name for messages, after checking it is a TFLite flatbuffer."""
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "<tflite bytes>"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise TFLiteFileError(problem(path, "a .tflite file", "no such file" if not path.exists() else "a folder"))
        data = path.read_bytes()
    found = tflite_identifier_found(data[:8], len(data))
    if found is not None:
        raise TFLiteFileError(problem(where, TFLITE_EXPECTED, found))
    return data, where


def inspect(source: Source) -> ModelInfo:
    """Describe every op and tensor of a .tflite file and decide whether it is fully integer.

    An op counts as float when any tensor it reads or writes is float, except the ops that only
    adapt the file's IO: a QUANTIZE reading a float model input and a DEQUANTIZE writing a float
    model output (what `--io float32` produces around an integer graph), a float input's
    normalization, per feature by constants, before its QUANTIZE, and a float output's per-column
    ops by constants after its DEQUANTIZE (`tfquant.float_io`).

    Example:
        >>> info = inspect("build/digits_int8.tflite")   # doctest: +SKIP
        >>> info.fully_integer, info.float_ops
        (True, [])
    """
    data, where = read_flatbuffer(source)
    try:
        model = view_model(data)
    except Exception as exc:  # a damaged flatbuffer fails anywhere inside the generated reader
        raise TFLiteFileError(problem(where, "a readable TFLite flatbuffer", f"{type(exc).__name__}: {exc}")) from None

    ops: list[OpInfo] = []
    main_tensors: list[TensorInfo] = []
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    for sg_index, subgraph in enumerate(model.subgraphs or []):
        tensors = [_tensor(model, subgraph, i) for i in range(len(subgraph.tensors or []))]
        graph_inputs = set(_ints(subgraph.inputs))
        graph_outputs = set(_ints(subgraph.outputs))
        heads = {id(op) for op in input_heads(model, subgraph) + output_tails(model, subgraph)} if sg_index == 0 \
            else set()
        adapted = graph_inputs | {int(op.outputs[0]) for op in subgraph.operators or [] if id(op) in heads}
        if sg_index == 0:
            main_tensors = tensors
            named = signature_names(model)
            inputs, outputs = ([replace(tensors[i], name=named.get(i, tensors[i].name)) for i in _ints(ends)]
                               for ends in (subgraph.inputs, subgraph.outputs))
        for op_index, op in enumerate(subgraph.operators or []):
            name = _op_name(model, op.opcodeIndex)
            ins = [i for i in _ints(op.inputs) if i >= 0]  # -1 marks an omitted optional input
            outs = [i for i in _ints(op.outputs) if i >= 0]
            in_types = [tensors[i].dtype for i in ins]
            out_types = [tensors[i].dtype for i in outs]
            is_float = any(t in FLOAT_DTYPES for t in in_types + out_types) and id(op) not in heads
            if is_float and name == "QUANTIZE" and set(ins) <= adapted and not any(t in FLOAT_DTYPES for t in out_types):
                is_float = False
            if is_float and name == "DEQUANTIZE" and set(outs) <= graph_outputs and not any(t in FLOAT_DTYPES for t in in_types):
                is_float = False
            ops.append(OpInfo(op_index, sg_index, name, ins, outs, in_types, out_types, is_float))

    float_ops = [f"{op.name}#{op.index}" + (f"@{op.subgraph}" if op.subgraph else "") for op in ops if op.float]
    return ModelInfo(
        source=where, bytes=len(data), ops=ops, tensors=main_tensors, inputs=inputs, outputs=outputs,
        fully_integer=not float_ops, float_ops=float_ops,
    )


def _ints(values) -> list[int]:
    return [] if values is None else [int(v) for v in values]


def _op_name(model, opcode_index: int) -> str:
    opcode = model.operatorCodes[opcode_index]
    code = flatbuffer_utils.get_builtin_code_from_operator_code(opcode)
    if code == schema.BuiltinOperator.CUSTOM:
        custom = opcode.customCode
        return "CUSTOM:" + (custom.decode() if isinstance(custom, bytes) else str(custom))
    return OP_NAMES.get(code, f"BUILTIN_{code}")


def _tensor(model, graph, index: int) -> TensorInfo:
    tensor = graph.tensors[index]
    name = text(tensor.name)
    constant = is_constant(model, graph, index)
    quant = tensor.quantization
    params = None
    if quant is not None and quant.scale is not None and len(quant.scale) > 0:
        params = QuantParams(
            scale=[float(s) for s in quant.scale],
            zero_point=[int(z) for z in (quant.zeroPoint if quant.zeroPoint is not None else [])],
            quantized_dimension=int(quant.quantizedDimension),
        )
    shape = _ints(tensor.shape)
    signature = _ints(tensor.shapeSignature) or shape
    return TensorInfo(index, name, _TYPE_NAMES.get(tensor.type, f"type{tensor.type}"), shape, signature, constant, params)


# Why an op stays float in a file meant to be integer, where the answer is more than "no int8 form".
_SPECTROGRAM = ("compute the spectrogram before the model and feed it in dB or as log(x + 1e-6) "
                "(a magnitude one's quiet bins round to 0 in int8)")
_REASONS = {
    "DEQUANTIZE": "turns an integer tensor back to float for a float op after it",
    "QUANTIZE": "turns a float result back to integer for the ops after it",
    "WHILE": "a loop the converter kept (a recurrent layer that was not unrolled, or a tf.while_loop)",
    "CAST": "a dtype cast inside the graph",
    "BUCKETIZE": "Discretization's bucketing of raw values, which no quantizer makes integer: bucket the values before "
                 "the model and feed the bucket ids",
    "RFFT2D": "a Fourier transform (a spectrogram layer), which no quantizer makes integer: " + _SPECTROGRAM,
}
_COMPLEX = "works on the complex result of a Fourier transform: " + _SPECTROGRAM
# Ops TFLite's int8 quantizer has an integer form of: left float, they were not for want of a kernel.
_CONVERTER_INT8 = frozenset({
    "ADD", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "GATHER", "HARD_SWISH", "LEAKY_RELU", "LOGISTIC", "MAX_POOL_2D", "MAXIMUM", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PADV2", "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "SLICE", "SOFTMAX", "SPLIT", "SPLIT_V", "SQUEEZE", "STRIDED_SLICE", "SUB", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV", "UNPACK"})
_QUANTIZER_NAMES = {"converter": "TFLite's quantizer", "litert": "LiteRT Quantizer"}
_WRAPPERS = ("StatefulPartitionedCall", "PartitionedCall", "serving_default", "functional", "sequential", "model")


def explain_float_ops(info: ModelInfo, layer_names: Iterable[str] = (), *, integer_mode: bool = True,
                      mode: str = "int8", denylist: Iterable[str] = (), quantizer: str = "converter") -> list[FloatOp]:
    """Every float op of `info` with the Keras layer it comes from and why it stayed float.

    The layer is read from the op's output tensor name (`model/layer_norm/moments/...`); with
    `layer_names` (the model's own layers) the first path part that names a layer wins.
    """
    known = set(layer_names)
    denied = set(denylist)
    found = []
    for op in info.ops:
        if not op.float:
            continue
        tensor = info.tensors[op.outputs[0]].name if op.outputs and op.subgraph == 0 else ""
        complex_io = any(dtype.startswith("complex") for dtype in (*op.input_dtypes, *op.output_dtypes))
        by = _QUANTIZER_NAMES.get(quantizer, quantizer)
        reason = _REASONS.get(op.name, _COMPLEX if complex_io else
                              f"{by} left it float, though it has an integer form of {op.name}: it found no int8 "
                              "scales to give it here" if quantizer == "converter" and op.name in _CONVERTER_INT8 else
                              f"{by} has no integer form of {op.name}") \
            if integer_mode \
            else f"mode {mode} computes it in float"
        if tensor in denied and op.name not in ("QUANTIZE", "DEQUANTIZE"):
            reason = "kept in float by the recipe (its denylist)"
        found.append(FloatOp(op=op.name, index=op.index, layer=_layer_of(tensor, known), reason=reason))
    return found


def _layer_of(tensor: str, known: set[str]) -> str:
    parts = [p for p in tensor.split(";")[0].split("/") if p]
    for part in parts:
        if part in known:
            return part
    for part in parts:  # Keras 3 traces layer 'dense' as 'dense_1'
        base = part.rsplit("_", 1)[0]
        if part.rsplit("_", 1)[-1].isdigit() and base in known:
            return base
    meaningful = [p for p in parts if not p.startswith(_WRAPPERS) and not p[:1].isupper()]
    return meaningful[0] if meaningful else (parts[0] if parts else "?")


def float_ops_message(where: str, float_ops: list[FloatOp]) -> str:
    """One line naming the float ops (the ops that need float first, then their adapters) and what to do."""
    core = [o for o in float_ops if o.op not in ("QUANTIZE", "DEQUANTIZE")] or float_ops
    named = ", ".join(f"{o.op}#{o.index} in layer {o.layer!r} ({o.reason})" for o in core[:4])
    more = f" and {len(core) - 4} more" if len(core) > 4 else ""
    if core[0].reason.startswith("mode "):
        return (f"{where}: expected a fully integer file ({called('strict')}), found float ops: {named}{more}; "
                f"use {called('mode')} int8")
    return (f"{where}: expected a fully integer file, found float ops: {named}{more}; keep just these ops in "
            f"float with {called('fallback')} auto and {called('eval_data')}, or replace the layer")
