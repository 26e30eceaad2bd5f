"""`keras-mmoe reproduce census|synthetic`: tables, plots, paper numbers, errors, the census export."""

import json
import os
import re

import numpy as np
import pytest

from conftest import CENSUS_SAMPLE_DIR, run_python
from keras_mmoe.cli.main import main
from keras_mmoe.reproduce import census, paper, report, synthetic

# The MMoE paper's census-income tables (Ma et al., KDD 2018, Tables 2 and 3), transcribed here a
# second time, independently of keras_mmoe/reproduce/paper.py, so the two transcriptions check
# each other. Columns: group 1 income best, income mean, marital; group 2 education best,
# education mean, marital (the marital columns are means over runs).
PAPER_TABLE = """
| method | G1 income best | G1 income mean | G1 marital | G2 education best | G2 education mean | G2 marital |
|---|---|---|---|---|---|---|
| Single-Task | 0.9398 | 0.9337 | 0.9933 | 0.8843 | 0.8792 | 0.9933 |
| Shared-Bottom | 0.9361 | 0.9295 | 0.9915 | 0.8836 | 0.8813 | 0.9927 |
| L2-Constrained | 0.9389 | 0.9359 | 0.9922 | 0.8855 | 0.8823 | 0.9923 |
| Cross-Stitch | 0.9406 | 0.9361 | 0.9917 | 0.8855 | 0.8819 | 0.9919 |
| Tensor-Factorization | 0.7460 | 0.6765 | 0.8175 | 0.7367 | 0.7256 | 0.7453 |
| OMoE | 0.9387 | 0.9319 | 0.9928 | 0.8852 | 0.8813 | 0.9915 |
| MMoE | 0.9410 | 0.9359 | 0.9926 | 0.8860 | 0.8826 | 0.9932 |
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def test_paper_numbers_equal_an_independent_transcription():
    text = PAPER_TABLE
    rows = re.findall(r"^\| ([A-Za-z0-9 -]+) \| ([0-9. |]+)\|$", text, flags=re.M)
    parsed = {name.strip(): [float(v) for v in values.split("|")] for name, values in rows}
    assert len(parsed) == 7
    for key, method in paper.METHOD_NAMES.items():
        g1_best, g1_mean, g1_marital, g2_best, g2_mean, g2_marital = parsed[method]
        assert paper.CENSUS_AUC[1][key] == (g1_best, g1_mean, g1_marital)
        assert paper.CENSUS_AUC[2][key] == (g2_best, g2_mean, g2_marital)


def test_aggregate_matches_numpy():
    values = [0.93, 0.95, 0.94, 0.91]
    stats = report.aggregate(values)
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert (stats["best"], stats["worst"], stats["n"]) == (0.95, 0.91, 4)
    assert stats["median"] == pytest.approx(np.median(values))
    assert report.aggregate([0.5])["std"] == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        report.aggregate([])


def test_census_summary_and_table_from_hand_made_runs():
    runs = [
        {"model": "mmoe", "params": 10, "epochs_trained": e, "seconds": 1.0,
         "test_auc": {"income": a, "marital": b}}
        for e, a, b in [(3, 0.94, 0.99), (5, 0.92, 0.98)]
    ]
    summary = census.summarize(runs, ["income", "marital"], 1)
    mmoe = summary["mmoe"]
    assert mmoe["test_auc"]["income"]["mean"] == pytest.approx(0.93)
    assert mmoe["test_auc"]["income"]["best"] == 0.94
    assert mmoe["mean_epochs"] == 4.0
    assert mmoe["paper"]["income"] == {"best": 0.9410, "mean": 0.9359}
    assert mmoe["paper"]["marital"] == {"mean": 0.9926}
    table = census.to_markdown(summary, ["income", "marital"], 1)
    assert "| MMoE | 10 | 2 | 4.0 | 0.9300 ± 0.0141 | 0.9400 | 0.9359 | 0.9410 | 0.9850 ± 0.0071 | 0.9900 | 0.9926 |" in table


def test_synthetic_summary_increase_is_mean_difference():
    runs = [
        {"model": "mmoe", "params": 5, "correlation": c, "final_loss": v}
        for c, v in [(1.0, 0.1), (1.0, 0.3), (0.5, 0.4), (0.5, 0.6)]
    ]
    entry = synthetic.summarize(runs)["mmoe"]
    assert entry["final_loss"]["1"]["mean"] == pytest.approx(0.2)
    assert entry["final_loss"]["0.5"]["std"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert entry["increase_1_to_0.5"] == pytest.approx(0.3)
    assert "+0.3000" in synthetic.to_markdown({"mmoe": entry})


def test_quick_census_run_writes_tables_and_an_export_that_serves_raw_features(tmp_path):
    out, export = tmp_path / "out", tmp_path / "export"
    code = main(["reproduce", "census", "--quick", "--group", "2", "--models", "mmoe", "shared_bottom",
                 "--data-dir", CENSUS_SAMPLE_DIR, "--out-dir", str(out), "--export-dir", str(export)])
    assert code == 0
    record = json.loads((out / "census_group2.json").read_text())
    assert record["task_names"] == ["education", "marital"]
    assert [r["model"] for r in record["runs"]] == ["mmoe", "shared_bottom"]
    for run in record["runs"]:
        assert set(run["test_auc"]) == {"education", "marital"}
        assert all(0.0 <= v <= 1.0 for v in run["test_auc"].values())
        assert run["epochs_trained"] == 1 and run["params"] > 1000
    assert record["summary"]["mmoe"]["paper"]["education"] == {"best": 0.8860, "mean": 0.8826}
    table = (out / "census_group2.md").read_text()
    assert table.count("\n| MMoE |") == 1 and table.count("\n| Shared-Bottom |") == 1
    assert "paper education mean" in table and "Command: `" in table

    # The exported MMoE answers raw census features in a process that never imports keras_mmoe.
    assert os.listdir(export) == ["1"]
    result = run_python(f"""
import json, sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(export / "1")!r})
fn = loaded.signatures["serving_default"]
specs = fn.structured_input_signature[1]
feed = {{k: tf.constant([["Not in universe"]] * 3) if s.dtype == tf.string else tf.constant([[30.0]] * 3)
        for k, s in specs.items()}}
feed["class_of_worker"] = tf.constant([["Private"], ["Astronaut"], ["Never worked"]])
out = fn(**feed)
assert "keras_mmoe" not in sys.modules
print(json.dumps({{k: v.numpy().ravel().tolist() for k, v in out.items()}}))
""")
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(outputs) >= {"education", "marital"}
    for values in (outputs["education"], outputs["marital"]):
        assert len(values) == 3 and all(0.0 < v < 1.0 for v in values)


def test_quick_synthetic_run_writes_tables_and_figures(tmp_path):
    out = tmp_path / "out"
    code = main(["reproduce", "synthetic", "--quick", "--models", "mmoe", "shared_bottom",
                 "--correlations", "0.5", "1.0", "--out-dir", str(out)])
    assert code == 0
    record = json.loads((out / "synthetic.json").read_text())
    assert len(record["runs"]) == 2 * 2 * 2
    for run in record["runs"]:
        assert len(run["loss_curve"]) == 2 and run["final_loss"] == run["loss_curve"][-1] > 0
        assert run["steps"] == [7, 14]  # 1600 training rows, batch 256
    summary = record["summary"]
    assert set(summary) == {"mmoe", "shared_bottom"}
    assert abs(summary["mmoe"]["params"] - summary["shared_bottom"]["params"]) / summary["mmoe"]["params"] < 0.05
    for entry in summary.values():
        assert set(entry["final_loss"]) == {"0.5", "1"} and "increase_1_to_0.5" in entry
    table = (out / "synthetic.md").read_text()
    assert "| MMoE |" in table and "| Shared-Bottom |" in table and "increase 1.0 → 0.5" in table
    _assert_png(out / "synthetic_loss_curves.png")
    _assert_png(out / "synthetic_final_loss.png")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["census", "--group", "3"], "--group must be 1 or 2, received 3"),
        (["census", "--runs", "0"], "--runs must be >= 1, received 0"),
        (["census", "--models", "mmoe", "transformer"], "unknown model(s) ['transformer']"),
        (["synthetic", "--correlations", "1.5"], "--correlations must be in [-1, 1], received 1.5"),
        (["synthetic", "--models", "ple"], "unknown model(s) ['ple']"),
        (["synthetic", "--learning-rate", "0"], "--learning-rate must be > 0"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path):
    code = main(["reproduce", *argv, "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not os.listdir(tmp_path)


def test_reproduce_without_a_study_prints_help_and_fails(capsys):
    assert main(["reproduce"]) == 2
    out = capsys.readouterr().out
    assert "census" in out and "synthetic" in out and "polarization" in out
