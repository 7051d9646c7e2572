"""The accuracy-guarded fallback ladder: int8 for as long as it can be.

Candidates, tried in order until one's accuracy drop, measured on the interpreter, is within
the budget:

    int8 (ranges chosen, bias corrected, mismatched joins split)
      ->  int8 with the k most suspect ops kept in float (int8 inputs and outputs still; at most
          half of the ops that compute)
      ->  int16x8 with int8 inputs and outputs (when int8's were)  ->  int16x8
      ->  dynamic  ->  float16  ->  float32

Every integer candidate is quantized from the one calibrated model (no second calibration); k
is searched by doubling and then bisecting, not stepped one by one. Suspects are ordered by the
range lint first (ops that put mismatched ranges on one scale, and the ops after them) and then
by the diagnostics' ranking. int16x8 is tried first with int8 inputs and outputs, requantized to
int16 at the edges (a drop-in for the int8 file), then with int16 ones; int16 and the float32 of
the modes after it are what an int8-only accelerator does not take: with the IO type pinned
(`io`), the ladder skips them; otherwise it says so, in the log and the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from . import console, harness, timing
from .convert import Calibration, convert
from .inspect import inspect
from .prepare import Prepared
from .errors import ConversionError, RecipeError, called
from .types import Budget, Candidate, IOType, LayerError, Mode, RangeWarning, Recipe
from .verify import Reference

LATER_MODES = (Mode.INT16X8, Mode.DYNAMIC, Mode.FLOAT16)
# The denylist never keeps more than half of the suspects in float, nor more than half of the ops
# that compute (`island_limit`).
MAX_FLOAT_SHARE = 0.5


@dataclass(frozen=True)
class LadderResult:
    chosen: Candidate
    tflite: bytes
    candidates: list[Candidate]
    outputs: dict[str, np.ndarray]  # the chosen file's outputs on the evaluation data


def suspects(lint: list[RangeWarning], errors: list[LayerError]) -> list[str]:
    """Op output tensors to keep in float, most suspect first.

    First each op the range lint flagged, followed by the ops downstream of it, nearest first: kept
    in float, the op still hands on a tensor of mixed ranges, which the next integer op would
    requantize onto one scale. Then every tensor by its RMSE/scale, worst first. The k search
    decides how much of this list stays in float.
    """
    flagged = [name for warning in lint for name in (warning.tensor, *warning.downstream)]
    return list(dict.fromkeys([*flagged, *(e.tensor for e in errors)]))


@dataclass(frozen=True)
class _Context:
    """What measuring any candidate needs, as plain data: sent once to each sweep worker."""

    calibrated: Calibration
    source: str
    evaluation: object  # the evaluation Dataset
    reference: Reference
    budget: Budget
    num_threads: Optional[int]
    bench_runs: int


def _measure_quantized(context: _Context, candidate: tuple[str, Recipe]) -> tuple[Candidate, bytes, dict]:
    """Quantize one candidate from the calibration, run it on the evaluation data and judge it."""
    name, recipe = candidate
    return _measure(context, name, recipe, lambda: context.calibrated.quantize(recipe, source=context.source))


def _measure(context: _Context, name: str, recipe: Recipe, build: Callable[[], bytes]) -> tuple[Candidate, bytes, dict]:
    """(candidate, file, outputs on the evaluation data) of the file `build` makes."""
    started = time.perf_counter()
    data = build()
    outputs = harness.Runner(data, num_threads=context.num_threads).predict(context.evaluation, progress=False)
    reference = context.reference
    judged = reference.judge(outputs)
    problems = reference.violations(judged, context.budget)
    score, float_score = reference.score(judged), reference.score(reference.metrics)
    (bench,) = timing.benchmark(data, runs=context.bench_runs, warmup=2, num_threads=context.num_threads,
                                 max_seconds=0.5, sample=context.evaluation)
    info = inspect(data)
    candidate = Candidate(
        name=name, recipe=recipe, accuracy=score,
        drop=None if score is None or float_score is None else round(float_score - score, 6),
        tflite_bytes=len(data), fully_integer=info.fully_integer, float_ops=len(info.float_ops), ops=len(info.ops),
        latency_p50_ms=bench.inference_ms.p50, seconds=round(time.perf_counter() - started, 3),
        accepted=not problems, violations=problems,
    )
    return candidate, data, outputs


def check_classifier_budget(reference: Reference, budget: Budget) -> None:
    """A classifier output needs an accuracy budget to climb to; regression and embedding outputs have theirs."""
    classifiers = [name for name, task in reference.tasks.items() if task == "classification"]
    if classifiers and budget.max_drop is None:
        raise RecipeError(f"{called('fallback')} auto needs {called('max_drop')}: output {classifiers[0]!r} is a "
                          "classifier, and its budget is the accuracy it may lose")


def climb(
    prepared: Prepared,
    recipe: Recipe,
    calibrated: Calibration,
    reference: Reference,
    *,
    budget: Budget,
    suspect_tensors: list[str],
    num_threads: Optional[int] = None,
    bench_runs: int = 10,
    io_pinned: bool = False,
    parallel: int = 1,
    on_candidate: Optional[Callable[[Candidate], None]] = None,
) -> LadderResult:
    """Try candidates in order; return the first within `budget` and all that were tried.

    Without `io_pinned`, float32 ends the ladder and is always within budget. With it, only candidates
    with the recipe's IO type are tried, and when none is within budget the best of them is returned
    (outside the budget: the caller's gate fails). With `parallel` > 1, the k search measures the
    candidates it may need next `parallel` at a time (`tfquant.fanout`) and then decides as the serial
    search does: the same candidate is chosen, and the candidates reported are the ones the serial
    search tries."""
    tried: list[Candidate] = []
    files: dict[int, tuple[bytes, dict]] = {}
    source = prepared.source

    context = _Context(calibrated, source, prepared.evaluation, reference, budget, num_threads, bench_runs)

    def record(measured: tuple[Candidate, bytes, dict]) -> Candidate:
        candidate, data, outputs = measured
        files[len(tried)] = (data, outputs)
        tried.append(candidate)
        if on_candidate is not None:
            on_candidate(candidate)
        return candidate

    def measure(name: str, candidate_recipe: Recipe, build: Callable[[], bytes]) -> Candidate:
        with console.step(f"trying candidate {name}"):
            return record(_measure(context, name, candidate_recipe, build))

    def record_refused(name: str, candidate_recipe: Recipe, reason: str) -> None:
        tried.append(Candidate(name=name, recipe=candidate_recipe, accuracy=None, drop=None, tflite_bytes=0,
                               fully_integer=False, float_ops=0, ops=0, latency_p50_ms=0.0, seconds=0.0,
                               accepted=False, violations=[], refused=reason))
        if on_candidate is not None:
            on_candidate(tried[-1])

    def done(candidate: Candidate) -> LadderResult:
        data, outputs = files[tried.index(candidate)]
        return LadderResult(chosen=candidate, tflite=data, candidates=tried, outputs=outputs)

    def with_k(k: int) -> tuple[str, Recipe]:
        return f"int8, {k} op(s) in float", replace(recipe, denylist=tuple(suspect_tensors[:k]))

    measured_ahead: dict[int, tuple[Candidate, bytes, dict]] = {}

    def ahead(ks: list[int]) -> None:
        ks = [k for k in dict.fromkeys(ks) if k not in measured_ahead]
        if len(ks) > 1:
            from .fanout import fan_out

            with console.step(f"trying {len(ks)} candidates, {parallel} at a time"):
                measured_ahead.update(zip(ks, fan_out(_measure_quantized, context, [with_k(k) for k in ks],
                                                      parallel=parallel)))

    def int8_with(k: int) -> Candidate:
        if k in measured_ahead:
            return record(measured_ahead[k])
        name, denied = with_k(k)
        with console.step(f"trying candidate {name}"):
            return record(_measure_quantized(context, (name, denied)))

    first = measure(recipe.mode.value, recipe, lambda: calibrated.quantize(recipe, source=source))
    if first.accepted:
        return done(first)

    if recipe.mode is Mode.INT8 and suspect_tensors:
        chosen = _search_k(int8_with, island_limit(calibrated.calibrated, suspect_tensors),
                           ahead=ahead if parallel > 1 else None, width=parallel)
        if chosen is not None:
            return done(chosen)

    for mode, io in later_rungs(recipe):
        # int16x8 rounds the same int8 weights: it keeps int8's bias correction (or its absence).
        later = Recipe(mode=mode, io=io, calib_samples=recipe.calib_samples, per_channel=recipe.per_channel,
                       bias_correction=mode is Mode.INT16X8 and bool(calibrated.input_means))
        if (later.mode, later.io) == (recipe.mode, recipe.io) or (io_pinned and later.io is not recipe.io):
            continue
        name = mode.value if io is None else f"{mode.value}, {io.value} IO"
        try:
            candidate = measure(name, later, lambda r=later: convert(prepared.exported, r, calibrated=calibrated,
                                                                      source=source))
        except ConversionError as exc:  # e.g. int16x8, which the quantizer has no kernel for on some ops
            record_refused(name, later, str(exc))
            continue
        if candidate.accepted:
            return done(candidate)

    if io_pinned:
        measured = [c for c in tried if c.refused is None]
        return done(max(measured, key=lambda c: (c.accuracy is not None, c.accuracy or 0.0, -c.float_ops)))
    return done(measure("float32", Recipe(mode=Mode.FLOAT32), lambda: prepared.exported.tflite))


def island_limit(calibrated: bytes, suspect_tensors: list[str]) -> int:
    """How many of `suspect_tensors` the denylist may keep in float: at most `MAX_FLOAT_SHARE` of them,
    and no more than keeps that share of the ops that compute in float (an op that copies, joins or
    reshapes values, or one the calibrated file does not name, counts as none, and at least one
    suspect is always allowed). Past that the file is float with int8 at its edges, larger than the
    float file and no faster (a detector whose seven convolutions all went float: 100,888 bytes
    against float's 98,740), and the modes after int8 are tried instead."""
    from .flatbuffer import MOVES, builtin_of, text, view_model

    model = view_model(calibrated)
    graph = model.subgraphs[0]
    computing = [k for k, op in enumerate(graph.operators) if builtin_of(model, op) not in MOVES]
    writes = {text(graph.tensors[int(index)].name): k for k in computing for index in graph.operators[k].outputs}
    allowed = MAX_FLOAT_SHARE * len(computing)
    limit, kept = 0, set()
    for name in suspect_tensors[:max(1, int(len(suspect_tensors) * MAX_FLOAT_SHARE))]:
        if name in writes:
            kept.add(writes[name])  # an op with several outputs counts once
        if len(kept) > allowed:
            break
        limit += 1
    return max(1, limit)


def later_rungs(first: Recipe) -> list[tuple[Mode, Optional[IOType]]]:
    """The modes after int8 (with their IO type; None: the mode's own), in the ladder's order: int16x8 with
    int8 inputs and outputs when int8's were (requantized to int16 inside, `int16_io.with_io`: a drop-in
    for the int8 file, though its int8 outputs keep their int8 steps), then int16x8 with int16 ones, then
    the float modes."""
    keep_int8 = [(Mode.INT16X8, IOType.INT8)] if first.io is IOType.INT8 else []
    return keep_int8 + [(mode, None) for mode in LATER_MODES]


def io_change(first: Recipe, chosen: Recipe) -> Optional[str]:
    """What an app must do differently when the ladder's choice has other inputs and outputs than int8."""
    if chosen.io is first.io:
        return None
    return (f"the ladder chose {chosen.mode.value} with {chosen.io.value} inputs and outputs, not {first.io.value}: "
            f"an app feeds and reads {chosen.io.value}, and an {first.io.value}-only accelerator cannot run the file; "
            f"pin the IO type ({called('io')} {first.io.value}) to keep {first.io.value} and fail instead")


def _search_k(try_k: Callable[[int], Candidate], k_max: int, *,
              ahead: Optional[Callable[[list[int]], None]] = None, width: int = 1) -> Optional[Candidate]:
    """The smallest k whose candidate is accepted: double k until one passes, then bisect.

    With `ahead`, before each step the k values the search may try next (the next `width` of the
    doubling, or the next levels of the bisection's tree) are handed to `ahead` to be measured at
    once; the decisions, and so the answer, are the serial search's."""
    failed, passed = 0, None
    k = 1
    while k <= k_max:
        if ahead is not None:
            ahead(_doublings(k, k_max)[:width])
        candidate = try_k(k)
        if candidate.accepted:
            passed = (k, candidate)
            break
        failed = k
        if k == k_max:
            break
        k = min(2 * k, k_max)
    if passed is None:
        return None
    best_k, best = passed
    low, high = failed, best_k  # low fails (or is 0), high passes
    while high - low > 1:
        if ahead is not None:
            ahead(_bisections(low, high, width))
        middle = (low + high) // 2
        candidate = try_k(middle)
        if candidate.accepted:
            high, best = middle, candidate
        else:
            low = middle
    return best


def _doublings(k: int, k_max: int) -> list[int]:
    """k, 2k, 4k, ... up to k_max: the doubling phase's next tries."""
    found = [k]
    while found[-1] < k_max:
        found.append(min(2 * found[-1], k_max))
    return found


def _bisections(low: int, high: int, width: int) -> list[int]:
    """The bisection's next `width` tries, level by level: the middle, then the middles of both halves..."""
    found, level = [], [(low, high)]
    while level and len(found) < width:
        following = []
        for a, b in level:
            if b - a > 1:
                middle = (a + b) // 2
                found.append(middle)
                following += [(a, middle), (middle, b)]
        level = following
    return found[:width]
