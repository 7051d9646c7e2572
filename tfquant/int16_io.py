"""The inputs and outputs of an int16x8 file: quantized with int16 ones, it is given float32 or int8 ones
(`with_io`), so that an int8 app or delegate can take it in place of the int8 file."""

from __future__ import annotations

import copy as copy_module
from typing import Optional

from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import new_op, producers_of, read_model, readers_of, tensor_like, write_model


def with_io(int16x8: bytes, io: str, int8: Optional[bytes] = None) -> bytes:
    """The int16x8 file (quantized with int16 inputs and outputs) with float32 or int8 ones (`io`).

    An int8 accelerator or app feeds and reads int8, a float app float32; an int16x8 file takes int16.
    Here each int16 input becomes `io` (int8 with the scale and zero point the `int8` file gives it),
    and a QUANTIZE makes of it an int16 tensor that the ops read as before; each int16 output is
    written to an int16 tensor that a QUANTIZE (to int8) or a DEQUANTIZE (to float32) turns into the
    output. The tensors keep their indices, so the signature is unchanged, and the activations inside
    stay int16: with int8 IO the file is a drop-in for the int8 one. Quantizing with int16 IO first
    keeps what the quantizer does with int16 inputs (a mask's CAST, put back, writes int16); asked for
    float IO directly, it left that CAST float. Integer inputs and outputs (token ids, class ids) are
    left as they are. Raises ValueError where the int8 file has no int8 tensor of the same name."""
    model = read_model(int16x8)
    graph = model.subgraphs[0]
    params = {}
    if io == "int8":
        int8_graph = read_model(int8).subgraphs[0]
        params = {int8_graph.tensors[i].name: int8_graph.tensors[i].quantization
                  for i in [*int8_graph.inputs, *int8_graph.outputs]}
    readers, producers = readers_of(graph), producers_of(graph)
    front, back = [], []

    def retype(tensor) -> None:
        if io == "int8":
            tensor.type, tensor.quantization = schema.TensorType.INT8, _int8_params(params, tensor.name)
        else:
            tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None

    out = schema.BuiltinOperator.QUANTIZE if io == "int8" else schema.BuiltinOperator.DEQUANTIZE
    for index in (int(i) for i in graph.inputs):
        tensor = graph.tensors[index]
        if tensor.type != schema.TensorType.INT16:
            continue
        wide = tensor_like(graph, index, tensor.name + b"/int16", schema.TensorType.INT16,
                           copy_module.deepcopy(tensor.quantization))
        for op in readers.get(index, []):
            op.inputs = [wide if int(i) == index else int(i) for i in op.inputs]
        retype(tensor)
        front.append(new_op(model, schema.BuiltinOperator.QUANTIZE, [index], [wide]))
    for index in (int(i) for i in graph.outputs):
        tensor = graph.tensors[index]
        if tensor.type != schema.TensorType.INT16 or index not in producers:
            continue
        wide = tensor_like(graph, index, tensor.name + b"/int16", schema.TensorType.INT16,
                           copy_module.deepcopy(tensor.quantization))
        producer = producers[index]
        producer.outputs = [wide if int(o) == index else int(o) for o in producer.outputs]
        for op in readers.get(index, []):  # an output that ops inside also read
            op.inputs = [wide if int(i) == index else int(i) for i in op.inputs]
        retype(tensor)
        back.append(new_op(model, out, [wide], [index]))
    graph.operators = [*front, *graph.operators, *back]
    return write_model(model)


def _int8_params(params: dict, name: bytes):
    found = params.get(name)
    if found is None or found.scale is None or len(found.scale) != 1:
        raise ValueError(f"the int8 file has no int8 tensor {name.decode()!r} to take a scale from")
    return copy_module.deepcopy(found)
