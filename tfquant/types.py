"""Types shared by the API, the command, the report and the HTTP service: the report's records, and
(from `tfquant.recipe`) the recipe, its modes and IO types, all importable from here.

Every record is a frozen dataclass with `to_dict()` / `from_dict()` (`tfquant.records`), so that a
report written as JSON reads back to an equal object and a recipe replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import RecipeError
from .recipe import (FLOAT_IO_NORM, MIGRATIONS, MODE_IO, NORM_FORMS, QUANTIZERS, RANGE_METHODS, SCHEMA_VERSION,  # noqa: F401
                     WEIGHT_ROUNDINGS, WEIGHT_SCALES, IOType, Mode, Recipe, migrate, parse_enum)
from .records import Record  # noqa: F401


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, shape (None for unknown dims) and dtype name."""

    name: str
    shape: tuple[Optional[int], ...]
    dtype: str

    def describe(self) -> str:
        return "(" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(self.shape)) + ")"


@dataclass(frozen=True)
class Metrics(Record):
    """What one .tflite file does on evaluation data, measured on the interpreter, output by output."""

    accuracy: Optional[float]  # of the first classification output, if any
    top5_accuracy: Optional[float]
    samples: int
    seconds: float
    outputs: list[OutputMetrics] = field(default_factory=list)


@dataclass(frozen=True)
class OutputMetrics(Record):
    """One output of one file, measured on the interpreter with its task's metrics (`tfquant.tasks`).

    Label-based numbers (accuracy, R², retrieval) are there when the data has labels for the
    output; comparisons with the float file (agreement, RMSE, cosine) only for a quantized file.
    """

    name: str
    task: str
    samples: int
    accuracy: Optional[float] = None
    top5_accuracy: Optional[float] = None
    agreement: Optional[float] = None
    std: Optional[float] = None
    rmse: Optional[float] = None
    rel_rmse: Optional[float] = None
    max_abs_error: Optional[float] = None
    r2: Optional[float] = None
    label_rmse: Optional[float] = None
    mean_cosine: Optional[float] = None
    min_cosine: Optional[float] = None
    retrieval: Optional[float] = None
    decisions: Optional[int] = None  # a multi-label output: its 0/1 decisions per sample, each counted


@dataclass(frozen=True)
class Budget(Record):
    """How far a quantized file may stray from the float file, per task.

    Args:
        max_drop: classification accuracy (or retrieval accuracy) drop, as a fraction. Defaults
            to no limit.
        max_rel_rmse: regression RMSE against the float output, as a fraction of the float
            output's standard deviation. Defaults to `0.05`.
        min_cosine: embeddings' mean cosine to the float embeddings. Defaults to `0.99`.
    """

    max_drop: Optional[float] = None
    max_rel_rmse: float = 0.05
    min_cosine: float = 0.99

    def __post_init__(self):
        for name, low, high in (("max_drop", 0, 1), ("max_rel_rmse", 0, float("inf")), ("min_cosine", -1, 1)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
                    or value != value:
                raise RecipeError(f"{name}: expected a number between {low:g} and {high:g}, found {value!r}")


@dataclass(frozen=True)
class OutputReport(Record):
    """One output in a report: its task, its dtype in the file, and both files' metrics."""

    name: str
    task: str
    dtype: str
    float: OutputMetrics
    quantized: OutputMetrics
    within_budget: Optional[bool] = None


@dataclass(frozen=True)
class IOTensor(Record):
    """One input or output of the quantized file, as an app feeds or reads it."""

    name: str
    kind: str  # "input" or "output"
    dtype: str
    shape: list[int]
    scale: Optional[float] = None
    zero_point: Optional[int] = None


@dataclass(frozen=True)
class ExportInfo(Record):
    """How the Keras model became the float file every quantized file starts from."""

    route: str
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FloatOp(Record):
    """An op that stayed float in a file meant to be integer: where it came from and why."""

    op: str
    index: int
    layer: str
    reason: str


@dataclass(frozen=True)
class Latency(Record):
    """Per-invoke latency in milliseconds over `count` timed runs.

    `p50_low`..`p50_high` is a 95 % confidence interval of the median (from the order statistics,
    no assumption on the distribution). `p99` is given only from `P99_RUNS` runs on: with fewer,
    the 99th percentile is the slowest run or two, which is noise, not a tail.
    """

    min: float
    mean: float
    std: float
    p50: float
    p90: float
    p99: Optional[float]
    count: int
    p50_low: Optional[float] = None
    p50_high: Optional[float] = None

    @property
    def p50_margin(self) -> Optional[float]:
        """Half the median's confidence interval, as a fraction of the median."""
        if self.p50_low is None or self.p50_high is None or not self.p50:
            return None
        return (self.p50_high - self.p50_low) / 2 / self.p50


P99_RUNS = 100


@dataclass(frozen=True)
class Runtime(Record):
    """Which interpreter measured the numbers."""

    name: str
    version: str
    num_threads: int


@dataclass(frozen=True)
class BenchmarkResult(Record):
    """What `tfquant bench` measures; names follow TFLite's benchmark_model."""

    model: str
    num_runs: int
    warmup_runs: int
    num_threads: int
    init_ms: float
    first_inference_ms: float
    warmup_avg_ms: float
    inference_ms: Latency
    memory_footprint_delta_mb: float
    peak_memory_mb: float
    runtime: Runtime
    delegate: str = "XNNPACK"  # or TFLite's builtin kernels, when XNNPACK cannot prepare the graph


@dataclass(frozen=True)
class QuantParams(Record):
    scale: list[float]
    zero_point: list[int]
    quantized_dimension: int


@dataclass(frozen=True)
class TensorInfo(Record):
    index: int
    name: str
    dtype: str
    shape: list[int]
    shape_signature: list[int]
    constant: bool
    quantization: Optional[QuantParams]


@dataclass(frozen=True)
class OpInfo(Record):
    index: int
    subgraph: int
    name: str
    inputs: list[int]
    outputs: list[int]
    input_dtypes: list[str]
    output_dtypes: list[str]
    float: bool


@dataclass(frozen=True)
class ModelInfo(Record):
    """The contents of a .tflite file: ops, tensors, inputs, outputs and the integer verdict."""

    source: str
    bytes: int
    ops: list[OpInfo]
    tensors: list[TensorInfo]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    fully_integer: bool
    float_ops: list[str]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.name] = counts.get(op.name, 0) + 1
        return counts


@dataclass(frozen=True)
class FileSummary(Record):
    """One .tflite file in a report: its bytes, its integer verdict and its accuracy."""

    tflite_bytes: int
    gzip_bytes: int
    fully_integer: bool
    float_ops: list[str]
    op_counts: dict[str, int]
    accuracy: Optional[float] = None
    top5_accuracy: Optional[float] = None


@dataclass(frozen=True)
class Agreement(Record):
    """How often the quantized file's top-1 class equals the float file's."""

    top1: float
    samples: int


@dataclass(frozen=True)
class LayerError(Record):
    """The quantization error of one tensor over the debug samples, in units of its own scale."""

    tensor: str
    op: str
    rmse_per_scale: float
    mean_error: float
    max_abs_error: float
    scale: float
    # The model's output error (`ranges.sample_errors`, mean over samples) when this op alone is int8
    # and every other op float: what its quantization does to the outputs, not only to itself.
    output_error: Optional[float] = None


@dataclass(frozen=True)
class RangeWarning(Record):
    """A join whose inputs share one int8 scale although their calibrated ranges differ widely, or an ADD or
    SUB whose output is far narrower than an input (`tfquant.lint`)."""

    op: str
    tensor: str
    inputs: list[str]
    ranges: list[list[float]]
    ratio: float
    message: str
    downstream: list[str] = field(default_factory=list)  # ops after it, nearest first, that carry the mixed range on


@dataclass(frozen=True)
class Candidate(Record):
    """One rung of the ladder as measured: its recipe, accuracy, bytes, speed and verdict."""

    name: str
    recipe: Recipe
    accuracy: Optional[float]  # the first classification output's accuracy (or agreement), if any
    drop: Optional[float]
    tflite_bytes: int
    fully_integer: bool
    float_ops: int
    ops: int
    latency_p50_ms: float
    seconds: float
    accepted: bool
    violations: list[str] = field(default_factory=list)  # how it fell outside the budget
    refused: Optional[str] = None  # the converter's reason when it refused this mode (nothing was measured)

    def verdict(self, chosen: bool) -> str:
        if chosen:
            return "chosen"
        if self.refused:
            return "refused by the converter"
        return "within budget" if self.accepted else "over budget"


@dataclass(frozen=True)
class LayerTreatment(Record):
    """What the QAT stage did to one layer."""

    name: str
    layer_class: str
    treatment: str


@dataclass(frozen=True)
class FileSize(Record):
    tflite_bytes: int
    gzip_bytes: int


@dataclass(frozen=True)
class Stage(Record):
    """One stage of a collaborative optimization, as the int8 file it gives on its own: measured on the interpreter."""

    name: str  # "float", "int8", "pruned", "clustered", "qat"
    accuracy: Optional[float]  # the first classification output's accuracy (or agreement), if any
    tflite_bytes: int
    gzip_bytes: int


@dataclass(frozen=True)
class SparseFile(Record):
    """The file with its zero weights in TFLite's sparse format, next to the dense one."""

    tflite_bytes: int
    gzip_bytes: int
    dense_bytes: int
    sparse_tensors: list[str] = field(default_factory=list)  # weight tensors stored sparse
    dense_tensors: dict[str, str] = field(default_factory=dict)  # weight tensors left dense, and why
    latency_p50_ms: Optional[float] = None
    dense_latency_p50_ms: Optional[float] = None
    runs_on: str = ""  # which kernels ran it (XNNPACK or TFLite's builtin)
    written: bool = True  # False: the sparse file was not smaller, so the dense one was written

    def summary(self) -> str:
        """One line: bytes against the dense file, tensors, latency, which file was written."""
        verdict = "written" if self.written else "not written (no smaller than the dense file, which was written)"
        latency = "" if self.latency_p50_ms is None else (
            f"; latency p50 {self.latency_p50_ms:.3f} ms against {self.dense_latency_p50_ms:.3f} ms dense, "
            f"on {self.runs_on}")
        return (f"sparse file: {self.tflite_bytes:,} bytes against {self.dense_bytes:,} dense "
                f"({self.tflite_bytes / self.dense_bytes:.2f}×), {verdict}; {len(self.sparse_tensors)} weight "
                f"tensor(s) stored sparse, {len(self.dense_tensors)} left dense{latency}")


@dataclass(frozen=True)
class Training(Record):
    """The training-time stage of a report: QAT, pruning, clustering, or several of them in a row."""

    kind: str
    epochs: int
    keras_accuracy: Optional[float] = None
    layers: list[LayerTreatment] = field(default_factory=list)
    target_sparsity: Optional[float] = None
    sparsity: dict[str, float] = field(default_factory=dict)  # per weight tensor, read from the .tflite
    files: dict[str, FileSize] = field(default_factory=dict)
    ptq_accuracy: Optional[float] = None  # plain post-training int8 of the same model, on the same data
    qat_accuracy: Optional[float] = None
    kept: Optional[str] = None  # "qat" or "ptq" (keep_best)
    clusters: Optional[int] = None
    unique_values: dict[str, int] = field(default_factory=dict)  # per weight tensor, read from the .tflite
    folded: list[str] = field(default_factory=list)  # BatchNormalizations folded into their kernels before clustering
    stages: list[Stage] = field(default_factory=list)
    sparse: Optional[SparseFile] = None


@dataclass(frozen=True)
class Report:
    """The record of one conversion. `to_dict()` is `report.json` and the command's `--json`.

    The float and quantized sections serialize as `float` and `quantized`.
    """

    model: str
    recipe: Recipe
    float_file: FileSummary
    quantized: FileSummary
    latency_ms: dict[str, Latency]
    runtime: Runtime
    calibration_samples: int
    eval_samples: Optional[int] = None
    accuracy_drop: Optional[float] = None
    agreement: Optional[Agreement] = None
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    diagnostics: list[LayerError] = field(default_factory=list)
    range_lint: list[RangeWarning] = field(default_factory=list)
    ladder: list[Candidate] = field(default_factory=list)
    chosen: Optional[int] = None
    max_drop: Optional[float] = None
    training: Optional[Training] = None
    outputs: list[OutputReport] = field(default_factory=list)
    io: list[IOTensor] = field(default_factory=list)
    export: Optional[ExportInfo] = None
    float_ops: list[FloatOp] = field(default_factory=list)
    budget: Optional[Budget] = None
    spec: dict[str, Any] = field(default_factory=dict)  # the command and every option, as run (tfquant.spec)
    tfquant_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tfquant_version": self.tfquant_version,
            "model": self.model,
            "recipe": self.recipe.to_dict(),
            "float": self.float_file.to_dict(),
            "quantized": self.quantized.to_dict(),
            "accuracy_drop": self.accuracy_drop,
            "agreement": None if self.agreement is None else self.agreement.to_dict(),
            "latency_ms": {k: v.to_dict() for k, v in self.latency_ms.items()},
            "calibration_samples": self.calibration_samples,
            "eval_samples": self.eval_samples,
            "warnings": list(self.warnings),
            "seconds": dict(self.seconds),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "range_lint": [w.to_dict() for w in self.range_lint],
            "ladder": [c.to_dict() for c in self.ladder],
            "chosen": self.chosen,
            "max_drop": self.max_drop,
            "training": None if self.training is None else self.training.to_dict(),
            "outputs": [o.to_dict() for o in self.outputs],
            "io": [t.to_dict() for t in self.io],
            "export": None if self.export is None else self.export.to_dict(),
            "float_ops": [o.to_dict() for o in self.float_ops],
            "budget": None if self.budget is None else self.budget.to_dict(),
            "spec": dict(self.spec),
            "runtime": self.runtime.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        if data.get("schema_version") not in (*MIGRATIONS, SCHEMA_VERSION):
            raise RecipeError(
                f"report schema_version: expected {SCHEMA_VERSION} (or an older one), found {data.get('schema_version')!r}"
            )
        agreement = data.get("agreement")
        return cls(
            model=data["model"],
            recipe=Recipe.from_dict(data["recipe"]),
            float_file=FileSummary.from_dict(data["float"]),
            quantized=FileSummary.from_dict(data["quantized"]),
            latency_ms={k: Latency.from_dict(v) for k, v in data["latency_ms"].items()},
            runtime=Runtime.from_dict(data["runtime"]),
            calibration_samples=data["calibration_samples"],
            eval_samples=data.get("eval_samples"),
            accuracy_drop=data.get("accuracy_drop"),
            agreement=None if agreement is None else Agreement.from_dict(agreement),
            warnings=list(data.get("warnings", [])),
            seconds=dict(data.get("seconds", {})),
            diagnostics=[LayerError.from_dict(d) for d in data.get("diagnostics", [])],
            range_lint=[RangeWarning.from_dict(w) for w in data.get("range_lint", [])],
            ladder=[Candidate.from_dict(c) for c in data.get("ladder", [])],
            chosen=data.get("chosen"),
            max_drop=data.get("max_drop"),
            training=None if data.get("training") is None else Training.from_dict(data["training"]),
            outputs=[OutputReport.from_dict(o) for o in data.get("outputs", [])],
            io=[IOTensor.from_dict(t) for t in data.get("io", [])],
            export=None if data.get("export") is None else ExportInfo.from_dict(data["export"]),
            float_ops=[FloatOp.from_dict(o) for o in data.get("float_ops", [])],
            budget=None if data.get("budget") is None else Budget.from_dict(data["budget"]),
            spec=dict(data.get("spec") or {}),
            tfquant_version=data.get("tfquant_version", ""),
            schema_version=SCHEMA_VERSION,
        )
