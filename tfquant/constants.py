"""Tensors the float file computes from constants alone, computed once and stored as constants.

TFLiteConverter folds most ops whose inputs are all constants, but not every kind: Keras 3's
`keras.ops.image.extract_patches` (a Vision Transformer's patches) builds its identity kernel with
MATRIX_DIAG, a RESHAPE and a TRANSPOSE, and the CONV_2D reads that kernel as it would an activation.
The int8 quantizer then gave the kernel an activation's asymmetric scale (zero point -128), which the
int8 convolution refuses, and the file did not run.

`fold` finds the ops that read only constants and each other (none with state, randomness or a
subgraph of its own), runs the file once on the interpreter to read what they compute (any input
gives the same values: nothing they read depends on it), stores each such tensor that a remaining
op reads as a constant, and drops those ops. `convert` keeps the rewrite only where the float file's
outputs stay those of the original.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .errors import one_line
from .flatbuffer import (OP_NAMES, builtin_codes, builtin_of, drop_unused_opcodes, is_constant, read_model, text,
                         write_model)

log = logging.getLogger("tfquant")
_B = schema.BuiltinOperator
# Ops whose output is not a function of their inputs' values, or that run subgraphs or hold state.
_NOT_FOLDED = frozenset({
    _B.WHILE, _B.IF, _B.CALL_ONCE, _B.VAR_HANDLE, _B.READ_VARIABLE, _B.ASSIGN_VARIABLE, _B.RANDOM_UNIFORM,
    _B.RANDOM_STANDARD_NORMAL, _B.MULTINOMIAL, _B.CUSTOM, _B.DELEGATE, _B.HASHTABLE, _B.HASHTABLE_FIND,
    _B.HASHTABLE_IMPORT, _B.HASHTABLE_SIZE,
})
MAX_FOLDED_BYTES = 16 << 20  # a folded tensor larger than this (a BROADCAST_TO of a big shape) stays computed


@dataclass(frozen=True)
class Folded:
    ops: int  # ops dropped
    tensors: list  # names of the tensors now stored
    kinds: list  # the ops' kinds, sorted

    def describe(self) -> str:
        return (f"{self.ops} op(s) that read only constants ({', '.join(self.kinds)}) computed once and stored as "
                f"constants ({', '.join(repr(t) for t in self.tensors[:3])}{' …' if len(self.tensors) > 3 else ''}), "
                "so that int8 quantizes them as weights (the same function in float)")


def fold(float_tflite: bytes) -> tuple[bytes, list[Folded]]:
    """The float file with its constant-only ops computed and stored (see the module); returns it and
    what was folded (empty when there was nothing to fold, or the interpreter could not compute it). A
    file without such an op is only looked at, not read into objects."""
    if not _any_foldable(float_tflite):
        return float_tflite, []
    model = read_model(float_tflite)
    graph = model.subgraphs[0]
    known = {i for i in range(len(graph.tensors)) if is_constant(model, graph, i) and not graph.tensors[i].isVariable}
    folded = []
    for op in graph.operators:  # graph order: an op's inputs are written before it
        if builtin_of(model, op) in _NOT_FOLDED or not len(op.outputs):
            continue
        inputs = [int(i) for i in op.inputs if i >= 0]
        if inputs and all(i in known for i in inputs):
            folded.append(op)
            known.update(int(o) for o in op.outputs)
    if not folded:
        return float_tflite, []
    kinds = sorted({OP_NAMES.get(builtin_of(model, op), "?") for op in folded})
    made = {int(o) for op in folded for o in op.outputs}
    kept = [op for op in graph.operators if op not in folded]
    needed = sorted({int(i) for op in kept for i in op.inputs if int(i) in made})
    if not needed or any(int(o) in made for o in graph.outputs):
        return float_tflite, []
    values = _computed(float_tflite, needed)
    if values is None or any(v.nbytes > MAX_FOLDED_BYTES for v in values.values()):
        return float_tflite, []
    for index, value in values.items():
        buffer = schema.BufferT()
        buffer.data = np.ascontiguousarray(value).tobytes()
        model.buffers.append(buffer)
        tensor = graph.tensors[index]
        tensor.buffer = len(model.buffers) - 1
        tensor.shape = list(value.shape)
        tensor.shapeSignature = None
    graph.operators = kept
    drop_unused_opcodes(model)
    return write_model(model), [Folded(len(folded), [text(graph.tensors[i].name) for i in needed], kinds)]


def _any_foldable(float_tflite: bytes) -> bool:
    """Whether an op of the first subgraph reads constants only (the flat reader: nothing unpacked)."""
    flat = schema.Model.GetRootAs(float_tflite, 0)
    graph = flat.Subgraphs(0)
    codes = builtin_codes(flat)

    def stored(index: int) -> bool:
        tensor = graph.Tensors(index)
        buffer = tensor.Buffer()
        if tensor.IsVariable() or not 0 < buffer < flat.BuffersLength():
            return False
        return flat.Buffers(buffer).DataLength() > 0 or flat.Buffers(buffer).Size() > 0

    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        inputs = [int(i) for i in op.InputsAsNumpy() if i >= 0] if op.InputsLength() else []
        if inputs and codes[op.OpcodeIndex()] not in _NOT_FOLDED and all(stored(i) for i in inputs):
            return True
    return False


def _computed(float_tflite: bytes, indices: list[int]) -> dict[int, np.ndarray] | None:
    """The values of these tensors, from one run of the file on zeros (they do not depend on the inputs)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interpreter = Interpreter(model_content=float_tflite, experimental_preserve_all_tensors=True, num_threads=1,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        for detail in interpreter.get_input_details():
            shape = [1 if d < 0 else int(d) for d in detail.get("shape_signature", detail["shape"])]
            interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
        return {index: np.array(interpreter.get_tensor(index)) for index in indices}
    except (RuntimeError, ValueError) as exc:
        log.info("constant ops not folded: %s", one_line(exc, 160))
        return None
