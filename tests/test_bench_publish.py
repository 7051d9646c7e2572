"""The bench tables' note on which rows were measured on another day."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.publish import dates_note  # noqa: E402


def test_dates_note_names_a_model_with_its_keras_version_only_where_its_versions_differ_in_date():
    rows = [{"model": "a", "keras": 3, "measured": "2026-11-27"}, {"model": "a", "keras": 2, "measured": "2026-11-26"},
            {"model": "b", "keras": 3, "measured": "2026-11-27"}, {"model": "b", "keras": 2, "measured": "2026-11-27"},
            {"model": "c", "keras": 3}]
    assert dates_note(rows, "2026-11-27", "2026-11-23") == [
        "", "Only a (Keras 3), b were run again on 2026-11-27; the other rows are from the same bench's runs on "
            "2026-11-23 (c); 2026-11-26 (a (Keras 2))."]


def test_dates_note_is_empty_when_every_row_is_from_one_day():
    rows = [{"model": "a", "keras": 3, "measured": "2026-11-27"}, {"model": "a", "keras": 2, "measured": "2026-11-27"}]
    assert dates_note(rows, "2026-11-27", "2026-11-23") == []
    assert dates_note([{"model": "x"}], "2026-11-27", "2026-11-23") == []


def test_dates_note_names_the_machine_of_rows_measured_on_another():
    rows = [{"model": "a", "keras": 3, "measured": "2026-12-06", "machine": "AMD EPYC"},
            {"model": "b", "keras": 3, "measured": "2026-11-27", "machine": "Intel Xeon"},
            {"model": "c", "keras": 3, "measured": "2026-11-26", "machine": "AMD EPYC"}]
    assert dates_note(rows, "2026-12-06", "2026-11-23", "AMD EPYC") == [
        "", "Only a was run again on 2026-12-06; the other rows are from the same bench's runs on "
            "2026-11-26 (c); 2026-11-27 on Intel Xeon (b)."]


def test_draws_bound_the_standard_error_of_the_difference_by_the_predictions_int8_changes():
    from bench.draws import summary

    def draw(agreement):
        return {q: {"float": 0.9, "accuracy": 0.89, "agreement": agreement, "fully_integer": True}
                for q in ("tfquant", "litert")}

    # 359 samples at 98 % agreement: about 7.2 changed predictions, sqrt(7.18) / 359 = 0.0075
    old = summary({"draws": [draw(0.98), draw(0.98)]})
    assert abs(old["tfquant"]["se"] - 0.007464) < 1e-5
    # the stored test size is used where a row has it; the bound is the mean over the draws
    row = summary({"test_samples": 100, "draws": [draw(0.96), draw(1.0)]})
    assert abs(row["litert"]["se"] - (0.02 + 0.0) / 2) < 1e-9
    assert "average" not in row and row["at_least_litert"] == 2


def test_folds_pair_every_prediction_with_float_and_give_the_differences_standard_error():
    from bench.folds import summary

    def fold(y, float_, tfquant, litert, integer=True):
        text = lambda classes: " ".join(map(str, classes))  # noqa: E731  (as bench/folds.json keeps them)
        return {"y": text(y), "float": text(float_),
                "tfquant": {"predictions": text(tfquant), "fully_integer": integer},
                "litert": {"predictions": text(litert), "fully_integer": True}}

    # float right on 3 of 4, tfquant on 2 (it changes the third), LiteRT on all 4.
    first = {**fold([0, 1], [0, 1], [0, 1], [0, 1]), "mse": {"predictions": "0 1", "fully_integer": True}}
    s = summary({"folds": [first, fold([2, 3], [2, 0], [0, 0], [2, 3]),
                           {"y": "4", "float": "4", "tfquant": {"error": "budget"}, "litert": {"predictions": "4"}}]})
    assert s["folds"] == 2 and s["samples"] == 4  # the fold a quantizer failed on is left out of both
    assert (s["float"]["low"], s["float"]["high"]) == (0.5, 1.0)
    assert s["float"]["accuracy"] == 0.75 and s["tfquant"]["accuracy"] == 0.5 and s["litert"]["accuracy"] == 1.0
    # float - tfquant per digit: 0, 0, 1, 0: mean 0.25, sample variance 0.25, standard error sqrt(0.25 / 4)
    assert s["tfquant"]["below"] == 0.25 and abs(s["tfquant"]["se"] - 0.25) < 1e-12
    assert s["tfquant"]["agreement"] == 0.75 and s["litert"]["agreement"] == 0.75
    assert s["litert"]["below"] == -0.25
    assert s["ahead"][0] == -0.5  # tfquant - LiteRT
    assert "mse" not in s  # measured on one of the two folds only
    assert summary({"folds": [fold([0], [0], [0], [0], integer=False)]})["tfquant"]["fully_integer"] is False


def _folds_row(model: str, measured: str, y: str, float_: str, tfquant: str, litert: str) -> dict:
    """A bench/folds.json row of one fold (classes as text, as the file keeps them), every file integer."""
    run = {"y": y, "float": float_, "tfquant": {"predictions": tfquant, "fully_integer": True},
           "litert": {"predictions": litert, "fully_integer": True}}
    return {"model": model, "keras": 3, "measured": measured, "samples": 200, "folds": [run]}


BENCH_ENVIRONMENT = {"date": "2026-12-09", "cpu": "cpu", "cores": 2, "versions": {"tensorflow": "2.21.0"}}


def test_folds_table_puts_rounding_and_clipping_apart_in_a_second_table_where_they_ran():
    from bench.folds import markdown

    environment = BENCH_ENVIRONMENT
    row = _folds_row("efficientnet_b0", "2026-12-08", "0 1 2 3", "0 1 2 0", "0 1 0 0", "0 1 2 3")
    run = row["folds"][0]
    plain = markdown([row], environment)
    assert "int16x8, min/max" not in plain and plain.count("| efficientnet_b0 | 3 |") == 1
    # int16x8 files are integer too, and "fully integer" speaks of the int8 files only.
    apart = {**run, "int16": {"predictions": "0 1 2 3", "fully_integer": False},
             "clip": {"predictions": "0 1 2 2", "fully_integer": True}}
    lines = markdown([{**row, "folds": [apart]}], environment).splitlines()
    first, second = [line for line in lines if line.startswith("| efficientnet_b0 | 3 |")]
    assert first.endswith("| -50.00 ± 28.87 pts | yes |"), first  # tfquant 2 of 4 right, LiteRT 4 of 4
    # float right on 3 of 4: int16x8 min/max and LiteRT on all 4 (25 points above), LiteRT's ranges on the same 3
    assert second.split(" | ")[3:] == ["100.00 % (-25.00 ± 25.00) · 75.0 %", "75.00 % (+0.00 ± 0.00) · 75.0 %",
                                       "100.00 % (-25.00 ± 25.00) · 75.0 % |"], second


def test_folds_table_is_dated_by_its_rows_and_names_the_columns_run_again():
    from bench.folds import markdown

    environment = BENCH_ENVIRONMENT
    row = _folds_row("mobilenet_v2", "2026-12-07", "0 1", "0 1", "0 1", "0 0")
    run = row["folds"][0]
    plain = markdown([row], environment)
    assert plain.startswith("Measured 2026-12-07 on cpu") and "Run again" not in plain
    again = {**run, "tfquant": {**run["tfquant"], "measured": "2026-12-08"},
             "gptq": {"predictions": "0 1", "fully_integer": True, "measured": "2026-12-08"}}
    text = markdown([{**row, "folds": [again]}], environment)
    assert text.startswith("Measured 2026-12-07 on cpu")
    assert ("Run again on 2026-12-08, on the same trained models, float files and calibration samples: "
            "tfquant int8 (defaults), tfquant, GPTQ rounding.") in text


def test_zoo_table_says_when_its_qat_rows_come_from_an_earlier_run():
    from bench.zoo import markdown

    def row(keras: int, qat_measured: str) -> dict:
        qat = {"measured": qat_measured, "ptq_accuracy": 0.9, "qat_accuracy": 0.95, "kept": "qat",
               "fully_integer": True, "seconds": 12.0}
        return {"model": "gru", "keras": keras, "measured": "2026-12-08", "error": "x", "qat": qat}

    heading = "evaluation data, as `tfquant qat` does unless `--no-keep-best` is given)"
    fresh = markdown([row(3, "2026-12-08")], BENCH_ENVIRONMENT)
    assert heading + ":" in fresh and "| gru | 3 | 90.00 % | 95.00 % | qat | yes | 12.0 |" in fresh
    kept = markdown([row(3, "2026-12-08"), row(2, "2026-11-27")], BENCH_ENVIRONMENT)
    assert (heading + ". Kept from earlier runs (the last on 2026-11-27), on the models those runs trained: "
            "the PTQ column is theirs, not the table's above:") in kept
