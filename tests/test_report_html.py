"""report.html as a person sees it: rendered by headless Chromium, no table wider than the page."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser import overflowing, render
from tfquant.report import write_report_files


def _page(result, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path, data in write_report_files(result.report, folder).items():
        path.write_bytes(data)
    return folder / "report.html"


def test_ladder_report_fits_the_page_with_long_tensor_names(laddered, tmp_path):
    result, _ = laddered
    page = _page(result, tmp_path / "ladder")
    text = page.read_text()
    longest = max((d.tensor for d in result.report.diagnostics), key=len)
    assert len(longest) > 60  # fused names such as a/b/MatMul;a/b/BiasAdd are what overflowed
    assert f"title='{longest}'" in text  # the whole name on hover
    layout = render(page, tmp_path / "ladder.png")
    assert overflowing(layout) == [], overflowing(layout)
    assert layout["page"] <= layout["viewport"]
    assert (tmp_path / "ladder.png").stat().st_size > 10_000
    images = [e for e in layout["elements"] if e["tag"] == "img"]
    assert len(images) == 2 and all(e["right"] <= layout["viewport"] for e in images)


def test_a_cnn_report_with_fused_names_fits_the_page(tmp_path):
    """MobileNetV3's fused tensor names (conv;bias;batchnorm;...) pushed the error columns 2,700 px off-screen."""
    import tfquant
    from zoo_cache import trained

    model = trained("mobilenet_v3_small", 3)  # the one the zoo and service tests train too
    result = tfquant.quantize(model.path, model.calib, eval_data=model.test, bench_runs=2)
    assert max(len(d.tensor) for d in result.report.diagnostics) > 200
    layout = render(_page(result, tmp_path / "cnn"), tmp_path / "cnn.png")
    assert overflowing(layout) == [], overflowing(layout)
    assert layout["page"] <= layout["viewport"]


def test_pruning_report_says_what_training_did(pruned, tmp_path):
    result, _ = pruned
    page = _page(result, tmp_path / "prune")
    text = page.read_text()
    for expected in ("<h2>Training</h2>", "prune+ptq", "target sparsity", "80 %", "Sparsity of each weight tensor",
                     "pruned_int8", "gzip bytes"):
        assert expected in text, expected
    layout = render(page, tmp_path / "prune.png")
    assert overflowing(layout) == [], overflowing(layout)


@pytest.mark.parametrize("width", [60])
def test_names_are_shortened_with_the_whole_name_kept(width):
    from tfquant.report_html import _short

    name = "model/block_7/depthwise/BiasAdd;model/block_7/depthwise/depthwise;model/block_7/bn/FusedBatchNorm"
    short = _short(name, width)
    assert len(short) <= width and short.endswith("depthwise/BiasAdd")
