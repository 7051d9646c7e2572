"""report.html: the report's tables with the two charts a person would rather look at than read.

The worst tensors by quantization error (bar chart), and after a fallback ladder every
candidate's accuracy against its bytes (scatter). Charts are PNGs embedded in the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
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
    if not report.diagnostics:
        return None
    plt = _pyplot()
    rows = report.diagnostics[:top][::-1]
    figure, axes = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    labels = [f"{r.op}  {_short(r.tensor)}" for r in rows]
    axes.barh(labels, [r.rmse_per_scale for r in rows], color=["#c0392b" if r.rmse_per_scale > 1 else "#2e86c1" for r in rows])
    axes.axvline(NOISE_FLOOR, color="grey", linestyle="--", linewidth=1)
    axes.text(NOISE_FLOOR, -0.9, " rounding noise", color="grey", fontsize=8)
    axes.set_xlabel("RMSE / scale (int8 vs float, per tensor)")
    axes.set_title("Worst tensors after int8 quantization")
    axes.tick_params(axis="y", labelsize=7)
    return _png(figure)


def ladder_chart(report: Report) -> str | None:
    if not report.ladder or any(c.accuracy is None for c in report.ladder):
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for index, c in enumerate(report.ladder):
        chosen = index == report.chosen
        axes.scatter(c.tflite_bytes / 1024, 100 * c.accuracy, s=90 if chosen else 40,
                     color="#27ae60" if c.accepted else "#c0392b", edgecolor="black" if chosen else "none", zorder=3)
        # Numbered to match the table; alternate offsets keep neighbouring labels apart.
        axes.annotate(f"{index + 1}" + (" chosen" if chosen else ""), (c.tflite_bytes / 1024, 100 * c.accuracy),
                      textcoords="offset points", xytext=(6, 6 if index % 2 == 0 else -12), fontsize=8)
    if report.float_file.accuracy is not None:
        axes.axhline(100 * report.float_file.accuracy, color="grey", linewidth=1, label="float32 accuracy")
        if report.max_drop is not None:
            axes.axhline(100 * (report.float_file.accuracy - report.max_drop), color="grey", linestyle="--",
                         linewidth=1, label="budget (--max-drop)")
    axes.set_xlabel("file size (KiB)")
    axes.set_ylabel("top-1 accuracy on the interpreter (%)")
    axes.set_title("Fallback ladder: every candidate tried")
    axes.legend(fontsize=8, loc="lower right")
    return _png(figure)


def to_html(report: Report, rows: Sequence[tuple[str, str, str, str]]) -> str:
    """The page: `rows` are the summary table's rows, as the text and Markdown reports give them."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tfquant report: {esc(Path(report.model).name)}</title>",
        "<style>body{font:14px system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.warn{background:#fdf2e9;border-left:4px solid #e67e22;"
        "padding:6px 10px;margin:6px 0}code,pre{background:#f4f4f4}</style></head><body>",
        f"<h1>tfquant report: {esc(Path(report.model).name)}</h1>",
        f"<p>Mode <code>{esc(report.recipe.mode.value)}</code>, IO <code>{esc(report.recipe.io.value)}</code>, "
        f"measured on {esc(report.runtime.name)} {esc(report.runtime.version)} with "
        f"{report.runtime.num_threads} threads.</p>",
        "<table><tr><th></th><th>float32</th><th>" + esc(report.recipe.mode.value) + "</th><th>change</th></tr>",
    ]
    parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
    parts.append("</table>")
    parts += [f"<div class='warn'>{esc(w)}</div>" for w in report.warnings]
    if report.ladder:
        parts.append("<h2>Fallback ladder</h2><table><tr><th>#</th><th>candidate</th><th>accuracy</th><th>drop</th>"
                     "<th>bytes</th><th>float ops</th><th>p50 ms</th><th>seconds</th><th></th></tr>")
        for index, c in enumerate(report.ladder):
            verdict = "chosen" if index == report.chosen else ("within budget" if c.accepted else "over budget")
            parts.append(f"<tr><td>{index + 1}</td><td>{esc(c.name)}</td><td>{'–' if c.accuracy is None else f'{100 * c.accuracy:.2f} %'}</td><td>{'–' if c.drop is None else f'{100 * c.drop:.2f} pts'}</td>"
                         f"<td>{c.tflite_bytes:,}</td><td>{c.float_ops} / {c.ops}</td><td>{c.latency_p50_ms:.3f}</td>"
                         f"<td>{c.seconds:.2f}</td><td>{verdict}</td></tr>")
        parts.append("</table>")
        chart = ladder_chart(report)
        parts.append(f"<img alt='accuracy against bytes of every candidate' src='{chart}'>")
    if report.diagnostics:
        parts.append("<h2>Per-tensor quantization error</h2>")
        parts.append(f"<img alt='worst tensors by RMSE/scale' src='{worst_layers_chart(report)}'>")
        parts.append("<table><tr><th>tensor</th><th>op</th><th>RMSE/scale</th><th>mean error</th><th>max |error|</th></tr>")
        for d in report.diagnostics:
            parts.append(f"<tr><td>{esc(d.tensor)}</td><td>{esc(d.op)}</td><td>{d.rmse_per_scale:.3f}</td>"
                         f"<td>{d.mean_error:.3g}</td><td>{d.max_abs_error:.3g}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Recipe</h2><pre>" + esc(json.dumps(report.recipe.to_dict(), indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
