"""report.html: the report's tables with the two charts a person would rather look at than read.

The worst tensors by quantization error (bar chart), and after a fallback ladder every
candidate's accuracy against its bytes (scatter). Both are embedded in the page: the bars as
SVG written here, the scatter as a matplotlib PNG (imported only when a ladder ran).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Sequence

from .types import Report

NOISE_FLOOR = 12 ** -0.5  # RMSE/scale of pure rounding error


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _short(tensor: str, width: int = 44) -> str:
    """The first of a fused op's names (`a/b/MatMul;a/b/BiasAdd` -> `a/b/MatMul`), its tail if long."""
    head = tensor.split(";")[0]
    return head if len(head) <= width else "…" + head[-(width - 1):]


def worst_layers_chart(report: Report, top: int = 12) -> str | None:
    """The worst tensors' RMSE/scale as horizontal bars, drawn as SVG: nothing to import, sharp at any zoom."""
    if not report.diagnostics:
        return None
    rows = report.diagnostics[:top]
    label_width, bar_width, row_height, top_margin = 340, 360, 22, 40
    height = top_margin + row_height * len(rows) + 46
    largest = max([r.rmse_per_scale for r in rows if math.isfinite(r.rmse_per_scale)] + [NOISE_FLOOR]) * 1.08
    step = _tick_step(largest)

    def x(value: float) -> float:  # an infinite error (a tensor whose scale is 0) drawn to the axis' end
        return label_width + bar_width * min(value, largest) / largest

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{label_width + bar_width + 20}' height='{height}' "
             "font-family='sans-serif' font-size='11'>",
             "<rect width='100%' height='100%' fill='white'/>",
             f"<text x='{label_width + bar_width / 2}' y='18' font-size='13' text-anchor='middle'>"
             "Worst tensors after int8 quantization</text>"]
    for index, row in enumerate(rows):
        y = top_margin + index * row_height
        colour = "#c0392b" if row.rmse_per_scale > 1 else "#2e86c1"
        parts.append(f"<text x='{label_width - 6}' y='{y + 15}' text-anchor='end'>"
                     f"{html.escape(f'{row.op}  {_short(row.tensor)}')}</text>")
        parts.append(f"<rect x='{label_width}' y='{y + 3}' width='{max(0.5, x(row.rmse_per_scale) - label_width):.1f}'"
                     f" height='{row_height - 6}' fill='{colour}'/>")
    axis = top_margin + row_height * len(rows) + 2
    parts.append(f"<line x1='{label_width}' y1='{axis}' x2='{label_width + bar_width}' y2='{axis}' stroke='black'/>")
    tick = 0.0
    while tick <= largest:
        parts.append(f"<line x1='{x(tick):.1f}' y1='{axis}' x2='{x(tick):.1f}' y2='{axis + 4}' stroke='black'/>"
                     f"<text x='{x(tick):.1f}' y='{axis + 16}' text-anchor='middle'>{tick:g}</text>")
        tick = round(tick + step, 10)
    parts.append(f"<line x1='{x(NOISE_FLOOR):.1f}' y1='{top_margin - 4}' x2='{x(NOISE_FLOOR):.1f}' y2='{axis}' "
                 "stroke='grey' stroke-dasharray='4 3'/>"
                 f"<text x='{x(NOISE_FLOOR) + 3:.1f}' y='{top_margin - 6}' fill='grey' font-size='10'>rounding noise</text>")
    parts.append(f"<text x='{label_width + bar_width / 2}' y='{axis + 34}' text-anchor='middle'>"
                 "RMSE / scale (int8 vs float, per tensor)</text></svg>")
    return "data:image/svg+xml;base64," + base64.b64encode("".join(parts).encode()).decode()


def _tick_step(largest: float) -> float:
    """A round tick spacing giving about five ticks up to `largest`."""
    raw = largest / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def ladder_chart(report: Report) -> str | None:
    measured = [(index, c) for index, c in enumerate(report.ladder) if not c.refused]  # a refused mode has no file
    if not measured or any(c.accuracy is None for _, c in measured):
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for index, c in measured:
        chosen = index == report.chosen
        axes.scatter(c.tflite_bytes / 1024, 100 * c.accuracy, s=90 if chosen else 40,
                     color="#27ae60" if c.accepted else "#c0392b", edgecolor="black" if chosen else "none", zorder=3)
        # Numbered to match the table; alternate offsets keep neighbouring labels apart.
        axes.annotate(f"{index + 1}" + (" chosen" if chosen else ""), (c.tflite_bytes / 1024, 100 * c.accuracy),
                      textcoords="offset points", xytext=(6, 6 if index % 2 == 0 else -12), fontsize=8,
                      annotation_clip=False)
    axes.margins(x=0.18, y=0.12)  # room for the labels of the outermost points inside the frame
    if report.float_file.accuracy is not None:
        axes.axhline(100 * report.float_file.accuracy, color="grey", linewidth=1, label="float32 accuracy")
        if report.max_drop is not None:
            axes.axhline(100 * (report.float_file.accuracy - report.max_drop), color="grey", linestyle="--",
                         linewidth=1, label="budget (max drop)")
    axes.set_xlabel("file size (KiB)")
    axes.set_ylabel("top-1 accuracy on the interpreter (%)")
    axes.set_title("Fallback ladder: every candidate tried")
    axes.legend(fontsize=8, loc="lower right")
    return _png(figure)


STYLE = (
    "body{font:14px system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;max-width:100%}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right;vertical-align:top}td:first-child,th:first-child{text-align:left}"
    "table.names{table-layout:fixed;width:100%}table.names td:first-child{overflow-wrap:anywhere;word-break:break-word}"
    ".warn{background:#fdf2e9;border-left:4px solid #e67e22;padding:6px 10px;margin:6px 0;overflow-wrap:anywhere}"
    "code,pre{background:#f4f4f4}pre{overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto}"
)


def _row(cells: Sequence[str]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _name_cell(name: str) -> str:
    """A long tensor name, shortened, with the whole name on hover."""
    return f"<td title='{html.escape(name, quote=True)}'>{html.escape(_short(name, 60))}</td>"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def training_section(report: Report) -> list[str]:
    """QAT and pruning: what training did, the PTQ baseline it is measured against, sizes and sparsity."""
    t = report.training
    if t is None:
        return []
    esc = html.escape
    spec = report.spec or {}
    facts = [("stage", t.kind), ("epochs", str(t.epochs))]
    for key in ("learning_rate", "batch_size", "schedule", "block", "then", "keep_best", "clusters", "init", "prune",
                "cluster", "qat", "sparse"):
        if spec.get(key) is not None:
            facts.append((key.replace("_", " "), str(spec[key])))
    if t.target_sparsity is not None:
        facts.append(("target sparsity", f"{100 * t.target_sparsity:.0f} %"))
    parts = ["<h2>Training</h2><table>" + "".join(_row(f) for f in facts) + "</table>"]
    accuracies = [("float32 (Keras model before training, on the interpreter)", _pct(report.float_file.accuracy)),
                  ("after training, in Keras", _pct(t.keras_accuracy))]
    if t.ptq_accuracy is not None:
        accuracies.append(("plain post-training int8 (PTQ baseline)", _pct(t.ptq_accuracy)))
    if t.qat_accuracy is not None:
        accuracies.append(("QAT int8", _pct(t.qat_accuracy)))
    accuracies.append(("the int8 file written" + (" (the PTQ file, kept)" if t.kept == "ptq" else ""),
                       _pct(report.quantized.accuracy)))
    parts.append("<table><tr><th>accuracy</th><th></th></tr>" + "".join(_row(a) for a in accuracies) + "</table>")
    if t.files:
        parts.append("<table><tr><th>file</th><th>bytes</th><th>gzip bytes</th></tr>" + "".join(
            _row((name, f"{size.tflite_bytes:,}", f"{size.gzip_bytes:,}")) for name, size in t.files.items()) + "</table>")
    if t.sparsity:
        parts.append("<h3>Sparsity of each weight tensor, read from the .tflite file</h3>"
                     "<table class='names'><colgroup><col style='width:75%'><col></colgroup>"
                     "<tr><th>weight tensor</th><th>zeros</th></tr>")
        parts += [f"<tr>{_name_cell(name)}<td>{100 * value:.1f} %</td></tr>" for name, value in t.sparsity.items()]
        parts.append("</table>")
    if t.stages:
        parts.append("<h3>Each stage as an int8 file, on the interpreter</h3><table><tr><th>stage</th>"
                     "<th>accuracy</th><th>bytes</th><th>gzip bytes</th></tr>" + "".join(
                         _row((s.name, _pct(s.accuracy), f"{s.tflite_bytes:,}", f"{s.gzip_bytes:,}"))
                         for s in t.stages) + "</table>")
    if t.unique_values:
        parts.append(f"<h3>Distinct values of each weight tensor, read from the .tflite file ({t.clusters} clusters)"
                     "</h3><table class='names'><colgroup><col style='width:75%'><col></colgroup>"
                     "<tr><th>weight tensor</th><th>values</th></tr>")
        parts += [f"<tr>{_name_cell(name)}<td>{count}</td></tr>" for name, count in t.unique_values.items()]
        parts.append("</table>")
    if t.folded:
        parts.append(f"<p>{len(t.folded)} BatchNormalization folded into their kernels before clustering, so that "
                     "the converter's own fold leaves the shared values as they are.</p>")
    if t.sparse is not None:
        parts.append(f"<h3>Sparse storage</h3><p>{esc(t.sparse.summary())}</p>")
        if t.sparse.dense_tensors:
            parts.append("<table class='names'><colgroup><col style='width:50%'><col></colgroup>"
                         "<tr><th>left dense</th><th>why</th></tr>")
            parts += [f"<tr>{_name_cell(name)}<td>{esc(why)}</td></tr>" for name, why in t.sparse.dense_tensors.items()]
            parts.append("</table>")
    special = [layer for layer in t.layers if layer.treatment.startswith("tfquant")]
    if special:
        parts.append("<h3>Layers tfquant's QAT registry handled</h3><table class='names'>"
                     "<colgroup><col style='width:35%'><col style='width:20%'><col></colgroup>"
                     "<tr><th>layer</th><th>class</th><th>treatment</th></tr>")
        parts += [f"<tr>{_name_cell(layer.name)}<td>{esc(layer.layer_class)}</td><td>{esc(layer.treatment)}</td></tr>"
                  for layer in special]
        parts.append("</table>")
    return parts


def to_html(report: Report, rows: Sequence[tuple[str, str, str, str]]) -> str:
    """The page: `rows` are the summary table's rows, as the text and Markdown reports give them."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tfquant report: {esc(Path(report.model).name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>tfquant report: {esc(Path(report.model).name)}</h1>",
        f"<p>Mode <code>{esc(report.recipe.mode.value)}</code>, IO <code>{esc(report.recipe.io.value)}</code>, "
        f"measured on {esc(report.runtime.name)} {esc(report.runtime.version)} with "
        f"{report.runtime.num_threads} threads.</p>",
        "<table><tr><th></th><th>float32</th><th>" + esc(report.recipe.mode.value) + "</th><th>change</th></tr>",
    ]
    parts += [_row(row) for row in rows]
    parts.append("</table>")
    parts += [f"<div class='warn'>{esc(w)}</div>" for w in report.warnings]
    if report.io:
        parts.append("<h2>Inputs and outputs of the file</h2><table class='names'>"
                     "<colgroup><col style='width:30%'><col><col><col><col></colgroup>"
                     "<tr><th>name</th><th>kind</th><th>dtype</th><th>shape</th><th>scale, zero point</th></tr>")
        parts += [f"<tr>{_name_cell(t.name)}<td>{esc(t.kind)}</td><td>{esc(t.dtype)}</td><td>{esc(str(t.shape))}</td>"
                  f"<td>{'–' if t.scale is None else f'{t.scale:.6g}, {t.zero_point}'}</td></tr>" for t in report.io]
        parts.append("</table>")
    parts += training_section(report)
    if report.float_ops:
        parts.append("<h2>Ops that stayed float</h2><table class='names'>"
                     "<colgroup><col style='width:30%'><col style='width:15%'><col></colgroup>"
                     "<tr><th>layer</th><th>op</th><th>why</th></tr>")
        parts += [f"<tr>{_name_cell(o.layer)}<td>{esc(o.op)}#{o.index}</td><td>{esc(o.reason)}</td></tr>"
                  for o in report.float_ops]
        parts.append("</table>")
    if report.ladder:
        parts.append("<h2>Fallback ladder</h2><table><tr><th>#</th><th>candidate</th><th>accuracy</th><th>drop</th>"
                     "<th>bytes</th><th>float ops</th><th>p50 ms</th><th>seconds</th><th></th></tr>")
        for index, c in enumerate(report.ladder):
            verdict = c.verdict(index == report.chosen)
            parts.append(_row((str(index + 1), c.name, _pct(c.accuracy),
                               "–" if c.drop is None else f"{100 * c.drop:.2f} pts", f"{c.tflite_bytes:,}",
                               f"{c.float_ops} / {c.ops}", f"{c.latency_p50_ms:.3f}", f"{c.seconds:.2f}", verdict)))
        parts.append("</table>")
        chart = ladder_chart(report)
        if chart:
            parts.append(f"<img alt='accuracy against bytes of every candidate' src='{chart}'>")
    if report.diagnostics:
        parts.append("<h2>Per-tensor quantization error</h2>")
        parts.append(f"<img alt='worst tensors by RMSE/scale' src='{worst_layers_chart(report)}'>")
        parts.append("<table class='names'><colgroup><col style='width:50%'><col style='width:14%'><col><col><col>"
                     "</colgroup><tr><th>tensor</th><th>op</th><th>RMSE/scale</th><th>mean error</th>"
                     "<th>max |error|</th></tr>")
        for d in report.diagnostics:
            parts.append(f"<tr>{_name_cell(d.tensor)}<td>{esc(d.op)}</td><td>{d.rmse_per_scale:.3f}</td>"
                         f"<td>{d.mean_error:.3g}</td><td>{d.max_abs_error:.3g}</td></tr>")
        parts.append("</table>")
    options = report.spec or report.recipe.to_dict()
    parts.append("<h2>Options</h2><pre>" + esc(json.dumps(options, indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
