"""Inputs and outputs whose features one int8 scale cannot hold: normalized in float around the int8 graph.

An int8 file takes each input on one scale, sized for all of its features and for 0
(`lint.narrowest`). A table's raw columns (a weight in kilograms beside a 0/1 flag, a year, a
price) keep a few of the 256 levels or none, and no op after the input wins them back. The Keras
tutorials' answer, a Normalization layer first in the model, comes too late in int8: the scale is
taken before it. A four-column table with one column in 0..25,000 and another in 0.15..0.46 fell
from 54.9 % to 9.7 % (chance) in int8 for that reason.

Where the ops that read such an input compute each feature on its own from constants (a
Normalization's SUB and MUL, a Rescaling, any chain of SUB, ADD, MUL and DIV by per-feature
constants: the input's head) and leave features that one scale holds, the file takes that input
as float32, runs its head in float and quantizes the head's result: the int8 graph starts there,
as it starts at the QUANTIZE of any float32 input, and `inspect` counts the head as the input's
adapter. Where dense layers read the raw features directly, `float_folds.standardize` first puts a head in
front of them in the float file (each feature's calibration range onto [-1, 1]) and folds its
inverse into their weights: the same function in float.

An output is the same seen from the other end: a regression head of targets in different units
(a price beside a count) gives them one int8 scale, and the narrow ones keep no level. Where the
output is written by per-column ops by constants (a rescaling of standardized targets, `y * s + m`)
from a tensor whose columns one scale holds, those ops run in float after a DEQUANTIZE and the
output is float32 (`inspect` counts them as the output's adapter); where a dense op writes the
output directly, `float_folds.rescale_outputs` first divides each of its columns by its largest magnitude on
the calibration data and puts a MUL after it that gives it back: the same function in float.

A LOG or SQRT first in the model (a model that takes a magnitude spectrogram and computes its log
itself) is a head too: int8 before it rounds every value under half a step of the loudest sample's
scale to 0, which the log then turns into its floor, where it compresses everything else. Such a
head runs in float as a normalization does, where at least `ROUNDED_AWAY` of the calibration
values would round to 0 (`Compressed`).

Only where the IO type is not pinned to an integer type (`Recipe.float_io_norm`); each IO change
is announced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import (builtin_codes, builtin_of, float_constant, is_constant, producers_of, read_model, readers_of,
                         signature_names, text, write_model)
from .lint import Narrow, narrowest

_OPS = schema.BuiltinOperator
# Elementwise ops that, with a per-feature constant, compute each feature on its own.
AFFINE = {_OPS.SUB: np.subtract, _OPS.ADD: np.add, _OPS.MUL: np.multiply, _OPS.DIV: np.divide}
# Elementwise ops of one input that compress a wide range (a log-magnitude spectrogram): int8 before them
# rounds every small value to 0.
COMPRESSIVE = {_OPS.LOG: np.log, _OPS.SQRT: np.sqrt}
_NAMES = {_OPS.SUB: "SUB", _OPS.ADD: "ADD", _OPS.MUL: "MUL", _OPS.DIV: "DIV", _OPS.CAST: "CAST", _OPS.LOG: "LOG",
          _OPS.SQRT: "SQRT"}
_INTEGER = (schema.TensorType.INT64, schema.TensorType.INT32, schema.TensorType.INT16, schema.TensorType.INT8,
            schema.TensorType.UINT8)
MAX_HEAD = 8  # ops: a normalization is two, a rescaling one or two
# A feature int8 leaves fewer than 256 / RUINED (8) levels has lost its values; one the lint warns of with
# more keeps a coarse copy a model may not need finer, and a float input, normalized on the calibration
# data's ranges, would clip what they never showed (a digit's row sums: 12 levels for the edge rows,
# nearly always 0, and a regression 2 % of σ off float with them as they are).
RUINED = 32.0
ROUNDED_AWAY = 0.01  # of an input's values, rounded to 0 by int8 before a LOG or SQRT, for its head to be tried


@dataclass(frozen=True)
class Compressed:
    """What int8 would leave of an input that a LOG or SQRT reads: values within half a step of 0 round to 0."""

    op: str
    low: float  # the one scale's range
    high: float
    step: float
    share: float  # of the calibration values, not 0 in float, rounded to 0

    def describe(self, what: str, unit: str) -> str:
        return (f"{what}, its one scale spans [{self.low:.4g}, {self.high:.4g}] in steps of {self.step:.3g}, and "
                f"{100 * self.share:.3g} % of its calibration values, not 0, would reach the {self.op} as 0")


def compressed(values: np.ndarray, op: str) -> Compressed:
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    step = (high - low) / 255 or 1.0
    share = float(np.mean((values != 0) & (np.abs(values) < step / 2))) if values.size else 0.0  # zeros stay 0
    return Compressed(op, low, high, step, share)


@dataclass(frozen=True)
class FloatInput:
    """An input the file takes as float32, its head (by output tensor names) run in float."""

    name: str  # the signature's name
    tensor: str  # the graph's input tensor
    ops: tuple[str, ...]  # the head's ops, by output tensor name, in graph order
    kinds: tuple[str, ...]  # the head's builtins ("SUB", "MUL")
    narrow: Narrow | Compressed  # what int8 would leave of the raw input

    def describe(self) -> str:
        if self.kinds[0] == "CAST":  # an integer input: its type stays
            return (f"input {self.name!r} keeps its integer type, and its cast and normalization "
                    f"({', '.join(self.kinds)}) run in float before the int8 graph; "
                    f"{self.narrow.describe('taken as int8', 'feature')}")
        what = "head" if isinstance(self.narrow, Compressed) else "normalization"
        return (f"input {self.name!r} is float32, not int8: its {what} ({', '.join(self.kinds)}) runs in "
                f"float and the int8 graph starts after it; {self.narrow.describe('taken as int8', 'feature')}")


@dataclass(frozen=True)
class FloatOutput:
    """An output the file gives as float32, its tail (by output tensor names) run in float."""

    name: str  # the signature's name
    tensor: str  # the graph's output tensor
    ops: tuple[str, ...]  # the tail's ops, by output tensor name, in graph order
    kinds: tuple[str, ...]
    narrow: Narrow  # what int8 would leave of the output

    def describe(self) -> str:
        return (f"output {self.name!r} is float32, not int8: its last per-column ops ({', '.join(self.kinds)}) run "
                f"in float after the int8 graph; {self.narrow.describe('given as int8', 'column')}")


def _per_feature(model, graph, op, reads: int, *, unary: bool = False) -> Optional[int]:
    """The operand position of `reads` in `op` when `op` computes each feature of it on its own from a
    constant (x - c, c - x, x + c, x * c, x / c, with c a scalar or one value per feature), else None."""
    builtin = builtin_of(model, op)
    if builtin in COMPRESSIVE and unary:  # an input's head only: a tail is undone by its constants (`_undone`)
        same = len(op.inputs) == 1 and int(op.inputs[0]) == reads and len(op.outputs) == 1 and \
            list(graph.tensors[int(op.outputs[0])].shape) == list(graph.tensors[reads].shape)
        return 0 if same else None
    if builtin not in AFFINE or len(op.inputs) != 2 or len(op.outputs) != 1:
        return None
    options = op.builtinOptions
    if getattr(options, "fusedActivationFunction", schema.ActivationFunctionType.NONE) != \
            schema.ActivationFunctionType.NONE:
        return None
    inputs = [int(i) for i in op.inputs]
    if inputs.count(reads) != 1:
        return None
    at = inputs.index(reads)
    other = inputs[1 - at]
    if (builtin == _OPS.DIV and at != 0) or not is_constant(model, graph, other) or \
            float_constant(model, graph, other) is None:
        return None
    shape, features = list(graph.tensors[other].shape), list(graph.tensors[reads].shape)
    if not features or any(int(d) != 1 for d in shape[:-1]) or \
            (shape and int(shape[-1]) not in (1, int(features[-1]))):
        return None
    if list(graph.tensors[int(op.outputs[0])].shape) != features:
        return None
    return at


def _head(model, graph, index: int) -> Optional[list]:
    """The ops of input `index`'s head, in graph order: every reader of the input, and then every reader
    of theirs, computes each feature on its own from a constant. None where something else reads the
    raw input, or the head is longer than `MAX_HEAD`."""
    readers = readers_of(graph)
    if not readers.get(index) or any(_per_feature(model, graph, op, index, unary=True) is None
                                     for op in readers[index]):
        return None
    head, tensors, frontier = [], {index}, [index]
    while frontier:
        for op in readers.get(frontier.pop(), []):
            if any(op is h for h in head) or _per_feature(model, graph, op, next(
                    int(i) for i in op.inputs if int(i) in tensors), unary=True) is None:
                continue
            head.append(op)
            tensors.add(int(op.outputs[0]))
            frontier.append(int(op.outputs[0]))
    if len(head) > MAX_HEAD:
        return None
    order = {id(op): k for k, op in enumerate(graph.operators)}
    return sorted(head, key=lambda op: order[id(op)])


def _input_head(model, graph, index: int) -> Optional[list]:
    """The head of input `index` (`_head`): of a float input, or, of an integer one (a table's counts and
    years) that one CAST to float alone reads, that CAST and the head of its result."""
    if graph.tensors[index].type == schema.TensorType.FLOAT32:
        return _head(model, graph, index)
    readers = readers_of(graph).get(index, [])
    if graph.tensors[index].type not in _INTEGER or len(readers) != 1 or builtin_of(model, readers[0]) != _OPS.CAST \
            or graph.tensors[int(readers[0].outputs[0])].type != schema.TensorType.FLOAT32:
        return None
    head = _head(model, graph, int(readers[0].outputs[0]))
    return [readers[0], *head] if head else None


def input_heads(model, graph) -> list:
    """The ops of a quantized file that only adapt its float inputs: the head of a float input (`_head`)
    whose results are read only by QUANTIZE ops to an integer type, as `as_float` leaves them."""
    readers = readers_of(graph)
    found = []
    for index in [int(i) for i in graph.inputs]:
        head = _input_head(model, graph, index)
        if head and all(t not in {int(i) for i in graph.outputs} and all(
                builtin_of(model, r) == _OPS.QUANTIZE and graph.tensors[int(r.outputs[0])].type != schema.TensorType.FLOAT32
                for r in readers.get(t, []) if not any(r is h for h in head)) for t in _exits(graph, head)):
            found += head
    return found


def _ruined(model, graph, ends, values: dict[str, np.ndarray], threshold: float, *,
            integer: bool = False) -> Iterator[tuple]:
    """(index, signature name, values, `Narrow`) of each float graph input or output among `ends` (and
    integer one, with `integer`) whose values (by signature name) int8's one scale would leave a
    feature fewer than 256/`threshold` levels."""
    named = signature_names(model)
    kinds = (schema.TensorType.FLOAT32,) + (_INTEGER if integer else ())
    for index in [int(i) for i in ends]:
        name = named.get(index, text(graph.tensors[index].name))
        found = values.get(name)
        if graph.tensors[index].type not in kinds or found is None:
            continue
        found = found if found.dtype.kind == "f" else found.astype(np.float32)
        narrow = narrowest(found, threshold=threshold)
        if narrow is not None:
            yield index, name, found, narrow


def _tail(model, graph, index: int) -> Optional[tuple[list, int]]:
    """The ops of output `index`'s tail, in graph order, and the tensor it starts from: ops by per-feature
    constants back from the output, each tensor between them read by the next alone. None where there
    are none, or something else reads the output."""
    producers, readers = producers_of(graph), readers_of(graph)
    if readers.get(index):
        return None
    tail, tensor = [], index
    while tensor in producers and len(tail) < MAX_HEAD:
        op = producers[tensor]
        reads = [int(i) for i in op.inputs if not is_constant(model, graph, int(i))]
        if len(reads) != 1 or _per_feature(model, graph, op, reads[0]) is None or \
                (tensor != index and len(readers.get(tensor, [])) != 1):
            break
        tail.insert(0, op)
        tensor = reads[0]
    return (tail, tensor) if tail else None


def output_tails(model, graph) -> list:
    """The ops of a quantized file that only adapt its float outputs: the tail of a float output whose
    start is a DEQUANTIZE of an integer tensor, and that DEQUANTIZE, as `as_float` leaves them."""
    producers = producers_of(graph)
    found = []
    for index in [int(i) for i in graph.outputs]:
        tail = _tail(model, graph, index) if graph.tensors[index].type == schema.TensorType.FLOAT32 else None
        start = None if tail is None else producers.get(tail[1])
        if start is not None and builtin_of(model, start) == _OPS.DEQUANTIZE and \
                graph.tensors[int(start.inputs[0])].type != schema.TensorType.FLOAT32:
            found += [start, *tail[0]]
    return found


def _undone(model, graph, tail: list, values: np.ndarray) -> Optional[np.ndarray]:
    """The values a tail reads, given what it writes (`values`), or None where a product by 0 hides them."""
    values = values.astype(np.float64)
    for op in reversed(tail):
        inputs = [int(i) for i in op.inputs]
        at = next(k for k, i in enumerate(inputs) if not is_constant(model, graph, i))
        constant = float_constant(model, graph, inputs[1 - at]).astype(np.float64)
        builtin = builtin_of(model, op)
        if builtin == _OPS.MUL and np.any(constant == 0):
            return None
        values = {_OPS.ADD: lambda v: v - constant, _OPS.MUL: lambda v: v / constant,
                  _OPS.DIV: lambda v: v * constant,
                  _OPS.SUB: lambda v: v + constant if at == 0 else constant - v}[builtin](values)
    return values


def plan_outputs(float_tflite: bytes, outputs: dict[str, np.ndarray], *,
                 threshold: float = RUINED) -> list[FloatOutput]:
    """The float outputs of `float_tflite` one of whose columns int8 would leave fewer than
    256/`threshold` levels on `outputs` (the float file's outputs on the calibration samples, by
    signature name), and whose tail starts from a tensor whose columns one scale holds; each with its
    tail."""
    model = read_model(float_tflite)
    graph = model.subgraphs[0]
    found = []
    for index, name, values, narrow in _ruined(model, graph, graph.outputs, outputs, threshold):
        tail = _tail(model, graph, index)
        start = None if tail is None else _undone(model, graph, tail[0], values)
        if start is None or narrowest(start.astype(np.float32)) is not None:
            continue
        found.append(FloatOutput(name, text(graph.tensors[index].name),
                                 tuple(text(graph.tensors[int(op.outputs[0])].name) for op in tail[0]),
                                 tuple(_NAMES[builtin_of(model, op)] for op in tail[0]), narrow))
    return found


def _exits(graph, head: list) -> list[int]:
    """The head's results that the rest of the graph reads, or that are graph outputs."""
    inside = {id(op) for op in head}
    outputs = {int(i) for i in graph.outputs}
    readers = readers_of(graph)
    return [t for t in (int(op.outputs[0]) for op in head)
            if t in outputs or any(id(r) not in inside for r in readers.get(t, []))]


def _run(model, graph, head: list, index: int, values: np.ndarray) -> dict[int, np.ndarray]:
    """Every tensor of the head on `values` of the input, computed in numpy as the float file does."""
    found = {index: values.astype(np.float32)}
    for op in head:
        if builtin_of(model, op) == _OPS.CAST:
            found[int(op.outputs[0])] = found[int(op.inputs[0])]
            continue
        operands = [found[int(i)] if int(i) in found else float_constant(model, graph, int(i)) for i in op.inputs]
        with np.errstate(divide="ignore", invalid="ignore"):
            found[int(op.outputs[0])] = {**AFFINE, **COMPRESSIVE}[builtin_of(model, op)](*operands).astype(np.float32)
    return found


def plan(float_tflite: bytes, inputs: dict[str, np.ndarray], *,
         threshold: float = RUINED) -> list[FloatInput]:
    """The float inputs of `float_tflite` one of whose features int8 would leave fewer than
    256/`threshold` levels on `inputs` (calibration values by signature name), or whose head has a LOG
    or SQRT that int8 would feed `ROUNDED_AWAY` or more of them as 0, and whose head leaves every
    feature more than the lint asks (`lint.DEFAULT_RANGE_RATIO`); each with its head."""
    model = read_model(float_tflite)
    graph = model.subgraphs[0]
    found = []
    ruined = {index: (name, values, narrow)
              for index, name, values, narrow in _ruined(model, graph, graph.inputs, inputs, threshold, integer=True)}
    named = signature_names(model)
    for index in [int(i) for i in graph.inputs]:
        head = _input_head(model, graph, index)
        if not head:
            continue
        if index in ruined:
            name, values, narrow = ruined[index]
        else:  # a LOG or SQRT in the head: int8 before it rounds the small values to 0
            name = named.get(index, text(graph.tensors[index].name))
            values = inputs.get(name)
            squeezing = [_NAMES[builtin_of(model, op)] for op in head if builtin_of(model, op) in COMPRESSIVE]
            if values is None or values.dtype.kind != "f" or not squeezing:
                continue
            narrow = compressed(values, squeezing[0])
            if narrow.share < ROUNDED_AWAY:
                continue
        computed = _run(model, graph, head, index, values)
        if any(narrowest(computed[t]) is not None or not np.isfinite(computed[t]).all() for t in _exits(graph, head)):
            continue
        found.append(FloatInput(name, text(graph.tensors[index].name),
                                tuple(text(graph.tensors[int(op.outputs[0])].name) for op in head),
                                tuple(_NAMES[builtin_of(model, op)] for op in head), narrow))
    return found


def compressive(float_tflite: bytes) -> bool:
    """Whether the file has a LOG or SQRT at all (the flat reader: nothing unpacked), before `plan` looks
    for one in an input's head."""
    return bool(COMPRESSIVE.keys() & set(builtin_codes(schema.Model.GetRootAs(float_tflite, 0))))


def squeezed_inputs(float_tflite: bytes, inputs: dict[str, np.ndarray], *, quantizer: str = "converter") -> list[str]:
    """Float inputs read by a LOG or SQRT (through per-feature ops by constants) of which int8 would round
    at least `ROUNDED_AWAY` of the calibration values (by signature name) to 0 before it: what the
    file loses where the head is not run in float (the IO pinned to an integer type, or float IO off)."""
    from .errors import called

    def fix(kinds: str) -> str:
        if quantizer == "litert":
            return (f"quantize with tfquant's own quantizer ({called('quantizer')} converter), which takes the input "
                    f"as float32 and runs its {kinds} in float")
        return (f"leave {called('io')} unpinned (or float32) with {called('float_io_norm')} auto or on: the input is "
                f"then taken as float32 and its {kinds} run in float")

    if not compressive(float_tflite):
        return []
    return [f"{end.narrow.describe(f'input {end.name!r}', 'feature')}. Fix: {fix(', '.join(end.kinds))}; or "
            f"feed the model the {end.narrow.op}'s result and take the {end.narrow.op} out of it"
            for end in plan(float_tflite, inputs, threshold=float("inf")) if isinstance(end.narrow, Compressed)]


def as_float(quantized: bytes, float_io: list) -> bytes:
    """The quantized file (the heads and tails of `float_io` kept float by the quantizer, its IO integer)
    with each input of `float_io` (`FloatInput`) taking float32, the DEQUANTIZE after it gone and its
    head reading it, and each output (`FloatOutput`) given as float32, the QUANTIZE before it gone and
    its tail writing it."""
    model = read_model(quantized)
    graph = model.subgraphs[0]
    inputs = {f.tensor for f in float_io if isinstance(f, FloatInput)}
    outputs = {f.name for f in float_io if isinstance(f, FloatOutput)}
    changed = False
    for index in [int(i) for i in graph.inputs]:
        tensor = graph.tensors[index]
        if text(tensor.name) not in inputs or tensor.type == schema.TensorType.FLOAT32 or \
                (tensor.quantization is None or not tensor.quantization.scale):  # an integer input keeps its type
            continue
        dequantize = readers_of(graph).get(index, [])
        if not dequantize or any(builtin_of(model, op) != _OPS.DEQUANTIZE for op in dequantize):
            raise ValueError(f"input {text(tensor.name)!r}: expected the quantizer to dequantize it for its float "
                             "head, found other readers")
        tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None
        for op in dequantize:
            out = int(op.outputs[0])
            for reader in graph.operators:
                reader.inputs = [index if int(i) == out else int(i) for i in reader.inputs]
            graph.operators.remove(op)
        changed = True
    producers, readers = producers_of(graph), readers_of(graph)
    named = signature_names(model)
    for index in [int(i) for i in graph.outputs]:
        tensor = graph.tensors[index]
        quantize = producers.get(index)
        if named.get(index, text(tensor.name)) not in outputs or tensor.type == schema.TensorType.FLOAT32 or \
                quantize is None or builtin_of(model, quantize) != _OPS.QUANTIZE:
            continue
        last = producers.get(int(quantize.inputs[0]))  # the quantizer renames the tail's last tensor
        if last is None or builtin_of(model, last) not in AFFINE or len(readers.get(int(quantize.inputs[0]), [])) != 1 \
                or graph.tensors[int(quantize.inputs[0])].type != schema.TensorType.FLOAT32:
            raise ValueError(f"output {named.get(index, text(tensor.name))!r}: expected the quantizer to keep its "
                             "tail float before a QUANTIZE, found another op")
        last.outputs = [index]
        tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None
        graph.operators.remove(quantize)
        changed = True
    return write_model(model) if changed else quantized
