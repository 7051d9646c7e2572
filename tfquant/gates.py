"""LSTM gates on int8 scales of their own, where one shared scale would cost them resolution.

Keras computes an LSTM step's four gates in one product (`implementation=2`): the converter emits
one FULLY_CONNECTED pair, ADDs and a SPLIT into the input, forget, cell and output gates. int8
gives that SPLIT one scale, sized for the widest gate. The gates need not be alike: the forget
gate's bias starts at 1 (`unit_forget_bias`), and where the inputs are small next to it (features
in [0, 1/16], the first steps, where the state is still zero) the narrowest gate's values span a
fifth of the shared range or less and keep a fifth of its levels. On such an LSTM (32 units over
the digits' 8 rows of 8 pixels scaled to [0, 1/16], four trainings in each Keras version) int8
changed 165 of 2,872 predictions; with the gates apart 105, and the probabilities' RMSE against
float was 0.50-0.91x as large.

So the float file is calibrated once as exported, and where the SPLITs into four gates share a
range more than `GATE_RATIO` times as wide as their narrowest gate's, on average over the steps
(a bit or more of that gate's resolution lost at every step), the model is exported again with
each LSTM cell computing its gates apart (`implementation=1`, the same function; the cells are
`tracing.fused_lstm_cells`): two FULLY_CONNECTED ops per gate and step, each gate's sum on a
scale of its own. That costs the file ops (on a 32-unit LSTM over 8 steps 65 FULLY_CONNECTED ops
instead of 17, 1.1-2.1x the int8 latency at batch 1) and bytes (+10-28 % on the zoo's LSTMs), so
an LSTM whose gates share their ranges well keeps the fused form. The mean, not the worst step,
decides: the first step, where the bias alone spreads the gates apart, reaches 2.5x on LSTMs
where splitting changed 0-2 of 359 predictions (the zoo's, 1.6-1.9x on average), where on one of
features in [0, 1/4] (2.04x on average) it changed 11 fewer; on features in [0, 1] the mean is
1.7-2.0x, in [0, 1/16] 2.5-3.5x (eight trainings each: four per Keras version).
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

GATE_RATIO = 2.0  # a SPLIT's range over its narrowest gate's beyond which the gates are computed apart
GATES = 4  # an LSTM step's SPLIT: input, forget, cell and output gates


def gate_ratio(calibrated: bytes, cells: Optional[Iterable[str]] = None) -> float:
    """The mean over the SPLITs into four of the calibrated float file of the ratio of the input's calibrated
    span to the narrowest output's (1.0 where there is none): int8 puts all four on the input's scale.

    With `cells` (the LSTM cells' names), only the SPLITs traced inside one of them count, not a model's own
    four-way split: their outputs are named under the cell's scope, `.../lstm_cell/split` (Keras 3 numbers
    the scope on every step, `lstm_cell_3`)."""
    from ai_edge_litert import schema_py_generated as schema

    from .flatbuffer import builtin_of, calibrated_reach, text, view_model
    from .limits import TINY_RANGE

    model = view_model(calibrated)
    graph = model.subgraphs[0]
    scope = None if cells is None else \
        re.compile("|".join(rf"(?:^|/){re.escape(name)}(?:_\d+)?/" for name in sorted(set(cells))) or "$^")

    ratios = []
    for op in graph.operators:
        code = builtin_of(model, op)
        if code == schema.BuiltinOperator.SPLIT:
            source = int(op.inputs[1])
        elif code == schema.BuiltinOperator.SPLIT_V:
            source = int(op.inputs[0])
        else:
            continue
        if len(op.outputs) != GATES or (scope is not None and not scope.search(text(graph.tensors[op.outputs[0]].name))):
            continue
        reach = [calibrated_reach(graph.tensors[int(i)]) for i in [source, *op.outputs]]
        shared, gates = reach[0], reach[1:]
        if shared is None or any(g is None for g in gates):
            continue
        narrowest = max(min(gates), TINY_RANGE)  # a gate the samples never move is a constant, not a signal
        ratios.append(shared / narrowest)
    return sum(ratios) / len(ratios) if ratios else 1.0
