"""Render a `Report`: JSON (the contract), Markdown (for people and PRs) and a terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .types import ModelInfo, QuantParams, Report


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _ratio(new: Optional[float], old: Optional[float]) -> str:
    return "–" if not old or new is None else f"{new / old:.2f}×"


def latency_text(value) -> str:
    """A median with its confidence interval: `0.042 ±3 %`."""
    margin = value.p50_margin
    return f"{value.p50:.3f}" + ("" if margin is None else f" ±{100 * margin:.0f} %")


def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def rows(report: Report) -> list[tuple[str, str, str, str]]:
    """The comparison table: metric, float file, quantized file, and the change."""
    fp, q = report.float_file, report.quantized
    lat_f, lat_q = report.latency_ms["float"], report.latency_ms["quantized"]
    table: list[tuple[str, str, str, str]] = []
    several = len(report.outputs) > 1
    for out in report.outputs:
        table += _output_rows(out, prefix=f"{out.name}: " if several else "")
    if not report.outputs and fp.accuracy is not None:
        table.append(("accuracy (top-1)", _pct(fp.accuracy), _pct(q.accuracy), ""))
    table += [
        ("file bytes", f"{fp.tflite_bytes:,}", f"{q.tflite_bytes:,}", _ratio(q.tflite_bytes, fp.tflite_bytes)),
        ("gzip bytes", f"{fp.gzip_bytes:,}", f"{q.gzip_bytes:,}", _ratio(q.gzip_bytes, fp.gzip_bytes)),
        ("latency p50 (ms)", latency_text(lat_f), latency_text(lat_q),
         _ratio(lat_q.p50, lat_f.p50) + f" ({lat_q.count} interleaved runs)"),
    ]
    if lat_q.p99 is not None and lat_f.p99 is not None:
        table.append(("latency p99 (ms)", _ms(lat_f.p99), _ms(lat_q.p99), _ratio(lat_q.p99, lat_f.p99)))
    table += [
        ("fully integer", "no" if not fp.fully_integer else "yes", "yes" if q.fully_integer else "NO", ", ".join(q.float_ops[:4])),
    ]
    return table


def _output_rows(out, prefix: str) -> list[tuple[str, str, str, str]]:
    f, q = out.float, out.quantized
    found = []
    if out.task == "classification":
        kind, unit = ("per decision", f"{q.samples} samples × {q.decisions} decisions") if q.decisions else \
            ("top-1", f"{q.samples} samples")
        if q.accuracy is not None:
            found.append((f"{prefix}accuracy ({kind})", _pct(f.accuracy), _pct(q.accuracy),
                          f"{100 * (f.accuracy - q.accuracy):.2f} pts drop"))
        if q.top5_accuracy is not None:
            found.append((f"{prefix}accuracy (top-5)", _pct(f.top5_accuracy), _pct(q.top5_accuracy), ""))
        if q.agreement is not None:
            found.append((f"{prefix}{kind} agreement", "", _pct(q.agreement), unit))
    elif out.task == "regression":
        found.append((f"{prefix}RMSE / float std", "", f"{q.rel_rmse:.4f}", f"max |err| {q.max_abs_error:.4g}"))
        if q.r2 is not None:
            found.append((f"{prefix}R² (labels)", f"{f.r2:.4f}", f"{q.r2:.4f}", ""))
    elif out.task == "embedding":
        found.append((f"{prefix}cosine to float", "", f"{q.mean_cosine:.4f}", f"min {q.min_cosine:.4f}"))
        if q.retrieval is not None:
            found.append((f"{prefix}retrieval (1-NN)", _pct(f.retrieval), _pct(q.retrieval),
                          f"{100 * (f.retrieval - q.retrieval):.2f} pts drop"))
    return found


def io_lines(report: Report) -> list[str]:
    """Every input and output of the quantized file with its dtype (and scale), as an app sees it."""
    lines = []
    for t in report.io:
        quant = "" if t.scale is None else f"  scale={t.scale:.6g} zero_point={t.zero_point}"
        task = next((f"  ({o.task})" for o in report.outputs if o.name == t.name and t.kind == "output"), "")
        lines.append(f"{t.kind:6} {t.name}  {t.dtype} {t.shape}{quant}{task}")
    return lines


def to_text(report: Report) -> str:
    """A fixed-width table for the terminal."""
    header = ("", "float32", report.recipe.mode.value, "")
    table = [header] + rows(report)
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) if i < 3 else cell
                       for i, cell in enumerate(row)).rstrip() for row in table]
    footer = (f"{report.eval_samples or 0} eval samples, {report.calibration_samples} calibration samples, "
              f"{report.runtime.name} {report.runtime.version}, {report.runtime.num_threads} threads")
    out = "\n".join(lines) + "\n" + footer + "\n"
    out += "".join(f"{line}\n" for line in io_lines(report))
    if report.export is not None and report.export.notes:
        out += "".join(f"export: {note}\n" for note in report.export.notes)
    for op in report.float_ops:
        out += f"float op: {op.op}#{op.index} in layer {op.layer!r}: {op.reason}\n"
    if report.training is not None:
        out += "\n".join(training_lines(report)) + "\n"
    for index, c in enumerate(report.ladder):
        verdict = c.verdict(index == report.chosen)
        scored = "" if c.accuracy is None else f"accuracy {c.accuracy:.4f}  drop {c.drop:+.4f}  "
        measured = f"{verdict}: {c.refused}" if c.refused else f"{scored}{c.tflite_bytes:,} bytes  {verdict}"
        out += f"ladder {index + 1}: {c.name:<24} {measured}\n"
    for warning in report.warnings:
        out += f"warning: {warning}\n"
    return out


def training_lines(report: Report) -> list[str]:
    """The training stage in a few lines: what ran, Keras accuracy, sizes, sparsity, layer treatments."""
    t = report.training
    lines = [f"{t.kind}: {t.epochs} epochs" + ("" if t.keras_accuracy is None else
                                                f", accuracy in Keras {100 * t.keras_accuracy:.2f} %")]
    if t.ptq_accuracy is not None:
        lines.append(f"  int8 accuracy: plain PTQ {_pct(t.ptq_accuracy)}, QAT {_pct(t.qat_accuracy)}"
                     + (" (PTQ file kept)" if t.kept == "ptq" else ""))
    for name, size in t.files.items():
        lines.append(f"  {name:12} {size.tflite_bytes:>10,} bytes  {size.gzip_bytes:>10,} gzip")
    if t.sparsity:
        lines.append("  sparsity in the .tflite weights: " + ", ".join(f"{k.split('/')[-2] if '/' in k else k} "
                                                                       f"{100 * v:.1f} %" for k, v in t.sparsity.items()))
    if t.stages:
        lines.append("  stage        accuracy       bytes        gzip")
        lines += [f"  {s.name:10} {_pct(s.accuracy):>10} {s.tflite_bytes:>11,} {s.gzip_bytes:>11,}" for s in t.stages]
    if t.unique_values:
        lines.append(f"  distinct values in the .tflite weights ({t.clusters} clusters): "
                     + ", ".join(f"{_short_name(k)} {v}" for k, v in t.unique_values.items()))
    if t.folded:
        lines.append(f"  {len(t.folded)} BatchNormalization folded into their kernels before clustering")
    if t.sparse is not None:
        lines.append("  " + t.sparse.summary())
    special = [layer for layer in t.layers if layer.treatment.startswith("tfquant")]
    if t.layers:
        lines.append(f"  layers: {len(t.layers) - len(special)} by tfmot's default scheme or not wrapped, "
                     f"{len(special)} by tfquant's registry" + (":" if special else ""))
        lines += [f"    {layer.name} ({layer.layer_class}): {layer.treatment}" for layer in special]
    return lines


def _short_name(name: str) -> str:
    return name.split("/")[-2] if name.count("/") >= 1 else name


def _quant_text(q: Optional[QuantParams]) -> str:
    if q is None:
        return "-"
    if len(q.scale) == 1:
        return f"scale={q.scale[0]:.6g} zero_point={q.zero_point[0] if q.zero_point else 0}"
    return f"{len(q.scale)} scales {min(q.scale):.3g}..{max(q.scale):.3g} axis={q.quantized_dimension}"


def inspect_text(info: ModelInfo) -> str:
    """`tfquant inspect`: the verdict, the IO, every op with its dtypes, every tensor with its quantization."""
    verdict = "yes" if info.fully_integer else "NO (float ops: " + ", ".join(info.float_ops) + ")"
    lines = [f"{info.source}: {info.bytes:,} bytes, {len(info.ops)} ops, fully integer: {verdict}"]
    for label, tensors in (("input", info.inputs), ("output", info.outputs)):
        for t in tensors:
            lines.append(f"{label:6} {t.name}  {t.dtype} {t.shape_signature}  {_quant_text(t.quantization)}")
    lines.append("")
    lines.append(f"{'#':>3}  {'op':24} {'inputs':28} outputs")
    for op in info.ops:
        mark = "  <- float" if op.float else ""
        lines.append(f"{op.index:>3}  {op.name:24} {','.join(op.input_dtypes):28} {','.join(op.output_dtypes)}{mark}")
    lines.append("")
    lines.append(f"{'#':>3}  {'tensor':48} {'dtype':8} {'shape':18} quantization")
    for t in info.tensors:
        lines.append(f"{t.index:>3}  {t.name[:48]:48} {t.dtype:8} {str(t.shape):18} {_quant_text(t.quantization)}")
    return "\n".join(lines) + "\n"


def to_markdown(report: Report) -> str:
    recipe = report.recipe
    lines = [
        f"# tfquant report: {Path(report.model).name}",
        "",
        f"Mode `{recipe.mode.value}`, IO `{recipe.io.value}`, {report.calibration_samples} calibration samples, "
        f"measured on {report.runtime.name} {report.runtime.version} with {report.runtime.num_threads} threads "
        f"(tfquant {report.tfquant_version}).",
        "",
        f"| | float32 | {recipe.mode.value} | change |",
        "| --- | ---: | ---: | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(report)]
    if report.io:
        lines += ["", "## Inputs and outputs of the quantized file", "", "| | name | dtype | shape | scale | zero point | task |",
                  "| --- | --- | --- | --- | ---: | ---: | --- |"]
        tasks = {o.name: o.task for o in report.outputs}
        lines += [f"| {t.kind} | `{t.name}` | {t.dtype} | {t.shape} | {'' if t.scale is None else f'{t.scale:.6g}'} | "
                  f"{'' if t.zero_point is None else t.zero_point} | {tasks.get(t.name, '') if t.kind == 'output' else ''} |"
                  for t in report.io]
    if report.export is not None:
        lines += ["", "## Export", "", f"Route: {report.export.route}, {report.export.seconds:.2f} s."]
        lines += [f"- {note}" for note in report.export.notes]
    if report.float_ops:
        lines += ["", "## Float ops", "", "| op | layer | why |", "| --- | --- | --- |"]
        lines += [f"| {o.op}#{o.index} | `{o.layer}` | {o.reason} |" for o in report.float_ops]
    lines += ["", "## Ops in the quantized file", "", "| op | count |", "| --- | ---: |"]
    lines += [f"| {name} | {count} |" for name, count in sorted(report.quantized.op_counts.items())]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    if report.training is not None:
        lines += ["", "## Training", "", "```"] + training_lines(report) + ["```"]
        if report.training.layers:
            lines += ["", "| layer | class | treatment |", "| --- | --- | --- |"]
            lines += [f"| {x.name} | {x.layer_class} | {x.treatment} |" for x in report.training.layers]
    if report.ladder:
        lines += ["", "## Fallback ladder", "", "| candidate | accuracy | drop | bytes | float ops | p50 ms | |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for index, c in enumerate(report.ladder):
            verdict = "**chosen**" if index == report.chosen else c.verdict(False)
            drop = "–" if c.drop is None else f"{100 * c.drop:.2f} pts"
            lines.append(f"| {c.name} | {_pct(c.accuracy)} | {drop} | {c.tflite_bytes:,} | "
                         f"{c.float_ops} / {c.ops} | {c.latency_p50_ms:.3f} | {verdict} |")
    if report.diagnostics:
        lines += ["", "## Worst tensors (RMSE / scale)", "", "| tensor | op | RMSE/scale | max abs error |",
                  "| --- | --- | ---: | ---: |"]
        lines += [f"| `{d.tensor}` | {d.op} | {d.rmse_per_scale:.3f} | {d.max_abs_error:.3g} |" for d in report.diagnostics[:10]]
    lines += ["", "## Recipe", "", "```json", json.dumps(recipe.to_dict(), indent=2), "```", ""]
    return "\n".join(lines)


def _html(report: Report) -> str:
    from .report_html import to_html

    return to_html(report, rows(report))


_RENDERERS = {"report.json": to_json, "report.md": to_markdown, "report.html": _html}


def report_paths(folder: Path) -> list[Path]:
    """Where the report files of a model written into `folder` go."""
    return [folder / name for name in _RENDERERS]


def write_report_files(report: Report, folder: Path) -> dict[Path, bytes]:
    """The report files that go beside a converted model, as `{path: bytes}` for an atomic write."""
    return {folder / name: render(report).encode() for name, render in _RENDERERS.items()}
