"""Calibrated ranges made safe for the integer kernels, before quantization, and the files checked for them.

Two things go wrong with a calibrated range that is (almost) a constant's. A vanishing range next to
its op's other tensors gives rescale factors that integer kernels do not accept (`floor_model_ranges`
widens it). And the integer ADD, SUB and SQUARED_DIFFERENCE kernels rescale their inputs to the output
by a multiplier that must stay below 1: where an op cancels two large inputs (x·r − x·r, a
LayerNormalization over one feature), a range fitted to its tiny result made the interpreter abort
while preparing the file. Such outputs keep the width their kernel takes (`kernel_floor`), and every
quantized file is checked for scales its kernels refuse before anything runs it (`kernel_refusals`,
`refuse_unrunnable`), whichever quantizer made it.
"""

from __future__ import annotations

from ai_edge_litert import schema_py_generated as schema

from .flatbuffer import builtin_of, calibrated_reach, float_constant, has_range

RELATIVE_FLOOR = 1e-3
TINY_RANGE = 1e-3  # a range this narrow is a constant, not a signal
# The integer kernels of these ops rescale their inputs to the output by a multiplier that must stay below
# 1 (the interpreter aborts in `QuantizeMultiplierSmallerThanOneExp` otherwise): int8 ADD and SUB shift the
# inputs left by 20 bits (int16: 15), so the output's scale must exceed 2·max(input scales)/2^20; SQUARED_DIFFERENCE
# shifts by 7 before squaring, so it must exceed (2·input scale)²/2^14. Kept 8 times clear of both.
_SUMS = (schema.BuiltinOperator.ADD, schema.BuiltinOperator.SUB)
_LIMITED = frozenset(_SUMS + (schema.BuiltinOperator.SQUARED_DIFFERENCE,))
_KERNEL_MARGIN = 8.0


def floor_model_ranges(model, *, relative: float = RELATIVE_FLOOR, sum_shift: int = 20) -> int:
    """Widen calibrated ranges that are vanishingly small next to the other tensors of the same op.

    A tensor that is (almost) constant on the calibration data — the zero initial state of a
    masked recurrent step, a padding branch — calibrates to a range like 1e-6. Its int8 scale is
    then 10^5 times finer than its neighbours', and the rescale factors of the ops that touch it
    leave the range integer kernels accept (XNNPACK refuses such a graph outright). Giving it
    `relative` × the largest range of its op's other activations (at most `TINY_RANGE`) costs
    nothing: its values are within one step of the new scale. Only ranges narrower than
    `TINY_RANGE` are touched. Works in place on a model read with `flatbuffer.read_model`; returns
    how many ranges were widened.

    An output of ADD, SUB or SQUARED_DIFFERENCE is also kept wide enough for its int8 kernel
    (`kernel_floor`), whatever its width: where an ADD cancels two large inputs (x·r − x·r, a
    LayerNormalization over one feature), a range fitted to the tiny result made the interpreter abort.
    `sum_shift` is the ADD kernel's left shift: 20 bits for int8, 15 for int16 (`int16.for_int16x8`).
    """
    widened = 0
    for _ in range(2):  # a second pass carries a widened range on to the next op
        changed = 0
        for graph in model.subgraphs:
            for op in graph.operators:
                indices = [i for i in list(op.inputs) + list(op.outputs) if i >= 0 and has_range(graph.tensors[i])]
                if len(indices) < 2:
                    continue
                spans = {i: _span(graph.tensors[i]) for i in indices}
                widest = max(spans.values())
                target = min(relative * widest, TINY_RANGE)
                code = builtin_of(model, op)
                floor = 0.0 if code not in _LIMITED else \
                    kernel_floor(code, [_reach(model, graph, int(i)) for i in op.inputs if i >= 0], sum_shift=sum_shift)
                for index, span in spans.items():
                    needed = max(target, floor) if index in op.outputs else target
                    if span < needed:
                        _widen(graph.tensors[index], needed)
                        changed += 1
        widened += changed
        if not changed:
            break
    return widened


def _scale_limit(code: int, widest: float, shift: int) -> float:
    """The output scale this op's integer kernel must exceed, for inputs whose widest scale is `widest`."""
    return 2 * widest / 2 ** shift if code in _SUMS else (2 * widest) ** 2 / 2 ** 14


def kernel_floor(code: int, inputs: list[float], *, sum_shift: int = 20) -> float:
    """The narrowest output range this op's integer kernel accepts (`_KERNEL_MARGIN` times clear), from its
    inputs' ranges (one int8 scale is a range / 255)."""
    if not inputs or code not in _LIMITED:
        return 0.0
    return _KERNEL_MARGIN * 255 * _scale_limit(code, max(inputs) / 255, sum_shift)


def refuse_unrunnable(tflite: bytes, source: str, expected: str, fix: str = "") -> None:
    """Raise `ConversionError` naming the first op whose scales its integer kernel refuses (`kernel_refusals`)."""
    from .errors import ConversionError, problem

    refused = kernel_refusals(tflite)
    if refused:  # the interpreter would abort on the file, taking the process with it
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ConversionError(problem(source, expected, f"{refused[0]}{more}{fix}"))


def kernel_refusals(tflite: bytes) -> list[str]:
    """The integer ADD, SUB and SQUARED_DIFFERENCE ops of a quantized file whose scales their kernel
    cannot take (`kernel_floor` without its margin): the interpreter aborts on them while it
    prepares the file, so they are named before anything runs it. Read with the flat reader (nothing
    unpacked): it runs on every int8 file."""
    from .flatbuffer import OP_NAMES, builtin_codes, text

    flat = schema.Model.GetRootAs(tflite, 0)
    codes = builtin_codes(flat)
    if not _LIMITED & set(codes):
        return []

    def scale(graph, index: int) -> float:
        q = graph.Tensors(index).Quantization()
        return float(q.Scale(0)) if q is not None and q.ScaleLength() == 1 else 0.0

    found = []
    for g in range(flat.SubgraphsLength()):
        graph = flat.Subgraphs(g)
        for k in range(graph.OperatorsLength()):
            op = graph.Operators(k)
            code = codes[op.OpcodeIndex()]
            if code not in _LIMITED or not op.OutputsLength():
                continue
            output = graph.Tensors(op.Outputs(0))
            if output.Type() not in (schema.TensorType.INT8, schema.TensorType.INT16):
                continue
            scales = [scale(graph, int(i)) for i in op.InputsAsNumpy() if i >= 0] + [scale(graph, op.Outputs(0))]
            if min(scales) <= 0:
                continue
            widest = max(scales[:-1])
            limit = _scale_limit(code, widest, 20 if output.Type() == schema.TensorType.INT8 else 15)
            if scales[-1] <= limit:
                found.append(f"{OP_NAMES.get(code, code)} {text(output.Name())!r} with an output scale of {scales[-1]:.3g} "
                             f"for inputs of scale {widest:.3g}, finer than its integer kernel takes (over {limit:.3g})")
    return found


def _reach(model, graph, index: int) -> float:
    """The span of the int8 range a tensor gets (its calibrated range, or a constant's values, reaching 0)."""
    reach = calibrated_reach(graph.tensors[index])
    if reach is not None:
        return reach
    values = float_constant(model, graph, index)
    return 0.0 if values is None or not values.size else max(float(values.max()), 0.0) - min(float(values.min()), 0.0)


def _span(tensor) -> float:
    q = tensor.quantization
    return float(q.max[0]) - float(q.min[0])


def _widen(tensor, span: float) -> None:
    """Grow the range to `span` around its middle, keeping zero inside it."""
    q = tensor.quantization
    low, high = float(q.min[0]), float(q.max[0])
    middle = (low + high) / 2
    low, high = min(middle - span / 2, 0.0), max(middle + span / 2, 0.0)
    if high - low < span:
        high = low + span
    q.min, q.max = [low], [high]
